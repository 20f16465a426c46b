"""``pretrain.report_to``: the numbers of ``metrics.jsonl`` fed to TensorBoard and/or Weights &
Biases through the libraries' own writers, one run per sweep run, tagged with the sweep, method
and seed. (``csv`` is written by ``cdhpc.lm.metrics.MetricsLog`` itself.)

Both are optional extras (``pip install 'cdhpc[tracking]'``); the config check refuses a sweep
that asks for one that is not installed (``missing_packages``). Their files live in the step's
output directory: ``tensorboard/`` (event files) and ``wandb/`` (with ``WANDB_MODE=offline``,
an offline run that ``wandb sync`` uploads later).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TRACKERS = ("tensorboard", "wandb", "csv")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # report_to name -> module it needs
SCALARS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "train/tokens_per_s",
    "mfu": "train/mfu",
    "matmul_utilisation": "train/matmul_utilisation",
    "tokens": "train/tokens",
    "val_loss": "val/loss",
    "val_ppl": "val/ppl",
}


def missing_packages(report_to: Sequence[str]) -> list[tuple[str, str]]:
    """(tracker, package) for each tracker asked for whose package is not importable."""
    return [
        (name, PACKAGES[name])
        for name in report_to
        if name in PACKAGES and importlib.util.find_spec(PACKAGES[name]) is None
    ]


def run_tags(run: Mapping[str, Any]) -> dict[str, str]:
    """The tags every tracker gets: sweep, run, method (``amateur`` for a small amateur), seed."""
    return {
        "sweep": str(run.get("sweep") or ""),
        "run": str(run.get("run") or ""),
        "method": str(run.get("method") or "amateur"),
        "seed": str(run.get("seed", "")),
    }


class TensorBoardTracker:
    """Scalars under ``train/`` and ``val/`` against the optimizer step. A resumed run purges the
    events after its resume step (SummaryWriter's ``purge_step``), so TensorBoard shows each once."""

    def __init__(self, log_dir: Path, resume_step: int, run: Mapping[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=resume_step + 1 if resume_step else None)
        if not resume_step:
            tags = run_tags(run)
            self.writer.add_text("cdhpc/run", "  \n".join(f"{k}: {v}" for k, v in tags.items()), 0)

    def log(self, records: Sequence[Mapping[str, Any]]) -> None:
        for r in records:
            for key, tag in SCALARS.items():
                if r.get(key) is not None:
                    self.writer.add_scalar(tag, r[key], r["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One W&B run per sweep run: id = the step's key (a requeued attempt resumes the same run),
    group = the sweep, tags sweep:/method:/seed:, config = the step's params, files under
    ``out_dir/wandb/``. The mode is W&B's own (``WANDB_MODE``: set ``offline`` on nodes without network)."""

    def __init__(self, out_dir: Path, run: Mapping[str, Any]):
        import wandb

        tags = run_tags(run)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "cdhpc"),
            group=tags["sweep"] or None,
            name=tags["run"],
            id=str(run["key"]),
            resume="allow",
            dir=str(out_dir),
            tags=[f"{k}:{v}"[:64] for k, v in tags.items() if k != "run" and v],
            config=dict(run.get("params") or {}),
        )

    def log(self, records: Sequence[Mapping[str, Any]]) -> None:
        for r in records:
            self.run.log(
                {tag: r[key] for key, tag in SCALARS.items() if r.get(key) is not None}, step=r["step"]
            )

    def close(self) -> None:
        self.run.finish()


def open_trackers(
    report_to: Sequence[str], out_dir: Path, resume_step: int, run: Mapping[str, Any]
) -> list[Any]:
    """The trackers ``report_to`` names (csv excluded: MetricsLog writes it)."""
    out: list[Any] = []
    if "tensorboard" in report_to:
        out.append(TensorBoardTracker(Path(out_dir) / "tensorboard", resume_step, run))
    if "wandb" in report_to:
        out.append(WandbTracker(Path(out_dir), run))
    return out
