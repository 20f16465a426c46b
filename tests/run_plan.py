"""Run a plan file with the local executor (used by tests that kill the launcher)."""

import json
import logging
import sys
from pathlib import Path

from cdhpc.launch import execute
from cdhpc.plan import Plan, StepSpec

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    workdir, plan_file = Path(sys.argv[1]), Path(sys.argv[2])
    plan = Plan([StepSpec.from_dict(d) for d in json.loads(plan_file.read_text())])
    summary = execute(workdir, plan, max_parallel=2, retries=0, poll_s=0.2)
    sys.exit(1 if summary.failed or summary.blocked else 0)
