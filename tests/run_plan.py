"""Run a plan file with the local executor (used by tests that kill the launcher)."""

import json
import logging
import sys
from pathlib import Path

from cdhpc.sweep.plan import Plan, StepSpec
from cdhpc.ui.launch import execute

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    workdir, plan_file = Path(sys.argv[1]), Path(sys.argv[2])
    plan = Plan([StepSpec.from_dict(d) for d in json.loads(plan_file.read_text())])
    retries = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    summary = execute(workdir, plan, max_parallel=2, retries=retries, poll_s=0.2)
    sys.exit(1 if summary.failed or summary.blocked else 0)
