"""The layout of a work directory (docs/design.md §8): the one place that names its files.

Every module that reads or writes an artefact of a workdir asks `Workdir` for its path instead
of joining names by hand, so renaming a file is one edit and a reader finds every artefact here.
A path built from a stage, step name or key goes through `base.paths.component` (one plain file
name each) and `base.paths.inside` (no symlink out of the root), so a name can never make a path
that leaves the workdir. The library packages (lm, corpora, evals, results) may import only
`cdhpc.base` (docs/design.md §3): their callers hand them plain paths taken from here.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cdhpc.base.paths import component, inside

# File and folder names under the root; `Workdir` is how code reaches them. The manifest's
# stamps table keys plan.json by this relative name (`sweep.manifest_db.PLAN`).
MARKER = "cdhpc.json"  # which sweep owns this workdir
LOCK_FILE = ".lock"  # flock of the one launcher (`sweep.lock`)
RESOLVED_CONFIG = "sweep.resolved.yaml"  # the validated config with overrides (cdhpc retry relaunches it)
PLAN = "plan.json"  # every step of the whole sweep
MANIFEST = "manifest.sqlite"  # the index
WAVES_FILE = "waves.json"  # SLURM waves and the continuation job (`executors.waves`)
SUBMITTING = "submitting"  # SLURM submission intents, <job name>.json
RESULTS = "results"  # the published report
RECEIPTS = "receipts"  # receipts/<stage>/<name>-<key8>.json
JOB_RECORDS = "jobs"  # jobs/<stage>/<name>-<key8>.json
LOGS = "logs"  # logs/<stage>/: submitit's pickles and job logs
CONTINUE_LOGS = "continue"  # logs/continue/: the SLURM continuation jobs (not a stage name)
# Tokenized and packed requests of the sweep's tasks: every checkpoint with the same tokenizer reuses
# them (evals.packcache); not an output of any step, so deleting it costs only the host work again.
EVAL_CACHE = ("cache", "evalpack")


def step_stem(name: str, key: str) -> str:
    """``<name>-<key8>``: a step's folder and the stem of its receipt and job record; ValueError
    when it is not one plain file name (a name with '/', or '..')."""
    return component(f"{name}-{key[:8]}")


def step_dirname(stage: str, name: str, key: str) -> str:
    """A step's output folder relative to the workdir: ``<stage>/<name>-<key8>``."""
    return f"{component(stage)}/{step_stem(name, key)}"


@dataclass(frozen=True)
class Workdir:
    """The paths of one workdir's artefacts; `root` as given (relative when it is)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    # -- fixed files and folders ----------------------------------------------------------------
    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def resolved_config(self) -> Path:
        return self.root / RESOLVED_CONFIG

    @property
    def plan(self) -> Path:
        return self.root / PLAN

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def waves(self) -> Path:
        return self.root / WAVES_FILE

    @property
    def submitting(self) -> Path:
        return self.root / SUBMITTING

    @property
    def results(self) -> Path:
        return self.root / RESULTS

    @property
    def receipts(self) -> Path:
        return self.root / RECEIPTS

    @property
    def job_records(self) -> Path:
        return self.root / JOB_RECORDS

    @property
    def continuation_logs(self) -> Path:
        return inside(self.root, LOGS, CONTINUE_LOGS)

    @property
    def eval_cache(self) -> Path:
        return inside(self.root, *EVAL_CACHE)

    # -- paths built from names: checked to stay inside the root --------------------------------
    def receipt(self, stage: str, name: str, key: str) -> Path:
        return inside(self.root, RECEIPTS, component(stage), f"{step_stem(name, key)}.json")

    def job_record(self, stage: str, name: str, key: str) -> Path:
        return inside(self.root, JOB_RECORDS, component(stage), f"{step_stem(name, key)}.json")

    def step_dir(self, stage: str, name: str, key: str) -> Path:
        """A step's output folder, ``<stage>/<name>-<key8>``."""
        return inside(self.root, step_dirname(stage, name, key))

    def logs(self, stage: str) -> Path:
        """The submitit folder of a stage's jobs (pickles, stdout/stderr)."""
        return inside(self.root, LOGS, component(stage))

    def retry_log(self, stamp: int) -> Path:
        """``logs/retry-<epoch s>.log``: the output of a relaunch started from the TUI."""
        return self.root / LOGS / f"retry-{int(stamp)}.log"

    def intent(self, job_name: str) -> Path:
        """``submitting/<job name>.json``: a SLURM submission not yet recorded."""
        return inside(self.root, SUBMITTING, f"{component(job_name)}.json")

    # -- the launch that continues this sweep -----------------------------------------------------
    def relaunch_command(self, *flags: str) -> list[str]:
        """The sweep's launch again, as arguments (no shell): this workdir's resolved config,
        pinned to this workdir (a moved workdir is not confused with where it was created), and
        `flags` (a retry from the UI: none or --verbose; a continuation job: --missing-only)."""
        return [
            sys.executable,
            "-m",
            "cdhpc.launch",
            str(self.resolved_config),
            f"workdir={self.root}",
            *flags,
        ]
