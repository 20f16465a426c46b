"""Pure: a validated sweep -> the DAG of step specs, each with a content key and its inputs.

A step's key hashes its stage, name, stage version, resolved params and its inputs' keys, so
changing one config key changes exactly the keys of the steps that read it and their descendants.
Resources and ``options`` (batch sizes, logging) do not enter the key: they change how a step
runs, not what it produces.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdhpc import STAGES
from cdhpc.base.keys import canonical_json, derive_seed
from cdhpc.base.names import amateur_run, baseline_run, retrain_run
from cdhpc.sweep.workdir import Workdir, step_dirname

if TYPE_CHECKING:  # the config is imported where a plan is made: a job process only reads StepSpec
    from cdhpc.config import SweepConfig
    from cdhpc.config.sections import MethodConfig

# Bump a stage's version when its code changes what it writes: its steps (and descendants) re-run.
# generate 2: sampler seeds from derive_seed; evaluate 2: the official BabyLM scoring rules by default
STAGE_VERSIONS = {stage: 1 for stage in STAGES} | {"generate": 2, "evaluate": 2}


def content_key(stage: str, name: str, params: dict, inputs: dict[str, str]) -> str:
    blob = canonical_json(
        {"stage": stage, "name": name, "version": STAGE_VERSIONS[stage], "params": params, "inputs": inputs}
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StepSpec:
    """One resolved step: what a job receives, and nothing else."""

    stage: str
    name: str
    key: str
    params: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)  # role -> key of the step it reads
    options: dict[str, Any] = field(default_factory=dict)  # how to run; not part of the key
    resources: dict[str, Any] = field(default_factory=dict)

    @property
    def dirname(self) -> str:
        """Output directory relative to the workdir: <stage>/<name>-<key8> (ValueError when the
        stage or name would make it more than two plain file names, e.g. a name with '/')."""
        return step_dirname(self.stage, self.name, self.key)

    def out_dir(self, workdir: str | Path) -> Path:
        """The step's output directory under `workdir`, checked to stay inside it."""
        return Workdir(workdir).step_dir(self.stage, self.name, self.key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "name": self.name,
            "key": self.key,
            "params": self.params,
            "inputs": self.inputs,
            "options": self.options,
            "resources": self.resources,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepSpec:
        return cls(**{k: d[k] for k in ("stage", "name", "key", "params", "inputs", "options", "resources")})


@dataclass
class Plan:
    """Steps in dependency order (every step after its inputs)."""

    steps: list[StepSpec]
    until: str = "aggregate"

    def by_key(self) -> dict[str, StepSpec]:
        return {s.key: s for s in self.steps}

    def stage(self, stage: str) -> list[StepSpec]:
        return [s for s in self.steps if s.stage == stage]

    def descendants(self, keys: Iterable[str]) -> set[str]:
        """The given keys and every step that reads them, transitively."""
        out = set(keys)
        for s in self.steps:  # dependency order: one pass suffices
            if any(k in out for k in s.inputs.values()):
                out.add(s.key)
        return out


class _Builder:
    def __init__(self, cfg: SweepConfig):
        self.cfg = cfg
        self.steps: list[StepSpec] = []

    def add(
        self,
        stage: str,
        name: str,
        params: dict,
        inputs: dict[str, StepSpec] | None = None,
        options: dict | None = None,
    ) -> StepSpec:
        input_keys = {role: s.key for role, s in (inputs or {}).items()}
        res = self.cfg.executor.resources_for(stage).model_dump()
        spec = StepSpec(
            stage, name, content_key(stage, name, params, input_keys), params, input_keys, options or {}, res
        )
        self.steps.append(spec)
        return spec


def _dump(model: Any) -> Any:
    """JSON-able params; infinities become "-Infinity" strings (the config models read them back)."""
    return json.loads(model.model_dump_json(by_alias=True))


def plan_sweep(cfg: SweepConfig, until: str = "aggregate") -> Plan:
    """The sweep's DAG up to and including the stage `until`."""
    if until not in STAGES:
        raise ValueError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}")
    last = STAGES.index(until)
    b = _Builder(cfg)
    data = _dump(cfg.data)
    for key in ("corpus_dir", "babylm_dir", "tinystories"):  # absolute: the key names the data, not the cwd
        if data[key] is not None:
            data[key] = str(getattr(cfg.data, key).resolve())
    prepare = b.add(
        "prepare", "data", {"data": data, "seed": cfg.seed, "eval_toy": cfg.eval.data_dir == "toy"}
    )
    if last >= 1:
        tok = b.add(
            "tokenizer",
            "tokenizer",
            {"tokenizer": _dump(cfg.tokenizer), "doc_sep": cfg.data.doc_sep},
            {"corpus": prepare},
        )
    if last >= 2:
        runs = _plan_pretrain(b, tok, last)
    if last >= 6:
        evals = _plan_evaluate(b, prepare, runs)
    if last >= 7:
        b.add(
            "aggregate",
            "results",
            {
                "stats": _dump(cfg.stats),
                "methods": list(cfg.methods),
                "tasks": cfg.eval.tasks,
                "delta_tasks": cfg.delta_tasks(),
            },
            {f"{s.name}": s for s in evals},
        )
    return Plan(b.steps, until)


def _run_params(cfg: SweepConfig, preset: str, seed: int, method: str | None, share: float) -> dict:
    train = _dump(cfg.pretrain)
    for key in ("model", "seeds", "log_every", "report_to"):  # report_to: where metrics go, not the weights
        train.pop(key)
    return {
        "model": preset,
        "preset": _dump_preset(cfg, preset),
        "seed": seed,
        "method": method,
        "train": train,
        "vocab_size": cfg.tokenizer.vocab_size,
        "synthetic_share": share,
        "rounding": cfg.retrain.rounding if share > 0 else "exact",
    }


def _dump_preset(cfg: SweepConfig, name: str) -> dict:
    p = cfg.presets()[name]
    return {"layers": p.layers, "hidden": p.hidden, "heads": p.heads, "mlp": p.mlp, "context": p.context}


def _plan_pretrain(b: _Builder, tok: StepSpec, last: int) -> dict[str, StepSpec]:
    """Baseline runs, small amateurs, and (past `corpus`) the retrained runs. Returns runs by name."""
    cfg = b.cfg
    opts = {
        "log_every": cfg.pretrain.log_every,
        "sweep": cfg.name,
        "report_to": sorted(set(cfg.pretrain.report_to)),
    }
    runs = {}
    baseline_name = cfg.stats.baseline
    for seed in cfg.pretrain.seeds:
        name = baseline_run(baseline_name, seed)
        runs[name] = b.add(
            "pretrain",
            name,
            _run_params(cfg, cfg.pretrain.model, seed, baseline_name, 0.0),
            {"tokenizer": tok},
            opts,
        )
    amateurs = {}
    for method in cfg.synthetic_methods().values():
        a = method.amateur
        if a is not None and a.kind == "small":
            seed = a.seed if a.seed is not None else cfg.pretrain.seeds[0]
            name = amateur_run(a.model, seed)
            if name not in amateurs:
                amateurs[name] = b.add(
                    "pretrain", name, _run_params(cfg, a.model, seed, None, 0.0), {"tokenizer": tok}, opts
                )
    if last < 3:
        return runs
    baselines = {f"run:{s.name}": s for s in runs.values()}
    for mname, method in cfg.synthetic_methods().items():
        corpus = _plan_method_corpus(b, mname, method, baselines, amateurs, tok, last)
        if corpus is None:
            continue
        for share in cfg.mix_for(method):
            for seed in cfg.retrain.seeds:
                name = retrain_run(mname, share, seed)
                inputs = {"tokenizer": tok, "synthetic": corpus} if share > 0 else {"tokenizer": tok}
                runs[name] = b.add(
                    "pretrain", name, _run_params(cfg, cfg.pretrain.model, seed, mname, share), inputs, opts
                )
    return runs


def _plan_method_corpus(
    b: _Builder,
    mname: str,
    method: MethodConfig,
    baselines: dict[str, StepSpec],
    amateurs: dict[str, StepSpec],
    tok: StepSpec,
    last: int,
) -> StepSpec | None:
    """select -> generate shards -> corpus for one synthetic method; the corpus step (or None)."""
    cfg = b.cfg
    a = method.amateur
    select_inputs = dict(baselines)
    if a is not None and a.kind == "small":
        seed = a.seed if a.seed is not None else cfg.pretrain.seeds[0]
        select_inputs["amateur"] = amateurs[amateur_run(a.model, seed)]
    select = b.add(
        "select",
        mname,
        {"good": _dump(cfg.select.good), "mode": method.decoding.mode, "amateur": _dump(a) if a else None},
        select_inputs,
    )
    if last < 4:
        return None
    gen = method.generation
    n_prompts = gen.n_prompts()
    shards = []
    for i in range(gen.shards):
        lo, hi = i * n_prompts // gen.shards, (i + 1) * n_prompts // gen.shards
        params = {
            "method": mname,
            "decoding": _dump(method.decoding),
            "amateur": _dump(a) if a else None,
            "shard": i,
            "shards": gen.shards,
            "prompts": [lo, hi],
            "prompt_tokens": gen.prompt_tokens,
            "continuations": gen.continuations,
            "new_tokens": gen.new_tokens,
            "keep_prompt": gen.keep_prompt,
            "seed": derive_seed(cfg.seed, mname, i),
        }
        shards.append(
            b.add(
                "generate",
                f"{mname}-{i:04d}",
                params,
                {"select": select, "tokenizer": tok},
                {"batch_size": gen.batch_size, "chunk_prompts": gen.chunk_prompts},
            )
        )
    if last < 5:
        return None
    inputs = {f"shard-{i:04d}": s for i, s in enumerate(shards)}
    return b.add(
        "corpus",
        mname,
        {"method": mname, "target_tokens": gen.total_tokens, "vocab_size": cfg.tokenizer.vocab_size},
        {**inputs, "tokenizer": tok},
    )


def _plan_evaluate(b: _Builder, prepare: StepSpec, runs: dict[str, StepSpec]) -> list[StepSpec]:
    """One step per run x evaluated checkpoint x task; aoa: one step per run over every saved
    checkpoint (its learning curves need them all)."""
    cfg = b.cfg
    e = cfg.eval
    data_dir = "toy" if e.data_dir == "toy" else str(e.data_dir.resolve())
    saved = cfg.pretrain.saved_steps()
    out = []
    for run_name, run in runs.items():
        if run.params["method"] is None:  # amateurs are not rows of the table
            continue
        common = {
            "set": e.set,
            "scoring": e.scoring,
            "dtype": e.dtype,
            "data_dir": data_dir,
            "run": run_name,
            "method": run.params["method"],
            "seed": run.params["seed"],
            "synthetic_share": run.params["synthetic_share"],
        }
        if e.truncate:  # only when on: the keys of sweeps that never truncate stay as they were
            common["truncate"] = True
        from cdhpc.config.check import eval_steps_for

        for step in eval_steps_for(cfg):
            for task in e.tasks:
                if task == "aoa":
                    continue
                params = {"task": task, "step": step, **common}
                if task == "wug":  # the only task it changes: other keys stay when it does
                    params["wug_metric"] = e.wug_metric
                out.append(
                    b.add(
                        "evaluate",
                        f"{run_name}-step{step}-{task}",
                        params,
                        {"model": run, "data": prepare},
                        {"batch_size": e.batch_size},
                    )
                )
        if "aoa" in e.tasks:
            params = {"task": "aoa", "step": saved[-1], "steps": saved, **common}
            out.append(
                b.add(
                    "evaluate",
                    f"{run_name}-aoa",
                    params,
                    {"model": run, "data": prepare},
                    {"batch_size": e.batch_size},
                )
            )
    return out
