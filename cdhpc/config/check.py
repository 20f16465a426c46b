"""Cross-key checks of a validated sweep: references that must resolve, paths that must exist
(`cdhpc.config.check_paths`), names that must not collide, and the size of what the sweep plans.

Each check returns Issues located by key path, so the user sees every problem at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdhpc import STAGES
from cdhpc.base.names import amateur_run, baseline_run, retrain_run
from cdhpc.config.check_paths import check_data, check_eval_data, check_workdir
from cdhpc.config.yamlio import Issue, Loc
from cdhpc.lm.trackers import missing_packages

if TYPE_CHECKING:
    from cdhpc.config import SweepConfig

MAX_CHECKPOINTS = 1000  # saved per run (paper.yaml: 16)
MAX_PLANNED_STEPS = 500_000  # steps of the whole sweep (paper.yaml: 46,008)


def check_references(cfg: SweepConfig) -> list[Issue]:
    """Every problem that single-field validation cannot see."""
    schedule = _check_schedule(cfg)
    if schedule:  # the other checks and the planner enumerate the saved checkpoints this bounds
        return schedule
    return [
        *check_workdir(cfg),
        *check_data(cfg),
        *_check_models(cfg),
        *_check_pretrain(cfg),
        *_check_good(cfg),
        *_check_methods(cfg),
        *_check_eval_and_stats(cfg),
        *_check_run_names(cfg),
        *_check_size(cfg),
    ]


def _check_schedule(cfg: SweepConfig) -> list[Issue]:
    p = cfg.pretrain
    saved = -(-p.steps // p.checkpoint_every)
    if saved <= MAX_CHECKPOINTS:
        return []
    msg = (
        f"pretrain.steps / checkpoint_every = {saved:,} checkpoints per run; at most {MAX_CHECKPOINTS:,} "
        f"(checkpoint_every >= {-(-p.steps // MAX_CHECKPOINTS):,})"
    )
    return [Issue(("pretrain", "checkpoint_every"), msg, p.checkpoint_every)]


def _check_models(cfg: SweepConfig) -> list[Issue]:
    issues = []
    for name, m in cfg.models.items():
        for key in ("layers", "hidden", "heads", "mlp", "context"):
            if not 1 <= getattr(m, key) <= 10**6:
                issues.append(Issue(("models", name, key), "must be in [1, 1000000]", getattr(m, key)))
        if m.heads >= 1 and m.hidden % m.heads:
            issues.append(Issue(("models", name, "heads"), f"must divide hidden ({m.hidden})", m.heads))
    return issues


def _check_pretrain(cfg: SweepConfig) -> list[Issue]:
    p = cfg.pretrain
    issues = _check_preset(cfg, ("pretrain", "model"), p.model)
    res = cfg.executor.resources_for("pretrain")
    ranks = res.nodes * res.tasks_per_node
    if p.global_batch % (p.micro_batch * ranks):
        msg = (
            f"must be a multiple of pretrain.micro_batch x ranks = {p.micro_batch} x {ranks} "
            f"(executor.resources.pretrain: nodes x tasks_per_node)"
        )
        issues.append(Issue(("pretrain", "global_batch"), msg, p.global_batch))
    if cfg.pretrain.steps < cfg.pretrain.checkpoint_every:
        issues.append(
            Issue(("pretrain", "checkpoint_every"), "larger than pretrain.steps", p.checkpoint_every)
        )
    for name, package in missing_packages(p.report_to):
        issues.append(
            Issue(
                ("pretrain", "report_to"),
                f"{name} asked for but the {package} package is not installed: "
                f"pip install 'cdhpc[tracking]' (or {package}), or remove it from report_to",
                name,
            )
        )
    return issues


def _check_preset(cfg: SweepConfig, loc: tuple, name: str | None) -> list[Issue]:
    presets = cfg.presets()
    if name is None or name in presets:
        return []
    return [
        Issue(loc, f"unknown model preset; known: {', '.join(presets)} (or define it under models:)", name)
    ]


def _saved(cfg: SweepConfig, loc: tuple, step: int | None, what: str) -> list[Issue]:
    saved = cfg.pretrain.saved_steps()
    if step is None:
        return [Issue(loc, f"required: {what}", has_value=False)]
    if step not in saved:
        shown = ", ".join(map(str, saved[:6])) + (", ..." if len(saved) > 6 else "")
        msg = (
            f"no checkpoint is saved at this step (pretrain saves steps {shown}; "
            f"pretrain.steps = {cfg.pretrain.steps})"
        )
        return [Issue(loc, msg, step)]
    return []


def _check_good(cfg: SweepConfig) -> list[Issue]:
    g = cfg.select.good
    issues = []
    if g.seed is not None and g.seed not in cfg.pretrain.seeds:
        issues.append(
            Issue(
                ("select", "good", "seed"),
                f"not a baseline run seed (pretrain.seeds: {cfg.pretrain.seeds})",
                g.seed,
            )
        )
    if g.rule == "fixed":
        if g.seed is None:
            issues.append(Issue(("select", "good", "seed"), "required when rule is 'fixed'", has_value=False))
        issues += _saved(
            cfg, ("select", "good", "step"), g.step, "the GOOD checkpoint step when rule is 'fixed'"
        )
    return issues


def _check_methods(cfg: SweepConfig) -> list[Issue]:
    issues = []
    for name, m in cfg.methods.items():
        loc = ("methods", name)
        if m.is_baseline:
            if m.amateur is not None:
                issues.append(
                    Issue(loc + ("amateur",), "a baseline (no decoding) has no amateur", has_value=False)
                )
            continue
        if m.decoding.mode != "cd":
            if m.amateur is not None:
                issues.append(
                    Issue(
                        loc + ("amateur",),
                        f"only decoding.mode 'cd' uses an amateur (mode is {m.decoding.mode!r})",
                        has_value=False,
                    )
                )
            continue
        if m.amateur is None:
            issues.append(
                Issue(
                    loc + ("amateur",),
                    "required when decoding.mode is 'cd' (kind: early | small | dropout)",
                    has_value=False,
                )
            )
            continue
        issues += _check_amateur(cfg, loc + ("amateur",), m.amateur)
    for name, m in cfg.synthetic_methods().items():
        issues += _check_generation(cfg, ("methods", name, "generation"), m)
    return issues


def _check_generation(cfg: SweepConfig, loc: Loc, m) -> list[Issue]:
    """Every shard gets a prompt; prompt and continuation fit the positions of both models."""
    g, presets = m.generation, cfg.presets()
    issues = []
    if g.shards > g.n_prompts():
        msg = (
            f"more shards than prompts: total_tokens / (continuations x new_tokens) = {g.n_prompts():,} "
            f"prompts; shards <= {g.n_prompts():,}"
        )
        issues.append(Issue(loc + ("shards",), msg, g.shards))
    models = [("pretrain.model", cfg.pretrain.model)]
    if m.amateur is not None and m.amateur.kind == "small":
        models.append((".".join(map(str, loc[:-1] + ("amateur", "model"))), m.amateur.model))
    for key, preset in models:
        if preset not in presets or g.prompt_tokens + g.new_tokens <= presets[preset].context:
            continue
        context = presets[preset].context
        room = (
            f"new_tokens <= {context - g.prompt_tokens}"
            if g.prompt_tokens < context
            else f"prompt_tokens < {context}"
        )
        msg = (
            f"prompt_tokens + new_tokens = {g.prompt_tokens} + {g.new_tokens} positions; {key} {preset!r} "
            f"has {context} ({room})"
        )
        issues.append(Issue(loc + ("new_tokens",), msg, g.new_tokens))
        break
    return issues


def _check_amateur(cfg: SweepConfig, loc: tuple, a) -> list[Issue]:
    if a.kind == "early":
        return _saved(cfg, loc + ("step",), a.step, "the checkpoint step of the GOOD run")
    if a.kind == "small":
        if a.model is None:
            return [
                Issue(loc + ("model",), "required when kind is 'small' (a model preset)", has_value=False)
            ]
        return _check_preset(cfg, loc + ("model",), a.model)
    if a.dropout is None:
        return [
            Issue(
                loc + ("dropout",),
                "required when kind is 'dropout' (a probability in (0, 1))",
                has_value=False,
            )
        ]
    return []


def _check_eval_and_stats(cfg: SweepConfig) -> list[Issue]:
    issues = []
    e, s = cfg.eval, cfg.stats
    issues += check_eval_data(cfg)
    if isinstance(e.checkpoints, list):
        for i, step in enumerate(e.checkpoints):
            issues += _saved(cfg, ("eval", "checkpoints", i), step, "a checkpoint step")
    saved = cfg.pretrain.saved_steps()
    if "aoa" in e.tasks and len(saved) < 3:
        issues.append(
            Issue(
                ("eval", "tasks", e.tasks.index("aoa")),
                "fits a learning curve over a run's saved "
                f"checkpoints and needs >= 3; pretrain saves {saved} (lower pretrain.checkpoint_every "
                "or drop aoa)",
                "aoa",
            )
        )
    if s.baseline not in cfg.methods:
        issues.append(
            Issue(("stats", "baseline"), f"unknown method; methods: {', '.join(cfg.methods)}", s.baseline)
        )
    elif not cfg.methods[s.baseline].is_baseline:
        issues.append(
            Issue(("stats", "baseline"), "must name a method without decoding (real data only)", s.baseline)
        )
    for name, m in cfg.methods.items():
        if m.is_baseline and name != s.baseline:
            msg = f"a second method without decoding; the baseline is stats.baseline ({s.baseline!r})"
            issues.append(Issue(("methods", name), msg, has_value=False))
    for i, task in enumerate(s.tasks or ()):
        if task not in e.tasks:
            issues.append(
                Issue(
                    ("stats", "tasks", i), f"not an evaluated task (eval.tasks: {', '.join(e.tasks)})", task
                )
            )
    return issues


def _check_run_names(cfg: SweepConfig) -> list[Issue]:
    """Run names (directories, table rows) come from method names, shares and seeds: two runs of
    different origins must not get the same name."""
    named: dict[str, tuple[Loc, tuple]] = {}  # run name -> (where it comes from, identity)
    issues = []

    def add(name: str, loc: Loc, identity: tuple) -> None:
        if name in named and named[name][1] != identity:
            where = ".".join(map(str, named[name][0]))
            msg = f"its run name {name!r} is also a run name of {where}; rename one"
            issues.append(Issue(loc, msg, has_value=False))
        named.setdefault(name, (loc, identity))

    for seed in cfg.pretrain.seeds:
        add(baseline_run(cfg.stats.baseline, seed), ("methods", cfg.stats.baseline), ("baseline", seed))
    for mname, m in cfg.synthetic_methods().items():
        a = m.amateur
        if a is not None and a.kind == "small" and a.model is not None:
            seed = a.seed if a.seed is not None else cfg.pretrain.seeds[0]
            add(amateur_run(a.model, seed), ("methods", mname, "amateur"), ("amateur", a.model, seed))
        for share in cfg.mix_for(m):
            for seed in cfg.retrain.seeds:
                add(retrain_run(mname, share, seed), ("methods", mname), ("retrain", mname, share, seed))
    return issues


def eval_steps_for(cfg: SweepConfig) -> list[int]:
    """Checkpoint steps evaluated for every run."""
    saved = cfg.pretrain.saved_steps()
    c = cfg.eval.checkpoints
    return saved if c == "all" else [saved[-1]] if c == "final" else sorted(c)


def planned_steps(cfg: SweepConfig) -> dict[str, int]:
    """Steps per stage that plan_sweep makes of this sweep, counted without making them."""
    synthetic = cfg.synthetic_methods().values()
    amateurs = {
        (a.model, a.seed if a.seed is not None else cfg.pretrain.seeds[0])
        for m in synthetic
        if (a := m.amateur) is not None and a.kind == "small"
    }
    runs = len(cfg.pretrain.seeds) + sum(len(cfg.mix_for(m)) * len(cfg.retrain.seeds) for m in synthetic)
    tasks = cfg.eval.tasks
    per_run = len(eval_steps_for(cfg)) * sum(t != "aoa" for t in tasks) + ("aoa" in tasks)
    counts = {
        "prepare": 1,
        "tokenizer": 1,
        "pretrain": runs + len(amateurs),
        "select": len(synthetic),
        "generate": sum(m.generation.shards for m in synthetic),
        "corpus": len(synthetic),
        "evaluate": runs * per_run,
        "aggregate": 1,
    }
    return {stage: counts[stage] for stage in STAGES}


def _check_size(cfg: SweepConfig) -> list[Issue]:
    counts = planned_steps(cfg)
    total = sum(counts.values())
    if total <= MAX_PLANNED_STEPS:
        return []
    big = ", ".join(f"{stage} {n:,}" for stage, n in sorted(counts.items(), key=lambda kv: -kv[1])[:3])
    msg = (
        f"the sweep plans {total:,} steps ({big}); at most {MAX_PLANNED_STEPS:,}: fewer seeds, shares, "
        "checkpoints, tasks or shards, or split it into several sweeps"
    )
    return [Issue((), msg, has_value=False)]
