"""``cdhpc``: the everyday commands. Handlers import what they need, so ``--help`` is instant.

``status``, ``report`` and ``export`` read a workdir without its lock and write nothing into it
but the manifest index (and ``results/`` for export); where the manifest cannot be written they
index in memory. ``manifest ingest|rebuild`` hold the workdir's lock, as a launcher does.
Expected failures print one line naming the file and what to do (exit 1; 2 for usage and a workdir
in use); ``-v`` shows their tracebacks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cdhpc import STAGES


def _workdir(arg: str) -> Path:
    """A sweep's workdir from a workdir path or a sweep .yaml. Raises SystemExit(2) otherwise."""
    from cdhpc.sweep.workdir import MARKER, Workdir  # not cdhpc.launch: that loads the config models (0.2 s)

    p = Path(arg)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        from cdhpc.config import ConfigError, load_config

        try:
            p = load_config(p).workdir
        except ConfigError as e:
            print(e, file=sys.stderr)
            raise SystemExit(2) from None
    if not Workdir(p).marker.is_file():
        why = "does not exist" if not p.exists() else f"is not a cdhpc workdir (no {MARKER})"
        print(f"cdhpc: {p} {why}; give a sweep's workdir or its .yaml", file=sys.stderr)
        raise SystemExit(2)
    return p.resolve()


def cmd_status(args: argparse.Namespace) -> int:
    workdir = _workdir(args.sweep)
    if args.once or not sys.stdout.isatty():
        from cdhpc.ui.plain import print_status

        return print_status(workdir)
    from cdhpc.ui.tui import run_app

    return run_app(workdir)


def cmd_manifest(args: argparse.Namespace) -> int:
    from cdhpc.sweep.lock import WorkdirLock
    from cdhpc.sweep.manifest import Manifest

    workdir = _workdir(args.sweep)
    with WorkdirLock(workdir, command=f"cdhpc manifest {args.action}"), Manifest(workdir) as m:
        if m.healed is not None:  # a corrupt file was moved aside and rebuilt on opening
            result = m.healed
        else:
            result = m.rebuild() if args.action == "rebuild" else m.ingest()
    for msg in result.bad:
        print(f"not ingested: {msg}", file=sys.stderr)
    print(json.dumps({"receipts": result.receipts, "jobs": result.jobs, "bad": len(result.bad)}))
    return 1 if result.bad else 0


def cmd_export(args: argparse.Namespace) -> int:
    from cdhpc.ui.export import export

    return export(_workdir(args.sweep), write=args.command == "export")


def cmd_cancel(args: argparse.Namespace) -> int:
    from cdhpc.ui.actions import LIVE, cancel_continuation, cancel_steps
    from cdhpc.ui.status import SnapshotReader

    with SnapshotReader(_workdir(args.sweep), specs=False) as reader:  # step heads: no plan.json parse
        snap = reader.read()
    keys = [
        s["key"]
        for s in snap.steps
        if snap.states[s["key"]] in LIVE
        and (args.stage is None or s["stage"] == args.stage)
        and (args.step is None or s["name"] == args.step)
    ]
    if not keys:
        # between waves only the continuation job may be pending: the whole sweep's cancel stops it
        pending = cancel_continuation(snap.workdir) if args.stage is None and args.step is None else []
        for msg in pending:
            print(msg)
        if not pending:
            print("cdhpc: no queued or running step matches; nothing to cancel", file=sys.stderr)
        return 0 if pending else 1
    for msg in cancel_steps(snap, keys):
        print(msg)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    """Re-launch the sweep from its resolved config: failed and missing steps run again. The
    child launcher takes the workdir's lock (this process holds none), or says who holds it."""
    import subprocess

    from cdhpc.ui.actions import retry_command

    return subprocess.run(retry_command(_workdir(args.sweep), verbose=args.verbose)).returncode


def cmd_launch(argv: list[str]) -> int:
    from cdhpc.ui.launch import main

    return main(argv, prog="cdhpc launch")


def cmd_eval(argv: list[str]) -> int:
    from cdhpc.evals.run import main_eval

    return main_eval(argv)


# These subcommands take exactly the options of their own parsers (`cdhpc launch` is
# `python -m cdhpc.launch`), so main hands them the rest of argv before the top-level parser
# sees it: an argparse.REMAINDER positional does not receive options such as --model or --help.
DELEGATED = {"launch": cmd_launch, "eval": cmd_eval}


VERBOSE_FLAGS = ("-v", "--verbose")
QUIET_FLAGS = ("-q", "--quiet")


def build_parser() -> argparse.ArgumentParser:
    from cdhpc.base.verbosity import add_flags

    p = argparse.ArgumentParser(prog="cdhpc", description="Contrastive-decoding studies as one sweep.")
    add_flags(p)
    # -v/-q after the subcommand too; SUPPRESS keeps a subcommand from resetting a flag given before it.
    common = argparse.ArgumentParser(add_help=False)
    add_flags(common, suppress=True)
    sub = p.add_subparsers(dest="command", required=True)
    # launch and eval are listed here for `cdhpc --help` only; main gives their argv to DELEGATED.
    sub.add_parser(
        "launch", help="validate, plan and run a sweep (same as python -m cdhpc.launch)", add_help=False
    )
    s = sub.add_parser(
        "status",
        parents=[common],
        help="the sweep's job-status terminal UI; --once: a plain table (exit 1 if any step failed)",
    )
    s.add_argument("sweep", help="the sweep's workdir or .yaml")
    s.add_argument(
        "--once", action="store_true", help="print once and exit (the default when not a terminal)"
    )
    s.set_defaults(fn=cmd_status)
    s = sub.add_parser(
        "manifest", parents=[common], help="index receipts into manifest.sqlite, or rebuild it from them"
    )
    s.add_argument("action", choices=("ingest", "rebuild"))
    s.add_argument("sweep", help="the sweep's workdir or .yaml")
    s.set_defaults(fn=cmd_manifest)
    for name, text in (
        ("export", "write results/ (CSV, Markdown, LaTeX, plots) from the scores so far"),
        ("report", "print the paper table from the scores so far (marked partial)"),
    ):
        s = sub.add_parser(name, parents=[common], help=text)
        s.add_argument("sweep", help="the sweep's workdir or .yaml")
        s.set_defaults(fn=cmd_export)
    s = sub.add_parser(
        "cancel",
        parents=[common],
        help="cancel the queued/running steps of a sweep (all, one --stage, or one --step)",
    )
    s.add_argument("sweep", help="the sweep's workdir or .yaml")
    s.add_argument("--stage", choices=STAGES, help="only this stage")
    s.add_argument("--step", help="only the step with this name")
    s.set_defaults(fn=cmd_cancel)
    s = sub.add_parser(
        "retry",
        parents=[common],
        help="re-launch a sweep from its resolved config: failed and missing steps run again",
    )
    s.add_argument("sweep", help="the sweep's workdir or .yaml")
    s.set_defaults(fn=cmd_retry)
    sub.add_parser("eval", help="evaluate any HF causal LM directory on BabyLM tasks", add_help=False)
    return p


def split_delegated(argv: list[str]) -> tuple[str, list[str], bool, bool] | None:
    """Pure: (subcommand, its argv, -v, -q) when argv runs a DELEGATED subcommand, else None.
    -v/-q may come before the subcommand; launch parses its own flags, so they are handed on to
    it; eval's parser has none, so they are taken out of its argv wherever they are."""
    lead = 0
    while lead < len(argv) and argv[lead] in VERBOSE_FLAGS + QUIET_FLAGS:
        lead += 1
    if lead >= len(argv) or argv[lead] not in DELEGATED:
        return None
    name, before, rest = argv[lead], argv[:lead], argv[lead + 1 :]
    if name == "launch":
        return name, rest + before, False, False
    flags = before + [a for a in rest if a in VERBOSE_FLAGS + QUIET_FLAGS]
    return (
        name,
        [a for a in rest if a not in VERBOSE_FLAGS + QUIET_FLAGS],
        any(a in VERBOSE_FLAGS for a in flags),
        any(a in QUIET_FLAGS for a in flags),
    )


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; its exit status (2 on a usage error, which argparse prints in one line,
    or a workdir in use; 1 on another expected failure, printed in one line)."""
    from cdhpc.base.verbosity import setup_command

    argv = sys.argv[1:] if argv is None else list(argv)
    delegated = split_delegated(argv)
    if delegated is not None:  # `cdhpc -v launch ...` is `cdhpc launch -v ...`
        name, rest, verbose, quiet = delegated
        if name != "launch":
            setup_command(verbose, quiet)
        return DELEGATED[name](rest)
    args = build_parser().parse_args(argv)
    # CDHPC_LOG_LEVEL=debug is -v (tracebacks too); a retry's launcher inherits the level
    # these commands answer at once: their warnings are plain lines, as before (no timestamp)
    args.verbose = setup_command(args.verbose, args.quiet, fmt="%(message)s", datefmt=None) == "debug"
    try:
        return args.fn(args)
    except Exception as e:
        from cdhpc.sweep.lock import WorkdirBusy, error_line

        if isinstance(e, OSError) and e.filename is None and hasattr(args, "sweep"):
            e.filename = args.sweep  # a write to an open file (a full disk): name the workdir in the one line
        line = error_line(e)
        if line is None or args.verbose:
            raise
        print(line, file=sys.stderr)
        return 2 if isinstance(e, WorkdirBusy) else 1


if __name__ == "__main__":
    sys.exit(main())
