"""Launch a plan file on SLURM in waves, as ``cdhpc.launch`` does with a sweep (used by
tests/test_slurm_waves.py, whose plans of fast test steps are no sweep config). The
continuation jobs run this script again with --missing-only.

    python tests/waves_plan.py WORKDIR [--missing-only | --follow]

WORKDIR holds plan.json and profile.json (a ClusterProfile's fields)."""

import json
import logging
import sys
from pathlib import Path

from cdhpc.config.profile import ClusterProfile
from cdhpc.executors.launch_slurm import follow_sweep, submit_plan
from cdhpc.sweep.lock import WorkdirBusy, WorkdirLock
from cdhpc.sweep.plan import Plan, StepSpec

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    workdir, flag = Path(sys.argv[1]).resolve(), sys.argv[2] if len(sys.argv) > 2 else ""
    plan = Plan([StepSpec.from_dict(d) for d in json.loads((workdir / "plan.json").read_text())["steps"]])
    profile = ClusterProfile(**json.loads((workdir / "profile.json").read_text()))
    relaunch = [sys.executable, str(Path(__file__).resolve()), str(workdir), "--missing-only"]
    try:
        with WorkdirLock(workdir, "tests/waves_plan.py"):
            _, sub, live = submit_plan(
                workdir,
                plan,
                profile,
                "waves",
                missing_only=flag == "--missing-only",
                waves=flag != "--follow",
                relaunch=relaunch,
            )
            if flag == "--follow":
                try:
                    follow_sweep(workdir, plan, profile, "waves", sub, live, poll_s=3.0)
                except KeyboardInterrupt:
                    print("stopped following; nothing was cancelled", file=sys.stderr)
                    sys.exit(130)
    except WorkdirBusy as e:
        print(e, file=sys.stderr)
        sys.exit(2)
