"""Job-side wiring: one module per stage (``jobs.<stage>.run(ctx) -> StepResult``) and the
submitit-callable that runs one or several steps of a stage and writes their receipts.

A step receives its spec and nothing else; it reads its inputs' output directories, writes its
own outputs atomically, and its receipt last. It never opens the manifest.

A step that runs (again) starts from a clean output directory: only what its stage resumes from,
verified by the stage (``resumable(ctx)`` beside its entry), is kept. A local step stops on
SIGTERM or SIGINT and says so in its receipt (status "cancelled") and job record (CANCELLED);
the signal handling is ``cdhpc.base.jobsignals``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import platform
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import submitit

from cdhpc import __version__
from cdhpc.base.devices import restore_gpus
from cdhpc.base.jobsignals import (
    StepCancelled,
    ignore_signals_once_done,
    run_past_last_requeue,
    stop_on_signals,
    uninterrupted,
)
from cdhpc.sweep.plan import StepSpec
from cdhpc.sweep.receipts import Receipt, describe_outputs, read_receipt, write_receipt
from cdhpc.sweep.stepstate import step_done
from cdhpc.sweep.workdir import Workdir

log = logging.getLogger("cdhpc")
PACKAGES = ("torch", "transformers", "deepspeed", "tokenizers", "submitit", "numpy")


@dataclass
class StepContext:
    """What a stage function gets: its spec, where to write, and where its inputs are."""

    spec: StepSpec
    workdir: Path
    attempt: int = 1

    @property
    def out_dir(self) -> Path:
        return self.spec.out_dir(self.workdir)

    @property
    def params(self) -> dict[str, Any]:
        return self.spec.params

    def input_receipt(self, role: str) -> Receipt:
        """The receipt of the input step playing `role` (its outputs, metrics and rows)."""
        key = self.spec.inputs[role]
        matches = list(Workdir(self.workdir).receipts.glob(f"*/*-{key[:8]}.json"))
        for path in matches:
            r = read_receipt(path)
            if r.key == key and r.status == "ok":
                return r
        raise FileNotFoundError(
            f"input {role!r} (step key {key}) has no ok receipt under {self.workdir}/receipts"
        )

    def input_dir(self, role: str) -> Path:
        return StepSpec.from_dict(self.input_receipt(role).spec).out_dir(self.workdir)


@dataclass
class StepResult:
    """What a stage function returns. `outputs` default to the step's whole output directory."""

    outputs: list[Path] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def resolve_entry(spec: StepSpec) -> Callable[[StepContext], StepResult]:
    module, _, fn = spec.options.get("entry", f"jobs.{spec.stage}:run").partition(":")
    return getattr(importlib.import_module(module), fn)


def clean_out_dir(ctx: StepContext) -> None:
    """Before a step runs: keep what its stage can resume from and remove everything else in its
    output directory, so a file a killed attempt left (a truncated ``shard.parquet``, a temp file)
    never passes for a result. The stage names, and has verified, what it resumes from with
    ``resumable(ctx) -> list[Path]`` in the module of its entry function; without one, nothing."""
    if not ctx.out_dir.is_dir():
        return
    module = ctx.spec.options.get("entry", f"jobs.{ctx.spec.stage}:run").partition(":")[0]
    hook = getattr(importlib.import_module(module), "resumable", None)
    keep = {Path(p) for p in hook(ctx)} if hook else set()
    removed = remove_except(ctx.out_dir, keep)
    if removed:
        log.info(
            "step %s/%s: removed %d untrusted path(s) of an earlier attempt: %s",
            ctx.spec.stage,
            ctx.spec.name,
            len(removed),
            ", ".join(str(p.relative_to(ctx.out_dir)) for p in removed[:5]),
        )
    kept = sorted(str(p.relative_to(ctx.out_dir)) for p in keep if p.exists())
    if kept:
        log.info(
            "step %s/%s: resuming from %d verified path(s): %s",
            ctx.spec.stage,
            ctx.spec.name,
            len(kept),
            ", ".join(kept[:5]),
        )


def remove_except(root: Path, keep: set[Path]) -> list[Path]:
    """Remove everything under `root` but the paths in `keep` (and the folders leading to them);
    returns what was removed."""
    removed = []
    for entry in sorted(root.iterdir()):
        if entry in keep:
            continue
        if entry.is_dir() and not entry.is_symlink() and any(entry in k.parents for k in keep):
            removed += remove_except(entry, keep)
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry)
    return removed


@cache
def versions() -> dict[str, str]:
    out = {"cdhpc": __version__, "python": platform.python_version(), "git": git_commit()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str:
    """HEAD of the checkout cdhpc runs from, with +dirty; 'unknown' for an installed copy."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def slurm_ids() -> dict[str, str]:
    names = {
        "job_id": "SLURM_JOB_ID",
        "array_job_id": "SLURM_ARRAY_JOB_ID",
        "array_index": "SLURM_ARRAY_TASK_ID",
        "node": "SLURMD_NODENAME",
        "local_job_id": "SUBMITIT_LOCAL_JOB_ID",
    }
    return {k: os.environ[v] for k, v in names.items() if v in os.environ}


def log_paths() -> dict[str, str]:
    try:
        paths = submitit.JobEnvironment().paths
        return {"stdout": str(paths.stdout), "stderr": str(paths.stderr)}
    except RuntimeError:  # not inside a submitit job (e.g. a direct call in a test)
        return {}


def job_rank() -> tuple[int, int]:
    """(global rank, number of tasks) of this process in its submitit job; (0, 1) outside one."""
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:
        return 0, 1
    return env.global_rank, env.num_tasks


def distributed_env() -> dict[str, str]:
    """torch.distributed variables for a multi-task job, from submitit's JobEnvironment (the same
    on SLURM and locally): rank 0's host is the master, the port derives from the job id."""
    env = submitit.JobEnvironment()
    master = env.hostnames[0] if env.num_nodes > 1 else "127.0.0.1"
    port = 20000 + int("".join(c for c in str(env.job_id) if c.isdigit()) or 0) % 20000
    return {
        "RANK": str(env.global_rank),
        "LOCAL_RANK": str(env.local_rank),
        "WORLD_SIZE": str(env.num_tasks),
        "MASTER_ADDR": master,
        "MASTER_PORT": str(port),
    }


def run_step(workdir: Path, spec: StepSpec, attempt: int = 1) -> Receipt | None:
    """Run one step and write its receipt: ok, or failed/cancelled with the traceback (see
    `record_end`). In a multi-task job every rank runs the step and only rank 0 cleans the output
    directory and writes the receipt (the others meet it at the process group's rendezvous)."""
    rank, n_tasks = job_rank()
    if n_tasks > 1:
        os.environ.update(distributed_env())
        if rank:
            resolve_entry(spec)(StepContext(spec, workdir, attempt))
            return None
    ctx = StepContext(spec, workdir, attempt)
    log.info("step %s/%s key=%s attempt=%d", spec.stage, spec.name, spec.key, attempt)
    log.info("spec %s", json.dumps(spec.to_dict(), sort_keys=True))
    log.info(
        "versions %s host=%s cpus=%s CUDA_VISIBLE_DEVICES=%s",
        json.dumps(versions()),
        platform.node(),
        os.cpu_count(),
        os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    )
    base = dict(
        key=spec.key,
        stage=spec.stage,
        name=spec.name,
        spec=spec.to_dict(),
        versions=versions(),
        host=platform.node(),
        slurm=slurm_ids(),
        attempt=attempt,
        logs=log_paths(),
    )
    started = time.time()
    try:
        clean_out_dir(ctx)
        result = resolve_entry(spec)(ctx)
        outputs = result.outputs if result.outputs is not None else [ctx.out_dir]
        share_outputs(outputs)
        receipt = Receipt(
            status="ok",
            outputs=describe_outputs(workdir, outputs),
            metrics=result.metrics,
            rows=result.rows,
            started=started,
            finished=time.time(),
            **base,
        )
        write_receipt(workdir, receipt)
    except BaseException as e:  # noqa: BLE001 - every end (error, ENOSPC, SIGTERM) is recorded, then raised
        with uninterrupted():
            record_end(workdir, spec, e, dict(base, started=started))
        raise
    log.info("step %s/%s done in %.1f s", spec.stage, spec.name, receipt.finished - started)
    return receipt


def share_outputs(paths: list[Path]) -> None:
    """Give a step's outputs the umask's modes, whatever wrote them (safetensors writes 0600,
    toy data fixes 0755), so the group reads them; chmod keeps the mtimes the receipt records."""
    from cdhpc.base.atomicio import follow_umask

    for p in paths:
        try:
            follow_umask(p)
        except OSError as e:  # e.g. a file another user owns in a shared workdir
            log.warning("could not set the mode of %s: %s", p, e)


def record_end(workdir: Path, spec: StepSpec, error: BaseException, fields: dict[str, Any]) -> None:
    """Best effort, never masking `error`: a receipt saying the step failed or was cancelled
    (SIGTERM, SIGINT), and the same in a local job's record. When even that cannot be written
    (disk full), the launcher counts a job that ended without an ok receipt as failed. `fields`:
    the receipt's fields known at the start (key, spec, versions, started, ...)."""
    status = "cancelled" if isinstance(error, (StepCancelled, KeyboardInterrupt)) else "failed"
    try:
        write_receipt(
            workdir,
            Receipt(
                status=status,
                error="".join(traceback.format_exception(error)),
                finished=time.time(),
                **fields,
            ),
        )
    except Exception as e:  # noqa: BLE001 - e.g. OSError ENOSPC: the step's own error is the one to raise
        log.error("step %s/%s: could not write its %s receipt: %s", spec.stage, spec.name, status, e)
    if not isinstance(error, SystemExit):  # submitit's requeue exits: the job goes on
        mark_job_record(workdir, spec, "CANCELLED" if status == "cancelled" else "FAILED")


def mark_job_record(workdir: Path, spec: StepSpec, state: str) -> None:
    """Best effort: the RUNNING record of this local job says how its step ended, even with no
    launcher left to write it (a killed launcher leaves its local jobs running). SLURM records
    are the launcher's (from sacct), and a record of another job is left alone."""
    from cdhpc.sweep.jobrecords import JobRecord, job_record_path

    job_id = os.environ.get("SUBMITIT_LOCAL_JOB_ID")
    path = job_record_path(workdir, spec)
    if not job_id or not path.is_file():
        return
    try:
        rec = JobRecord.read(path)
        if rec.executor == "local" and str(rec.job_id) == job_id and rec.state == "RUNNING":
            rec.state, rec.updated = state, time.time()
            rec.write(path)
    except (OSError, ValueError) as e:
        log.error("step %s/%s: could not mark its job record %s: %s", spec.stage, spec.name, state, e)


class StepJob(submitit.helpers.Checkpointable):
    """The submitit callable: runs its steps in order, skipping those already done, so a requeued
    job (preemption, time limit) resumes where it stopped."""

    def __init__(self, workdir: str, specs: list[dict[str, Any]], attempt: int = 1):
        self.workdir = workdir
        self.specs = specs
        self.attempt = attempt

    def __call__(self) -> list[str]:
        restore_gpus()  # a local job sees the launcher's GPUs (before anything initialises CUDA)
        configure_job_logging()
        run_past_last_requeue()
        stop_on_signals()
        workdir = Path(self.workdir)
        specs = [StepSpec.from_dict(d) for d in self.specs]
        failed = []
        for i, spec in enumerate(specs):
            try:
                if step_done(workdir, spec.stage, spec.name, spec.key):
                    continue
                run_step(workdir, spec, self.attempt)
            except (StepCancelled, KeyboardInterrupt):
                with uninterrupted():  # this step is marked already unless the signal came between steps
                    for rest in specs[i:]:
                        mark_job_record(workdir, rest, "CANCELLED")
                    log.warning(
                        "step %s/%s cancelled; %d later step(s) of this job not run",
                        spec.stage,
                        spec.name,
                        len(specs) - i - 1,
                    )
                raise
            except Exception:  # siblings in a pack are independent: run them, then fail the job
                log.exception("step %s/%s failed", spec.stage, spec.name)
                failed.append(spec.name)
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(self.specs)} steps failed: {', '.join(failed)}")
        ignore_signals_once_done()
        return [d["key"] for d in self.specs]


def configure_job_logging() -> None:
    """Jobs log to stdout (the step's log file) with the step's array index in every line, at
    the launcher's level (CDHPC_LOG_LEVEL; cdhpc.base.verbosity.configure_job). Only rank 0 logs progress."""
    from cdhpc.base.verbosity import configure_job

    configure_job(os.environ.get("SLURM_ARRAY_TASK_ID", "-"), job_rank()[0])
