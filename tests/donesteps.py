"""Start a test's workdir where another run left off: copy its done steps instead of running them."""

from __future__ import annotations

import shutil
from pathlib import Path


def copy_done_steps(source: Path, workdir: Path, sweep: Path, until: str) -> int:
    """The steps of `sweep` up to the stage `until`, as `source` (a workdir that ran them) holds
    them, copied into `workdir` so that a launch finds them done: their outputs with their mtimes
    (copy2), their receipts and the sweep's marker. Returns how many steps."""
    from cdhpc.config import load_config
    from cdhpc.sweep.plan import plan_sweep
    from cdhpc.sweep.workdir import Workdir

    steps = plan_sweep(load_config(sweep, []), until).steps
    theirs, ours = Workdir(source), Workdir(workdir)
    workdir.mkdir(parents=True)
    shutil.copy2(theirs.marker, ours.marker)
    for s in steps:
        shutil.copytree(theirs.step_dir(s.stage, s.name, s.key), ours.step_dir(s.stage, s.name, s.key))
        ours.receipt(s.stage, s.name, s.key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(theirs.receipt(s.stage, s.name, s.key), ours.receipt(s.stage, s.name, s.key))
    return len(steps)
