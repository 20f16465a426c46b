"""``cdhpc``: the everyday commands. Handlers import what they need, so ``--help`` is instant."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cdhpc import STAGES


def _workdir(arg: str) -> Path:
    """A sweep's workdir from a workdir path or a sweep .yaml. Raises SystemExit(2) otherwise."""
    from cdhpc.launch import MARKER

    p = Path(arg)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        from cdhpc.config import ConfigError, load_config

        try:
            p = load_config(p).workdir
        except ConfigError as e:
            print(e, file=sys.stderr)
            raise SystemExit(2) from None
    if not (p / MARKER).is_file():
        why = "does not exist" if not p.exists() else f"is not a cdhpc workdir (no {MARKER})"
        print(f"cdhpc: {p} {why}; give a sweep's workdir or its .yaml", file=sys.stderr)
        raise SystemExit(2)
    return p.resolve()


def cmd_status(args: argparse.Namespace) -> int:
    workdir = _workdir(args.sweep)
    if args.once or not sys.stdout.isatty():
        from cdhpc.status import print_status

        return print_status(workdir)
    from cdhpc.tui import run_app

    return run_app(workdir)


def cmd_manifest(args: argparse.Namespace) -> int:
    from cdhpc.manifest import Manifest

    workdir = _workdir(args.sweep)
    with Manifest(workdir) as m:
        result = m.rebuild() if args.action == "rebuild" else m.ingest()
    for msg in result.bad:
        print(f"not ingested: {msg}", file=sys.stderr)
    print(json.dumps({"receipts": result.receipts, "jobs": result.jobs, "bad": len(result.bad)}))
    return 1 if result.bad else 0


def cmd_export(args: argparse.Namespace) -> int:
    from cdhpc.export import export

    return export(_workdir(args.sweep), write=args.command == "export")


def cmd_cancel(args: argparse.Namespace) -> int:
    from cdhpc.actions import LIVE, cancel_steps
    from cdhpc.status import SnapshotReader

    snap = SnapshotReader(_workdir(args.sweep)).read()
    keys = [s["key"] for s in snap.steps if snap.states[s["key"]] in LIVE
            and (args.stage is None or s["stage"] == args.stage) and (args.step is None or s["name"] == args.step)]
    if not keys:
        print("cdhpc: no queued or running step matches; nothing to cancel", file=sys.stderr)
        return 1
    for msg in cancel_steps(snap, keys):
        print(msg)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    """Re-launch the sweep from its resolved config: failed and missing steps run again."""
    import subprocess

    from cdhpc.actions import retry_command

    return subprocess.run(retry_command(_workdir(args.sweep))).returncode


def cmd_launch(argv: list[str]) -> int:
    from cdhpc.launch import main

    return main(argv, prog="cdhpc launch")


def cmd_eval(argv: list[str]) -> int:
    from cdhpc.evals.run import main_eval

    return main_eval(argv)


# These subcommands take exactly the options of their own parsers (`cdhpc launch` is
# `python -m cdhpc.launch`), so main hands them the rest of argv before the top-level parser
# sees it: an argparse.REMAINDER positional does not receive options such as --model or --help.
DELEGATED = {"launch": cmd_launch, "eval": cmd_eval}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cdhpc", description="Contrastive-decoding studies as one sweep.")
    sub = p.add_subparsers(dest="command", required=True)
    # launch and eval are listed here for `cdhpc --help` only; main gives their argv to DELEGATED.
    sub.add_parser("launch", help="validate, plan and run a sweep (same as python -m cdhpc.launch)", add_help=False)
    s = sub.add_parser("status", help="the sweep's job-status terminal UI; --once: a plain table (exit 1 if any step failed)")
    s.add_argument("sweep", help="the sweep's workdir or .yaml")
    s.add_argument("--once", action="store_true", help="print once and exit (the default when not a terminal)")
    s.set_defaults(fn=cmd_status)
    s = sub.add_parser("manifest", help="index receipts into manifest.sqlite, or rebuild it from them")
    s.add_argument("action", choices=("ingest", "rebuild"))
    s.add_argument("sweep", help="the sweep's workdir or .yaml")
    s.set_defaults(fn=cmd_manifest)
    for name, text in (("export", "write results/ (CSV, Markdown, LaTeX, plots) from the scores so far"),
                       ("report", "print the paper table from the scores so far (marked partial)")):
        s = sub.add_parser(name, help=text)
        s.add_argument("sweep", help="the sweep's workdir or .yaml")
        s.set_defaults(fn=cmd_export)
    s = sub.add_parser("cancel", help="cancel the queued/running steps of a sweep (all, one --stage, or one --step)")
    s.add_argument("sweep", help="the sweep's workdir or .yaml")
    s.add_argument("--stage", choices=STAGES, help="only this stage")
    s.add_argument("--step", help="only the step with this name")
    s.set_defaults(fn=cmd_cancel)
    s = sub.add_parser("retry", help="re-launch a sweep from its resolved config: failed and missing steps run again")
    s.add_argument("sweep", help="the sweep's workdir or .yaml")
    s.set_defaults(fn=cmd_retry)
    sub.add_parser("eval", help="evaluate any HF causal LM directory on BabyLM tasks", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; its exit status (2 on a usage error, which argparse prints in one line)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        return DELEGATED[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
