"""Loading a model directory for scoring: its files checked first (a broken config.json, a
truncated or corrupt safetensors file, a tokenizer that does not load), so each problem is one
line naming the file (EvalDataError) instead of a library traceback; then the HF causal LM and its
tokenizer. torch and transformers are imported inside the loading functions only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cdhpc.evals.data import EvalDataError

DTYPES = ("float32", "bfloat16")


MAX_SAFETENSORS_HEADER = 100_000_000  # bytes; the safetensors library refuses larger headers


def _one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's text on one line, at most `limit` characters, with its type."""
    text = " ".join(str(err).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _check_safetensors(path: Path) -> None:
    """EvalDataError naming `path` when its header (8-byte length, JSON table of tensors) is
    broken or the tensors it lists run past the end of the file."""
    size = path.stat().st_size

    def corrupt(problem: str) -> EvalDataError:
        return EvalDataError(
            f"{path}: corrupt safetensors file ({problem}); save or download the weights again"
        )

    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise corrupt(f"{size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise corrupt(f"the header claims {n:,} bytes, the file has {size:,}")
        try:
            header = json.loads(f.read(n))
            end = max(
                (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0
            )
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise corrupt("the header is not a JSON table of tensors") from None
    if 8 + n + end > size:
        raise corrupt(f"the tensors end at byte {8 + n + end:,}, the file has {size:,}: truncated?")


def _check_model_files(model_dir: Path) -> None:
    """Fail with one line naming the file for what transformers would meet with a traceback: a
    config.json that is not a JSON object, a safetensors file whose header is broken."""
    config = model_dir / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_bytes())
        except (ValueError, UnicodeDecodeError) as err:
            raise EvalDataError(
                f"{config}: not valid JSON ({_one_line(err)}); expected the model's "
                "HF config, as save_pretrained writes it"
            ) from None
        if not isinstance(data, dict):
            raise EvalDataError(
                f"{config}: expected a JSON object (the model's HF config), got {type(data).__name__}"
            )
    for path in sorted(model_dir.glob("*.safetensors")):
        _check_safetensors(path)


def load_model(model_dir: Path, device: str, dtype: str = "float32") -> tuple[Any, Any]:
    """An HF causal LM directory and its tokenizer, in eval mode. float32 is what the official
    pipeline computes in (transformers loads float32 unless told otherwise); bfloat16 is our
    faster option for GPUs. Raises EvalDataError, one line naming the directory or file, for a
    missing directory or files that do not load (corrupt weights, config or tokenizer)."""
    model = load_causal_lm(model_dir, device, dtype)
    return model, load_tokenizer(model_dir)


def load_tokenizer(model_dir: Path) -> Any:
    """The tokenizer of an HF model directory (EvalDataError, one line, when it does not load).
    Separate from the weights: a checkpoint whose task pack is cached needs no tokenizer."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as err:  # the tokenizers library raises a bare Exception for a broken tokenizer.json
        raise EvalDataError(f"{model_dir}: cannot load the tokenizer ({_one_line(err)})") from None


def load_causal_lm(model_dir: Path, device: str, dtype: str = "float32") -> Any:
    """The HF causal LM in `model_dir` on `device`, in eval mode (see `load_model`)."""
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device {device!r}: allowed are cpu, cuda, cuda:N")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: allowed are {', '.join(DTYPES)}")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise EvalDataError(
            f"{model_dir}: no such model directory (expected an HF causal LM "
            "folder with config.json, weights and tokenizer files)"
        )
    _check_model_files(model_dir)  # before the heavy imports: a broken file fails in well under a second
    import pickle

    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    except (
        OSError,
        ValueError,
        RuntimeError,
        KeyError,
        TypeError,
        SafetensorError,
        pickle.UnpicklingError,
    ) as err:
        raise EvalDataError(f"{model_dir}: cannot load the model ({_one_line(err)})") from None
    return model.to(device).eval()
