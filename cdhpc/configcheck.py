"""Cross-key checks of a validated sweep: references that must resolve, and paths that must exist.

Each check returns Issues located by key path, so the user sees every problem at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cdhpc.configio import Issue

if TYPE_CHECKING:
    from cdhpc.config import SweepConfig


def check_references(cfg: SweepConfig) -> list[Issue]:
    """Every problem that single-field validation cannot see."""
    return [*_check_data(cfg), *_check_pretrain(cfg), *_check_good(cfg), *_check_methods(cfg),
            *_check_eval_and_stats(cfg)]


def _check_data(cfg: SweepConfig) -> list[Issue]:
    d = cfg.data
    required = {"prepared": ("corpus_dir",), "tinybabylm": ("babylm_dir", "tinystories")}.get(d.kind, ())
    issues = []
    for key in required:
        path = getattr(d, key)
        if path is None:
            issues.append(Issue(("data", key), f"required when data.kind is {d.kind!r}", has_value=False))
        elif not Path(path).exists():
            issues.append(Issue(("data", key), "path does not exist (give a local file or directory)", str(path),
                                missing_path=True))
    if d.kind == "prepared" and d.corpus_dir is not None and Path(d.corpus_dir).is_dir():
        for split in ("train", "seed", "test"):
            if not (Path(d.corpus_dir) / split).is_dir():
                msg = f"prepared corpus has no {split}/ directory (expected train/, seed/, test/ of <source>.txt)"
                issues.append(Issue(("data", "corpus_dir"), msg, str(d.corpus_dir)))
    return issues


def _check_pretrain(cfg: SweepConfig) -> list[Issue]:
    p = cfg.pretrain
    issues = _check_preset(cfg, ("pretrain", "model"), p.model)
    res = cfg.executor.resources_for("pretrain")
    ranks = res.nodes * res.tasks_per_node
    if p.global_batch % (p.micro_batch * ranks):
        msg = (f"must be a multiple of pretrain.micro_batch x ranks = {p.micro_batch} x {ranks} "
               f"(executor.resources.pretrain: nodes x tasks_per_node)")
        issues.append(Issue(("pretrain", "global_batch"), msg, p.global_batch))
    if len(set(p.seeds)) != len(p.seeds):
        issues.append(Issue(("pretrain", "seeds"), "seeds must be distinct", p.seeds))
    if cfg.pretrain.steps < cfg.pretrain.checkpoint_every:
        issues.append(Issue(("pretrain", "checkpoint_every"), "larger than pretrain.steps", p.checkpoint_every))
    return issues


def _check_preset(cfg: SweepConfig, loc: tuple, name: str | None) -> list[Issue]:
    presets = cfg.presets()
    if name is None or name in presets:
        return []
    return [Issue(loc, f"unknown model preset; known: {', '.join(presets)} (or define it under models:)", name)]


def _saved(cfg: SweepConfig, loc: tuple, step: int | None, what: str) -> list[Issue]:
    saved = cfg.pretrain.saved_steps()
    if step is None:
        return [Issue(loc, f"required: {what}", has_value=False)]
    if step not in saved:
        shown = ", ".join(map(str, saved[:6])) + (", ..." if len(saved) > 6 else "")
        msg = f"no checkpoint is saved at this step (pretrain saves steps {shown}; pretrain.steps = {cfg.pretrain.steps})"
        return [Issue(loc, msg, step)]
    return []


def _check_good(cfg: SweepConfig) -> list[Issue]:
    g = cfg.select.good
    issues = []
    if g.seed is not None and g.seed not in cfg.pretrain.seeds:
        issues.append(Issue(("select", "good", "seed"), f"not a baseline run seed (pretrain.seeds: {cfg.pretrain.seeds})", g.seed))
    if g.rule == "fixed":
        if g.seed is None:
            issues.append(Issue(("select", "good", "seed"), "required when rule is 'fixed'", has_value=False))
        issues += _saved(cfg, ("select", "good", "step"), g.step, "the GOOD checkpoint step when rule is 'fixed'")
    return issues


def _check_methods(cfg: SweepConfig) -> list[Issue]:
    issues = []
    for name, m in cfg.methods.items():
        loc = ("methods", name)
        if m.is_baseline:
            if m.amateur is not None:
                issues.append(Issue(loc + ("amateur",), "a baseline (no decoding) has no amateur", has_value=False))
            continue
        if m.decoding.mode != "cd":
            if m.amateur is not None:
                issues.append(Issue(loc + ("amateur",), f"only decoding.mode 'cd' uses an amateur (mode is {m.decoding.mode!r})", has_value=False))
            continue
        if m.amateur is None:
            issues.append(Issue(loc + ("amateur",), "required when decoding.mode is 'cd' (kind: early | small | dropout)", has_value=False))
            continue
        issues += _check_amateur(cfg, loc + ("amateur",), m.amateur)
    return issues


def _check_amateur(cfg: SweepConfig, loc: tuple, a) -> list[Issue]:
    if a.kind == "early":
        return _saved(cfg, loc + ("step",), a.step, "the checkpoint step of the GOOD run")
    if a.kind == "small":
        if a.model is None:
            return [Issue(loc + ("model",), "required when kind is 'small' (a model preset)", has_value=False)]
        return _check_preset(cfg, loc + ("model",), a.model)
    if a.dropout is None:
        return [Issue(loc + ("dropout",), "required when kind is 'dropout' (a probability in (0, 1))", has_value=False)]
    return []


def _check_eval_and_stats(cfg: SweepConfig) -> list[Issue]:
    issues = []
    e, s = cfg.eval, cfg.stats
    if e.data_dir != "toy" and not Path(e.data_dir).is_dir():
        issues.append(Issue(("eval", "data_dir"), "directory does not exist (the BabyLM evaluation_data dir, or toy)",
                            str(e.data_dir), missing_path=True))
    if e.data_dir == "toy" and cfg.data.kind != "toy" and any(t != "perplexity" for t in e.tasks):
        issues.append(Issue(("eval", "data_dir"), "toy eval data comes with data.kind 'toy'; give the evaluation_data directory", "toy"))
    if isinstance(e.checkpoints, list):
        for i, step in enumerate(e.checkpoints):
            issues += _saved(cfg, ("eval", "checkpoints", i), step, "a checkpoint step")
    saved = cfg.pretrain.saved_steps()
    if "aoa" in e.tasks and len(saved) < 3:
        issues.append(Issue(("eval", "tasks", e.tasks.index("aoa")), "fits a learning curve over a run's saved "
                            f"checkpoints and needs >= 3; pretrain saves {saved} (lower pretrain.checkpoint_every "
                            "or drop aoa)", "aoa"))
    if s.baseline not in cfg.methods:
        issues.append(Issue(("stats", "baseline"), f"unknown method; methods: {', '.join(cfg.methods)}", s.baseline))
    elif not cfg.methods[s.baseline].is_baseline:
        issues.append(Issue(("stats", "baseline"), "must name a method without decoding (real data only)", s.baseline))
    for name, m in cfg.methods.items():
        if m.is_baseline and name != s.baseline:
            msg = f"a second method without decoding; the baseline is stats.baseline ({s.baseline!r})"
            issues.append(Issue(("methods", name), msg, has_value=False))
    for i, task in enumerate(s.tasks or ()):
        if task not in e.tasks:
            issues.append(Issue(("stats", "tasks", i), f"not an evaluated task (eval.tasks: {', '.join(e.tasks)})", task))
    return issues
