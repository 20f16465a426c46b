"""How much every cdhpc command and job logs: ``-v``/``-q`` on the command line, or
``CDHPC_LOG_LEVEL`` (debug, info, warning, error) in the environment.

The flags win over the variable; a command that was given either puts the level it resolved into
its environment, so the processes it starts inherit it: local jobs (submitit's LocalExecutor
copies the environment), SLURM jobs (sbatch exports the environment, and the job script sets
the variable again in case a profile exports none), and ``cdhpc retry``'s launcher.

Only cdhpc's own records (logger ``cdhpc``) and submitit's (a job's life: started, timed out,
checkpointed, requeued, exiting) are shown below WARNING unless the level is debug: libraries'
INFO chatter (DeepSpeed's compiler probes, which setuptools logs as ``gcc ...`` lines on the root
logger, torch, urllib3, filelock, matplotlib) stays out of the logs at the default level and
shows with ``-v``. transformers, datasets and submitit set
their loggers' levels from their own variables when they are imported, which may be after this
module ran, so those variables are set too (where the user has not set them).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import IO

ENV = "CDHPC_LOG_LEVEL"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
DEFAULT = "info"
OWN = "cdhpc"
# Libraries that read their level from the environment when imported: variable -> value per level.
LIBRARY_ENV: dict[str, dict[str, str | None]] = {
    "TRANSFORMERS_VERBOSITY": {"debug": "info", "info": "warning", "warning": "warning", "error": "error"},
    "DATASETS_VERBOSITY": {"debug": "info", "info": "warning", "warning": "warning", "error": "error"},
    "SUBMITIT_LOG_LEVEL": {"debug": "INFO", "info": "INFO", "warning": "WARNING", "error": "ERROR"},
    # transformers' "Loading weights" bars (one per model loaded: dozens per evaluate job's log)
    # and the hub's and datasets' bars; at debug the libraries decide (None: left unset)
    "HF_HUB_DISABLE_PROGRESS_BARS": {"debug": None, "info": "1", "warning": "1", "error": "1"},
}
OURS = (OWN, "submitit")  # loggers shown at the chosen level: ours and the job life's
THIRD_PARTY = (
    "deepspeed",
    "DeepSpeed",
    "transformers",
    "datasets",
    "torch",
    "urllib3",
    "filelock",
    "matplotlib",
    "huggingface_hub",
    "fsspec",
    "PIL",
    "numexpr",
)


class LogLevelError(ValueError):
    """CDHPC_LOG_LEVEL holds a value that is not a level (exit 2)."""


def env_level(environ: Mapping[str, str] = os.environ) -> str | None:
    """Pure: the level CDHPC_LOG_LEVEL names (lower case), None when it is unset or empty."""
    raw = environ.get(ENV, "").strip()
    if not raw:
        return None
    if raw.lower() not in LEVELS:
        raise LogLevelError(
            f"cdhpc: environment variable {ENV}={raw!r} is not a log level; "
            f"allowed: {', '.join(LEVELS)} (any case)"
        )
    return raw.lower()


def resolve_level(verbose: bool = False, quiet: bool = False, environ: Mapping[str, str] = os.environ) -> str:
    """Pure: -v (debug) or -q (error) if given, else CDHPC_LOG_LEVEL, else info. Raises
    LogLevelError for a bad variable even when a flag overrides it: a typo should not hide."""
    from_env = env_level(environ)
    if verbose:
        return "debug"
    if quiet:
        return "error"
    return from_env or DEFAULT


def add_flags(parser, suppress: bool = False) -> None:
    """-v/--verbose and -q/--quiet on an argparse parser. `suppress`: absent flags set nothing,
    so a subcommand's parser does not reset a flag given before the subcommand."""
    import argparse

    extra = {"default": argparse.SUPPRESS} if suppress else {}
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help=f"debug logs, library logs, and tracebacks of expected errors (also {ENV}=debug)",
        **extra,
    )
    group.add_argument("-q", "--quiet", action="store_true", help=f"errors only (also {ENV}=error)", **extra)


class _OwnBelowWarning(logging.Filter):
    """Below WARNING, pass only cdhpc's and submitit's records (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or any(
            record.name == n or record.name.startswith(n + ".") for n in OURS
        )


def configure(
    level: str,
    fmt: str = "%(asctime)s %(message)s",
    datefmt: str | None = "%H:%M:%S",
    stream: IO[str] | None = None,
    environ: dict[str, str] | None = None,
    force: bool = False,
) -> None:
    """Set up logging of an entry point (a command or a job) at `level` (a key of LEVELS), and
    pass the level on to child processes through `environ` (default: os.environ). The handler
    is installed as ``logging.basicConfig`` does: only where the root logger has none, unless
    `force` (a job's fresh process); the levels are set either way."""
    environ = os.environ if environ is None else environ
    number = LEVELS[level]
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt))
    if level != "debug":
        handler.addFilter(_OwnBelowWarning())
    root = logging.getLogger()
    if force or not root.handlers:
        logging.basicConfig(level=number, handlers=[handler], force=True)
    for name in OURS:
        logging.getLogger(name).setLevel(number)
    library = library_level(level)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(library)
    for var, values in LIBRARY_ENV.items():
        if values[level] is not None:
            environ.setdefault(var, values[level])
    if level != DEFAULT or environ.get(ENV):
        environ[ENV] = level


def library_level(level: str | None = None) -> int:
    """The level of libraries' loggers when cdhpc logs at `level` (default: CDHPC_LOG_LEVEL's, info
    when unset or bad): INFO at debug, else WARNING or above. For a library that sets its logger's
    level when imported (DeepSpeed, WARNING on its logger and its handler), after the import."""
    if level is None:
        try:
            level = env_level() or DEFAULT
        except LogLevelError:
            level = DEFAULT
    return logging.INFO if level == "debug" else max(LEVELS[level], logging.WARNING)


def setup_command(verbose: bool = False, quiet: bool = False, **kwargs) -> str:
    """configure() for a command's -v/-q and CDHPC_LOG_LEVEL; a bad variable is one line on
    stderr and exit 2. Returns the level."""
    try:
        level = resolve_level(verbose, quiet)
    except LogLevelError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2) from None
    configure(level, **kwargs)
    return level


def configure_job(array_index: str, rank: int) -> None:
    """A job's logging: stdout (its log file), the array index in every line, the level of
    CDHPC_LOG_LEVEL (the launcher's), at least WARNING on ranks other than 0."""
    try:
        level, bad = env_level() or DEFAULT, None
    except LogLevelError as e:  # the launcher checks it; a hand-edited job environment logs at info
        level, bad = DEFAULT, e
    if rank and LEVELS[level] < logging.WARNING:
        level = "warning"
    configure(
        level,
        fmt=f"%(asctime)s [%(levelname)s] [array {array_index}] %(message)s",
        datefmt=None,
        stream=sys.stdout,
        force=True,
    )
    if bad is not None:
        logging.getLogger(OWN).warning("%s; logging at %s", bad, DEFAULT)
