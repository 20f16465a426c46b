"""``python -m cdhpc.launch sweep.yaml [key=value ...]``: load -> plan -> diff with manifest -> run.

Re-running the same command is always safe: done steps are skipped, running ones are waited for,
failed and missing ones run (again). Nothing is written before the config has loaded cleanly, and
nothing by a second launcher on the same workdir: one launcher holds ``workdir/.lock`` for its whole
run (cdhpc.sweep.lock); another exits 2 naming it. --dry-run and --print-config take no lock and write
nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sqlite3
import sys
import time
from pathlib import Path

from cdhpc import STAGES
from cdhpc.config import ConfigError, SweepConfig, dump_config, load_config
from cdhpc.executors.outcome import outputs_lookup, print_results, report_bad, sync_manifest
from cdhpc.sweep.lock import WorkdirBusy, WorkdirLock, error_line
from cdhpc.sweep.plan import Plan, plan_sweep
from cdhpc.sweep.workdir import LOCK_FILE, MARKER, Workdir

log = logging.getLogger("cdhpc")


class UsageError(Exception):
    """A bad invocation (exit 2), e.g. a workdir that belongs to another sweep."""


def build_parser(prog: str = "python -m cdhpc.launch") -> argparse.ArgumentParser:
    """The launch options; `prog` is how usage lines name the command (`cdhpc launch` names it too)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path, help="the sweep .yaml file")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted-path overrides, values typed as YAML"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan (steps, resources, states, GPU-hours) and exit"
    )
    p.add_argument(
        "--calibration",
        type=Path,
        metavar="GPU_JSONL",
        help="with --dry-run: estimate GPU-hours from this gpu.jsonl of `bash .ci/gpu` (docs/gpu.md)",
    )
    p.add_argument("--until", choices=STAGES, default="aggregate", help="plan only up to this stage")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--verify", action="store_true", help="re-hash every output of done steps (default: size+mtime)"
    )
    p.add_argument(
        "--follow",
        action="store_true",
        help="SLURM: stay attached and submit the next wave as jobs "
        "finish, instead of a continuation job; Ctrl-C stops following and cancels nothing",
    )
    p.add_argument(
        "--missing-only",
        action="store_true",
        help="SLURM: submit only steps that never ran, not failed ones (what a wave's continuation job runs)",
    )
    from cdhpc.base.verbosity import add_flags

    add_flags(p)
    return p


def main(argv: list[str] | None = None, prog: str = "python -m cdhpc.launch") -> int:
    args = build_parser(prog).parse_intermixed_args(argv)  # flags may come after key=value overrides
    from cdhpc.base.verbosity import setup_command

    # jobs inherit the level through CDHPC_LOG_LEVEL; CDHPC_LOG_LEVEL=debug is -v
    args.verbose = setup_command(args.verbose, args.quiet) == "debug"
    try:
        return _main(args, prog)
    except (ConfigError, UsageError, WorkdirBusy) as e:
        if args.verbose:
            raise
        print(e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the scheduler has cancelled its running steps
        if args.verbose:
            raise
        print(
            "cdhpc: interrupted; running steps were cancelled. Run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    except Exception as e:
        line = error_line(e)
        if line is None or args.verbose:
            raise
        print(line, file=sys.stderr)
        return 1


def _main(args: argparse.Namespace, prog: str) -> int:
    """load -> plan -> --print-config / --dry-run / launch. Expected errors propagate to main."""
    if args.calibration is not None and not args.dry_run:
        raise UsageError(
            f"--calibration {args.calibration}: only used with --dry-run (it estimates GPU-hours)"
        )
    cfg = load_config(args.sweep, args.overrides, allow_missing_paths=args.dry_run or args.print_config)
    profile = None
    if cfg.executor.kind == "slurm":
        from cdhpc.config.profile import resolve_profile

        cfg, profile = resolve_profile(cfg, args.sweep)
    if args.print_config:
        sys.stdout.write(dump_config(cfg))
        return 0
    plan = plan_sweep(cfg, args.until)
    if args.dry_run:
        from cdhpc.ui.dryrun import print_dry_run
        from cdhpc.ui.estimate import default_rates, rates_from_calibration
        from cdhpc.ui.gpufigures import CalibrationError

        try:
            rates = rates_from_calibration(args.calibration) if args.calibration else default_rates()
        except CalibrationError as e:
            raise UsageError(str(e)) from None
        print_dry_run(cfg, plan, read_states(cfg, plan), profile, rates)
        return 0
    if profile is not None and shutil.which("sbatch") is None:
        raise UsageError(
            "executor.kind is 'slurm' but sbatch is not on PATH: launch from a SLURM login node, "
            "or use executor=local (--dry-run works anywhere)"
        )
    if (args.follow or args.missing_only) and profile is None:
        raise UsageError(
            "--follow and --missing-only are for executor.kind slurm (the local executor always follows)"
        )
    return launch(
        cfg,
        plan,
        verify=args.verify,
        profile=profile,
        command=prog,
        slurm_options={"follow": args.follow, "missing_only": args.missing_only},
    )


def check_workdir(cfg: SweepConfig) -> Path:
    """The sweep's workdir: new, or already this sweep's. Raises UsageError otherwise."""
    workdir = cfg.workdir.resolve()
    marker = Workdir(workdir).marker
    if marker.is_file():
        try:
            owner = json.loads(marker.read_text()).get("sweep")
        except (ValueError, AttributeError):
            raise UsageError(
                f"{marker} is not the JSON cdhpc writes; put {json.dumps({'sweep': cfg.name})} into it "
                "if this is the workdir of that sweep, or set workdir= to another directory"
            ) from None
        if owner != cfg.name:
            raise UsageError(
                f"workdir {workdir} belongs to sweep {owner!r}, not {cfg.name!r}; set workdir= to another "
                "directory"
            )
    elif workdir.exists() and any(p.name != LOCK_FILE for p in workdir.iterdir()):
        raise UsageError(
            f"workdir {workdir} exists, is not empty and is not a cdhpc workdir (no {MARKER}); choose "
            "another workdir"
        )
    return workdir


def read_states(cfg: SweepConfig, plan: Plan) -> dict[str, str] | None:
    """States of the planned steps from an existing manifest (None for a new sweep)."""
    workdir = check_workdir(cfg)
    if not Workdir(workdir).manifest.is_file():
        return None
    from cdhpc.executors.scheduler import step_states
    from cdhpc.sweep.manifest import Manifest

    with Manifest(workdir, memory=True) as m:  # an in-memory copy: --dry-run writes nothing
        m.ingest()
        return step_states(workdir, plan, m.receipts_by_key(), m.jobs_by_key(), outputs_lookup(m))


def prepare_workdir(cfg: SweepConfig, plan: Plan) -> Path:
    from cdhpc.base.atomicio import atomic_write_json, atomic_write_text

    workdir = check_workdir(cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    wd = Workdir(workdir)
    if not wd.marker.is_file():
        atomic_write_json(wd.marker, {"sweep": cfg.name, "created": time.time()})
    atomic_write_text(wd.resolved_config, dump_config(cfg))
    atomic_write_json(
        wd.plan, {"sweep": cfg.name, "until": plan.until, "steps": [s.to_dict() for s in plan.steps]}
    )
    return workdir


def launch(
    cfg: SweepConfig,
    plan: Plan,
    verify: bool = False,
    profile=None,
    command: str = "python -m cdhpc.launch",
    slurm_options: dict | None = None,
) -> int:
    """Run (or submit) the plan, holding the workdir's lock throughout. Raises WorkdirBusy
    before writing anything when another launcher holds it."""
    workdir = check_workdir(cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    with WorkdirLock(workdir, command):
        try:
            return _launch_locked(cfg, plan, verify, profile, slurm_options or {})
        except OSError as e:
            if e.filename is None:  # a write to an open file (a full disk): name the workdir in the one line
                e.filename = str(workdir)
            raise


def _launch_locked(cfg: SweepConfig, plan: Plan, verify: bool, profile, slurm_options: dict) -> int:
    # The workdir records the whole sweep (what status shows); --until limits what runs now.
    workdir = prepare_workdir(cfg, plan if plan.until == STAGES[-1] else plan_sweep(cfg))
    if cfg.executor.kind == "slurm":
        from cdhpc.executors.launch_slurm import submit_sweep

        return submit_sweep(cfg, plan, workdir, profile, verify=verify, **slurm_options)
    e = cfg.executor
    summary = execute(
        workdir, plan, max_parallel=e.max_parallel, retries=e.retries, poll_s=e.poll_s, verify=verify
    )
    log.info("sweep %s: %d/%d steps done", cfg.name, len(summary.done), len(plan.steps))
    print_results(workdir, plan, summary.done)
    return 1 if summary.failed or summary.blocked else 0


def execute(
    workdir: Path, plan: Plan, *, max_parallel: int, retries: int, poll_s: float, verify: bool = False
):
    """Diff the plan with the manifest and run what is not done on this machine. Returns the
    scheduler's RunSummary."""
    from cdhpc.executors.scheduler import DONE, LocalScheduler, step_states
    from cdhpc.sweep.manifest import Manifest
    from cdhpc.ui.progress import StageProgress

    with Manifest(workdir) as m:
        sync_manifest(m, workdir, plan)
        states = step_states(
            workdir, plan, m.receipts_by_key(), m.jobs_by_key(), outputs_lookup(m), rehash=verify
        )
        todo = sum(s != DONE for s in states.values())
        log.info(
            "%d steps, %d done, %d to run or wait for (workdir %s)",
            len(states),
            len(states) - todo,
            todo,
            workdir,
        )
        bars = StageProgress(plan) if sys.stderr.isatty() else contextlib.nullcontext()

        def changed(now: dict[str, str]) -> None:
            try:  # the index only: a full disk must not stop the steps that are running
                report_bad(m.ingest().bad)
            except sqlite3.OperationalError as e:
                log.warning("manifest not updated (%s); the receipts are the record, it catches up later", e)
            if isinstance(bars, StageProgress):
                bars.update(now)

        sched = LocalScheduler(
            workdir, max_parallel=max_parallel, retries=retries, poll_s=poll_s, on_change=changed
        )
        with bars:
            summary = sched.run(plan, states, m.jobs_by_key())
        report_bad(m.ingest().bad)
    by_key = plan.by_key()
    for label, keys in (("failed", summary.failed), ("blocked by a failed input", summary.blocked)):
        if keys:
            names = ", ".join(f"{by_key[k].stage}/{by_key[k].name}" for k in keys[:10])
            log.error("%d step(s) %s: %s", len(keys), label, names)
    return summary


if __name__ == "__main__":
    sys.exit(main())
