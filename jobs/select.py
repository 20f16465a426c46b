"""select: resolve GOOD (expert) and BAD (amateur) checkpoints at run time, from the baseline runs'
validation perplexities in their receipts. Writes selection.json."""

from __future__ import annotations

from cdhpc.base.atomicio import atomic_write_json
from jobs import StepContext, StepResult


def choose_good(checkpoints: list[dict], good: dict) -> dict:
    """Pure: the GOOD checkpoint row. best_val_ppl: lowest validation perplexity (ties: the first
    run in plan order, then the earliest step); fixed: run seed `seed`, step `step`."""
    if good["rule"] == "fixed":
        match = [c for c in checkpoints if c["seed"] == good["seed"] and c["step"] == good["step"]]
        if not match:
            raise ValueError(
                f"select.good: no checkpoint step {good['step']} of the run with seed {good['seed']}"
            )
        return match[0]
    pool = [c for c in checkpoints if good.get("seed") is None or c["seed"] == good["seed"]]
    return min(pool, key=lambda c: c["val_ppl"])


def _checkpoints(ctx: StepContext, role: str) -> list[dict]:
    r = ctx.input_receipt(role)
    seed = r.spec["params"]["seed"]
    return [{**c, "seed": seed} for c in r.rows.get("checkpoints", [])]


def run(ctx: StepContext) -> StepResult:
    baselines = [c for role in ctx.spec.inputs if role.startswith("run:") for c in _checkpoints(ctx, role)]
    good = choose_good(baselines, ctx.params["good"])
    a = ctx.params["amateur"]
    bad = None
    if a is not None and a["kind"] == "early":
        bad = next((c for c in baselines if c["run"] == good["run"] and c["step"] == a["step"]), None)
        if bad is None:
            raise ValueError(f"amateur: run {good['run']} has no checkpoint step {a['step']}")
    elif a is not None and a["kind"] == "small":
        bad = min(_checkpoints(ctx, "amateur"), key=lambda c: c["val_ppl"])
    elif a is not None:
        bad = {**good, "dropout": a["dropout"]}
    selection = {
        "mode": ctx.params["mode"],
        "good": good,
        "bad": bad,
        "amateur_kind": a["kind"] if a else None,
    }
    atomic_write_json(ctx.out_dir / "selection.json", selection)
    return StepResult(metrics=selection)
