"""The ``--dry-run`` report: per stage, steps, arrays, dependencies, resources, states and the
estimated GPU-hours, plus the decisions made at run time. Pure rows first, then a Rich table."""

from __future__ import annotations

from dataclasses import dataclass

from cdhpc import STAGES
from cdhpc.config import SweepConfig
from cdhpc.sweep.plan import Plan, StepSpec
from cdhpc.ui.estimate import Rates, default_rates, step_hours

MAX_ARRAY_SIZE = 1000  # arrays are chunked to the cluster's MaxArraySize (slurm profiles set it)


@dataclass(frozen=True)
class StageRow:
    stage: str
    steps: int
    jobs: int
    arrays: int
    largest_array: int  # elements of the stage's largest array
    dependencies: int
    resources: str
    done: int
    running: int
    to_run: int
    gpu_hours: float
    gpu_hours_est: float = 0.0  # from measured (or default) throughput: see estimate_hours


def stage_rows(
    plan: Plan,
    states: dict[str, str] | None,
    max_array_size: int = MAX_ARRAY_SIZE,
    cfg: SweepConfig | None = None,
    rates: Rates | None = None,
) -> list[StageRow]:
    """Pure: one row per planned stage. Jobs and arrays are those a first SLURM submission makes
    (steps with the same upstream jobs share an array, steps_per_job to an element, split at
    max_array_size); GPU-hours max are the upper bound the time limits allow: steps to run x nodes
    x GPUs/node x timeout; GPU-hours est. (with ``cfg`` and ``rates``) come from throughput."""
    from cdhpc.executors.sbatch import plan_arrays

    arrays = plan_arrays(plan, {s.key for s in plan.steps}, {}, max_array_size)
    rows = []
    for stage in STAGES:
        steps = plan.stage(stage)
        if not steps:
            continue
        r = steps[0].resources
        st = [states.get(s.key, "missing") if states else "missing" for s in steps]
        to_run = sum(x not in ("done", "running", "queued") for x in st)
        gpus = r["nodes"] * r["gpus_per_node"]
        res = (
            f"{r['nodes']}x{r['tasks_per_node']} tasks, {gpus} GPU, {r['cpus_per_task']} CPU, "
            f"{r['mem_gb']:g} GB, {r['timeout_min']} min"
        )
        mine = [a for a in arrays if a.stage == stage]
        rows.append(
            StageRow(
                stage,
                len(steps),
                sum(len(a.packs) for a in mine),
                len(mine),
                max((len(a.packs) for a in mine), default=0),
                sum(len(s.inputs) for s in steps),
                res,
                st.count("done"),
                st.count("running") + st.count("queued"),
                to_run,
                to_run * gpus * r["timeout_min"] / 60,
                sum(
                    step_hours(s, cfg, rates)
                    for s, x in zip(steps, st)
                    if x not in ("done", "running", "queued")
                )
                if gpus and rates
                else 0.0,
            )
        )
    return rows


def decisions(cfg: SweepConfig, plan: Plan) -> list[str]:
    """Choices made at run time by select steps, in words."""
    out = []
    for s in plan.stage("select"):
        good = s.params["good"]
        runs = ", ".join(k.removeprefix("run:") for k in s.inputs if k.startswith("run:"))
        g = (
            f"GOOD = baseline run seed {good['seed']} step {good['step']}"
            if good["rule"] == "fixed"
            else f"GOOD = lowest validation perplexity over {runs}"
        )
        a = s.params["amateur"]
        bad = (
            ""
            if a is None
            else {
                "early": f"; BAD = step {a['step']} of the GOOD run",
                "small": f"; BAD = best checkpoint of preset {a['model']}",
                "dropout": f"; BAD = GOOD with attention dropout {a['dropout']}",
            }[a["kind"]]
        )
        out.append(f"select/{s.name}: {g}{bad} (decided at run time)")
    return out


BYTES_PER_PARAM = {"bf16": 2, "fp32": 4}
SHARD_BYTES_PER_TOKEN = 6  # Parquet (zstd) of int32 ids + decoded text, measured on tiny shards
WORDS_TO_TOKENS = 1.3  # BPE tokens per whitespace word, English prose at vocab 32k


def generated_tokens(plan: Plan) -> int:
    """Pure: tokens all generate steps will write."""
    return sum(
        (g.params["prompts"][1] - g.params["prompts"][0]) * g.params["continuations"] * g.params["new_tokens"]
        for g in plan.stage("generate")
    )


def disk_estimate(cfg: SweepConfig, plan: Plan) -> dict[str, float]:
    """Pure: bytes of the sweep's outputs by kind (an estimate: checkpoints exactly, shards and
    token arrays from tokens). DeepSpeed resume state (~16 B/param) exists only while a run trains."""
    p = cfg.pretrain
    ckpts = sum(
        cfg.presets()[s.params["model"]].n_params(cfg.tokenizer.vocab_size)
        * BYTES_PER_PARAM[p.precision]
        * len(p.saved_steps())
        for s in plan.stage("pretrain")
    )
    gen = generated_tokens(plan)
    d = cfg.data
    corpus_words = (
        d.toy.train_docs * 120
        if d.kind == "toy"
        else d.tinystories_words / 0.38
        if d.kind == "tinybabylm"
        else None
    )
    token_bytes = 2 if cfg.tokenizer.vocab_size <= 65535 else 4
    real = corpus_words * WORDS_TO_TOKENS * token_bytes if corpus_words else float("nan")
    return {
        "checkpoints": ckpts,
        "shards": gen * SHARD_BYTES_PER_TOKEN,
        "token arrays": real + (gen * token_bytes if plan.stage("corpus") else 0),
    }


def model_lines(cfg: SweepConfig, plan: Plan) -> list[str]:
    seen = {}
    for s in plan.stage("pretrain"):
        seen.setdefault(s.params["model"], 0)
        seen[s.params["model"]] += 1
    presets = cfg.presets()
    return [
        f"{name}: {presets[name].n_params(cfg.tokenizer.vocab_size) / 1e6:.2f}M parameters, {n} run(s)"
        for name, n in seen.items()
    ]


def limits_line(plan: Plan, states: dict[str, str] | None, profile, limits=None) -> str:
    """The cluster's limits (read-only queries; unknown without SLURM) and the waves the steps to
    run need under them (cdhpc.executors.waves)."""
    import shutil

    from cdhpc.executors.sbatch import plan_arrays
    from cdhpc.executors.slurm_limits import Limits, read_limits, waves_needed

    if limits is None:
        limits = (
            read_limits(profile)
            if shutil.which("scontrol")
            else Limits(
                max_submit=profile.max_submitted_jobs,
                submit_source="profile max_submitted_jobs" if profile.max_submitted_jobs else "",
            )
        )
    todo = {
        s.key for s in plan.steps if (states or {}).get(s.key, "missing") not in ("done", "running", "queued")
    }
    sizes = [len(a.packs) for a in plan_arrays(plan, todo, {}, limits.array_cap(profile.max_array_size))]
    n = waves_needed(sizes, limits.budget())
    waves = (
        "no room in the queue now"
        if n is None
        else f"{n} wave(s)"
        if limits.budget() is not None
        else "1 wave (no submit limit known)"
    )
    return f"limits: {limits.describe()}; {sum(sizes)} job(s) to submit: {waves}"


def print_dry_run(
    cfg: SweepConfig, plan: Plan, states: dict[str, str] | None, profile=None, rates: Rates | None = None
) -> None:
    """The plan as a table; with a cluster profile (executor.kind slurm), its arrays and limits."""
    max_array_size = profile.max_array_size if profile is not None else MAX_ARRAY_SIZE
    rates = rates or default_rates()
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sweep {cfg.name}: plan until {plan.until} ({len(plan.steps)} steps)")
    for col in (
        "stage",
        "steps",
        "jobs",
        "arrays",
        "largest",
        "deps",
        "resources per step",
        "done",
        "running",
        "to run",
        "GPU-h max",
        "GPU-h est.",
    ):
        table.add_column(col, justify="left" if col in ("stage", "resources per step") else "right")
    rows = stage_rows(plan, states, max_array_size, cfg, rates)
    for r in rows:
        table.add_row(
            r.stage,
            str(r.steps),
            str(r.jobs),
            str(r.arrays),
            str(r.largest_array),
            str(r.dependencies),
            r.resources,
            str(r.done),
            str(r.running),
            str(r.to_run),
            f"{r.gpu_hours:.1f}",
            f"{r.gpu_hours_est:.1f}",
        )
    table.add_row(
        "total",
        str(len(plan.steps)),
        str(sum(r.jobs for r in rows)),
        str(sum(r.arrays for r in rows)),
        "",
        "",
        "",
        "",
        "",
        str(sum(r.to_run for r in rows)),
        f"{sum(r.gpu_hours for r in rows):.1f}",
        f"{sum(r.gpu_hours_est for r in rows):.1f}",
    )
    console = Console(width=160)
    console.print(table)
    if profile is not None:
        console.print(
            f"executor: slurm, profile {cfg.executor.profile or '(none: cluster defaults)'}: partition "
            f"{profile.partition or '(default)'}, account {profile.account or '-'}, qos "
            f"{profile.qos or '-'}, "
            f"arrays of at most {profile.max_array_size} throttled to %{profile.array_parallelism}",
            highlight=False,
        )
        console.print(limits_line(plan, states, profile), highlight=False)
    console.print(f"GPU-h est.: {rates.source}", highlight=False)
    console.print("methods: " + ", ".join(cfg.methods))
    disk = disk_estimate(cfg, plan)
    console.print(
        f"generated tokens: {generated_tokens(plan) / 1e6:,.1f}M; disk: "
        + ", ".join(f"{k} {v / 1e9:,.1f} GB" for k, v in disk.items())
        + f" (total {sum(v for v in disk.values() if v == v) / 1e9:,.1f} GB)",
        highlight=False,
    )
    for line in model_lines(cfg, plan) + decisions(cfg, plan):
        console.print(line, highlight=False)
    if states is None:
        console.print(f"workdir {cfg.workdir} does not exist yet: every step will run.")


__all__ = ["StageRow", "stage_rows", "decisions", "print_dry_run", "StepSpec", "Rates"]
