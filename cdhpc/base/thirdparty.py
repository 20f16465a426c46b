"""Every use of a third-party library's private API, each behind one function.

cdhpc relies on a few names that submitit, DeepSpeed, transformers, tokenizers and datasets do not
promise to keep (the leading underscore says so). Each is reached only through a function here,
which checks that the name is still there and raises ThirdPartyChanged, naming the library, its
installed version and the private name, instead of letting a renamed attribute change behaviour
silently (a time-limited job not requeued, a ZeRO-3 checkpoint saved without its weights, the
default attention kernel used instead of the configured one). tests/test_thirdparty.py checks each
against the installed libraries; pyproject.toml bounds each library below its next major version.

The libraries are imported inside the functions: ``import cdhpc`` stays fast.
"""

from __future__ import annotations

import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# the module submitit's executors run in the job (python -u -m submitit.core._submit FOLDER)
SUBMITIT_ENTRY = "submitit.core._submit"


class ThirdPartyChanged(RuntimeError):
    """A private API cdhpc uses is gone, or no longer what cdhpc expects, in the installed library."""


def installed_version(dist: str) -> str:
    """The installed version of distribution `dist`, or "(not installed)"."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def changed(dist: str, name: str, what: str) -> ThirdPartyChanged:
    """The error for private `name` of `dist`: which version, what is wrong, and the fix."""
    return ThirdPartyChanged(
        f"{dist} {installed_version(dist)}: private {name} {what}; cdhpc needs it "
        "(cdhpc/base/thirdparty.py). "
        f"Install the tested versions: pip install -c constraints.txt -e ."
    )


# ----------------------------------------------------------------------------- submitit
def sbatch_parameter_defaults() -> dict[str, Any]:
    """Every parameter submitit's SlurmExecutor accepts, with its default
    (submitit.slurm.slurm._get_default_parameters: read from its sbatch renderer's signature)."""
    try:
        from submitit.slurm.slurm import _get_default_parameters
    except ImportError:
        raise changed("submitit", "submitit.slurm.slurm._get_default_parameters", "is gone") from None
    params = _get_default_parameters()
    if not isinstance(params, dict) or "partition" not in params:
        raise changed(
            "submitit",
            "submitit.slurm.slurm._get_default_parameters",
            f"no longer returns the parameter dict (got {type(params).__name__})",
        )
    return params


def make_sbatch_string(command: str, folder: str | Path, **params: Any) -> str:
    """The sbatch script submitit writes for `command` logging to `folder` with these parameters
    (its own renderer, submitit.slurm.slurm._make_sbatch_string); ``map_count`` makes an array."""
    try:
        from submitit.slurm.slurm import _make_sbatch_string
    except ImportError:
        raise changed("submitit", "submitit.slurm.slurm._make_sbatch_string", "is gone") from None
    return _make_sbatch_string(command=command, folder=folder, **params)


def submitit_command(folder: str | Path, python: str | None = None) -> str:
    """The command submitit's SlurmExecutor puts in its sbatch script for a job logging to `folder`
    (the private module submitit.core._submit); the same text as `executor_command`."""
    python = python or shlex.quote(sys.executable)
    return f"{python} -u -m {SUBMITIT_ENTRY} {shlex.quote(str(folder))}"


def executor_command(executor: Any) -> str:
    """The command a submitit SlurmExecutor is about to put in its sbatch script
    (SlurmExecutor._submitit_command_str)."""
    command = getattr(executor, "_submitit_command_str", None)
    if not isinstance(command, str):
        raise changed("submitit", "SlurmExecutor._submitit_command_str", "is gone or is no longer a string")
    return command


def requeue_handler(handler: Any) -> Any | None:
    """submitit's SignalHandler when `handler` (the process's USR2 handler) is its bound
    checkpoint-and-requeue method, else None (a step called directly, or submitit's DebugExecutor,
    which installs no handler). Raises ThirdPartyChanged when it is submitit's handler but the
    private requeue countdown is gone, so that a job fails at its start instead of deciding wrongly,
    at its time limit, whether to requeue."""
    try:
        from submitit.core.job_environment import SignalHandler
    except ImportError:
        raise changed("submitit", "submitit.core.job_environment.SignalHandler", "is gone") from None
    owner = getattr(handler, "__self__", None)
    if not isinstance(owner, SignalHandler):
        return None
    requeues_left(owner)
    return owner


def requeues_left(owner: Any) -> int:
    """How many more time-limit requeues submitit will make for this job (its SignalHandler's
    ``_delayed._timeout_countdown``; submitit ends the job instead once it would fall below 0)."""
    countdown = getattr(getattr(owner, "_delayed", None), "_timeout_countdown", None)
    if isinstance(countdown, bool) or not isinstance(countdown, int):
        raise changed(
            "submitit",
            "SignalHandler._delayed._timeout_countdown",
            f"is gone or no longer an int (got {countdown!r}), so run-on-past-the-last-requeue "
            "cannot tell whether a requeue is left",
        )
    return countdown


# ----------------------------------------------------------------------------- DeepSpeed
def zero3_state_dict(engine: Any) -> dict:
    """The full 16-bit state dict gathered from a ZeRO-3 engine's partitions
    (DeepSpeedEngine._zero3_consolidated_16bit_state_dict). A collective: every rank calls it;
    rank 0 receives the tensors."""
    gather = getattr(engine, "_zero3_consolidated_16bit_state_dict", None)
    if not callable(gather):
        raise changed("deepspeed", "DeepSpeedEngine._zero3_consolidated_16bit_state_dict", "is gone")
    return gather()


# ----------------------------------------------------------------------------- transformers
def set_attn_implementation(config: Any, name: str) -> None:
    """Make models built from `config` use the attention kernel `name` ("sdpa", "eager", ...):
    transformers' ``PreTrainedConfig._attn_implementation`` setter, which also sets sub-configs."""
    if not isinstance(getattr(type(config), "_attn_implementation", None), property):
        raise changed(
            "transformers",
            f"{type(config).__name__}._attn_implementation",
            "is no longer a property (setting it would be ignored)",
        )
    config._attn_implementation = name
    if config._attn_implementation != name:
        raise changed(
            "transformers",
            f"{type(config).__name__}._attn_implementation",
            f"did not keep {name!r} (reads {config._attn_implementation!r})",
        )


# ----------------------------------------------------------------------------- tokenizers
def bpe_tokenizer(bpe: Any) -> Any:
    """The ``tokenizers.Tokenizer`` inside an implementation wrapper such as
    SentencePieceBPETokenizer (BaseTokenizer._tokenizer), to give to PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer

    core = getattr(bpe, "_tokenizer", None)
    if not isinstance(core, Tokenizer):
        raise changed(
            "tokenizers",
            f"{type(bpe).__name__}._tokenizer",
            f"is gone or no longer a tokenizers.Tokenizer (got {type(core).__name__})",
        )
    return core


# ----------------------------------------------------------------------------- datasets
def dataset_fingerprint(ds: Any) -> str:
    """A datasets.Dataset's fingerprint (Dataset._fingerprint): a hash of its content and the
    transforms that made it, recorded as the provenance of a saved dataset."""
    fingerprint = getattr(ds, "_fingerprint", None)
    if not isinstance(fingerprint, str) or not fingerprint:
        raise changed("datasets", "Dataset._fingerprint", f"is gone or empty (got {fingerprint!r})")
    return fingerprint
