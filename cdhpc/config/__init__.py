"""The sweep.yaml schema: validated models, ``key=value`` overrides, errors with key paths.

``load_config(path, overrides)`` is the only way a sweep enters cdhpc. Every error names the file
(and line where there is one), the key path, the bad value and what is allowed; nothing is
written or submitted before a config has loaded cleanly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from cdhpc.config.pydantic_errors import format_pydantic_errors, locate
from cdhpc.config.sections import (
    PAPER_DELTA_TASKS,
    DataConfig,
    EvalConfig,
    ExecutorConfig,
    LocalPath,
    MethodConfig,
    Name,
    PretrainConfig,
    RetrainConfig,
    Seed,
    SelectConfig,
    StatsConfig,
    Strict,
    TokenizerConfig,
)
from cdhpc.config.yamlio import ConfigError, Loc, load_yaml
from cdhpc.lm.model import PRESETS, ModelPreset


class SweepConfig(Strict):
    name: Name
    """Sweep name (1-64 letters, digits, . _ + -); carried in job names."""
    workdir: LocalPath
    """Work directory of the sweep: outputs, receipts, logs, manifest.sqlite."""
    seed: Seed = 0
    """Sweep seed: shard seeds and other random choices derive from it."""
    data: DataConfig = DataConfig()
    """Training corpus."""
    tokenizer: TokenizerConfig = TokenizerConfig()
    """Tokenizer training."""
    models: dict[Name, ModelPreset] = Field(default_factory=dict)
    """Extra model presets by name (added to cdhpc.lm.model.PRESETS)."""
    pretrain: PretrainConfig = PretrainConfig()
    """Training hyper-parameters of every run."""
    select: SelectConfig = SelectConfig()
    """GOOD checkpoint selection."""
    generation: dict[str, Any] = Field(default_factory=dict)
    """Defaults for every method's `generation` block."""
    methods: dict[Name, MethodConfig] = Field(min_length=1)
    """Data recipes by name, in table order (names become run, file and job names)."""
    retrain: RetrainConfig = RetrainConfig()
    """Runs trained from scratch on each synthetic corpus."""
    eval: EvalConfig = EvalConfig()
    """Evaluation of every checkpoint."""
    stats: StatsConfig = StatsConfig()
    """Aggregation."""
    executor: ExecutorConfig = ExecutorConfig()
    """Where steps run."""

    def delta_tasks(self) -> list[str]:
        """The tasks averaged into muDeltaREL."""
        if self.stats.tasks is not None:
            return self.stats.tasks
        return [t for t in PAPER_DELTA_TASKS if t in self.eval.tasks]

    def presets(self) -> dict[str, ModelPreset]:
        return {**PRESETS, **self.models}

    def synthetic_methods(self) -> dict[str, MethodConfig]:
        return {n: m for n, m in self.methods.items() if not m.is_baseline}

    def mix_for(self, method: MethodConfig) -> list[float]:
        return method.mix if method.mix is not None else self.retrain.mix


def _apply_generation_defaults(raw: dict) -> tuple[dict, dict[Loc, Loc]]:
    """Merge the top-level `generation` block under each method's own `generation` keys. Also
    returns where each inherited key was written, so an error in it is reported there, once."""
    defaults = raw.get("generation")
    methods = raw.get("methods")
    if not isinstance(defaults, dict) or not isinstance(methods, dict):
        return raw, {}
    merged, moved = {}, {}
    for name, method in methods.items():
        if isinstance(method, dict) and method.get("decoding") is not None:
            own = method.get("generation") or {}
            if isinstance(own, dict):
                method = {**method, "generation": {**defaults, **own}}
                moved |= {
                    ("methods", name, "generation", k): ("generation", k) for k in defaults if k not in own
                }
        merged[name] = method
    return {**raw, "methods": merged}, moved


def load_config(
    path: str | Path, overrides: list[str] = (), *, allow_missing_paths: bool = False
) -> SweepConfig:
    """Read, override, validate and cross-check a sweep.yaml. Raises ConfigError. Top-level keys
    starting with ``x-`` hold shared YAML anchors and are ignored. With `allow_missing_paths`
    (the dry-run), data paths that do not exist yet are logged as warnings instead."""
    from cdhpc.config.check import check_references
    from cdhpc.config.yamlio import apply_overrides

    path = Path(path)
    raw, lines = load_yaml(path)
    raw, overridden = apply_overrides(path, raw, list(overrides))
    raw = {k: v for k, v in raw.items() if not str(k).startswith("x-")}
    raw, moved = _apply_generation_defaults(raw)
    try:
        cfg = SweepConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(path, format_pydantic_errors(e, SweepConfig, lines, overridden, moved)) from None
    issues = locate(check_references(cfg), lines, overridden, moved)
    if allow_missing_paths:
        for i in (i for i in issues if i.missing_path):
            logging.getLogger("cdhpc").warning("%s (needed before launch)", i.render(path))
        issues = [i for i in issues if not i.missing_path]
    if issues:
        raise ConfigError(path, issues)
    from cdhpc.config.hfdata import resolve_eval_data

    return resolve_eval_data(cfg)  # a cached hub id -> its snapshot folder


def dump_config(cfg: SweepConfig) -> str:
    """The resolved config as YAML (what --print-config shows)."""
    data = cfg.model_dump(mode="json", by_alias=True)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


__all__ = ["ConfigError", "Issue", "SweepConfig", "load_config", "dump_config"]
