"""The planner: stable content keys, changes propagate to descendants only, the repo sweeps plan."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from cdhpc.base.keys import canonical_json, derive_seed
from cdhpc.config import load_config
from cdhpc.sweep.plan import content_key, plan_sweep

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "tiny_plan_keys.json"


def tiny(*overrides: str):
    return plan_sweep(load_config(ROOT / "configs/tiny.yaml", list(overrides)))


def keys_by_name(plan) -> dict[str, str]:
    return {f"{s.stage}/{s.name}": s.key for s in plan.steps}


def test_canonical_json_is_order_independent_and_exact():
    assert canonical_json({"b": 1, "a": [1.5, "x"]}) == '{"a":[1.5,"x"],"b":1}'
    assert content_key("prepare", "d", {"x": 1, "y": 2}, {}) == content_key(
        "prepare", "d", {"y": 2, "x": 1}, {}
    )
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_keys_match_the_golden_file():
    """Keys are the identity of finished work: they must not drift between runs, machines or
    Python versions. Regenerate on purpose only: UPDATE_GOLDEN=1 pytest tests/test_plan.py"""
    keys = keys_by_name(tiny())
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(keys, indent=1, sort_keys=True) + "\n")
    assert keys == json.loads(GOLDEN.read_text())


def test_keys_are_stable_across_processes():
    code = (
        "from cdhpc.config import load_config; from cdhpc.sweep.plan import plan_sweep; import json;"
        "print(json.dumps([s.key for s in plan_sweep(load_config('configs/tiny.yaml')).steps]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == [s.key for s in tiny().steps]


def changed(before, after) -> set[str]:
    a, b = keys_by_name(before), keys_by_name(after)
    assert a.keys() == b.keys()
    return {name for name in a if a[name] != b[name]}


def descendants_by_name(plan, roots: set[str]) -> set[str]:
    names = {s.key: f"{s.stage}/{s.name}" for s in plan.steps}
    root_keys = {s.key for s in plan.steps if f"{s.stage}/{s.name}" in roots}
    return {names[k] for k in plan.descendants(root_keys)}


def test_decoding_change_reaches_exactly_that_methods_descendants():
    before, after = tiny(), tiny("methods.cd-early-60.decoding.alpha=0.2")
    roots = {f"generate/cd-early-60-{i:04d}" for i in range(2)}
    assert changed(before, after) == descendants_by_name(before, roots)
    assert "pretrain/baseline-s1" not in changed(before, after)
    assert "corpus/cd-small" not in changed(before, after)
    assert "aggregate/results" in changed(before, after)


def test_amateur_change_starts_at_select():
    before, after = tiny(), tiny("methods.cd-drop-0.5.amateur.dropout=0.3")
    assert changed(before, after) == descendants_by_name(before, {"select/cd-drop-0.5"})


def test_training_change_keeps_data_steps():
    c = changed(tiny(), tiny("pretrain.lr=0.002"))
    assert "prepare/data" not in c and "tokenizer/tokenizer" not in c
    assert {"pretrain/baseline-s1", "pretrain/amateur-tiny-small-s1", "pretrain/cd-small-q0.3-s1"} <= c


def test_resources_and_options_do_not_change_keys():
    assert not changed(
        tiny(),
        tiny(
            "executor.resources.evaluate.timeout_min=5",
            "eval.batch_size=8",
            "executor.max_parallel=1",
            "generation.batch_size=16",
        ),
    )


def test_retrain_seed_added_adds_steps_without_changing_others():
    a, b = keys_by_name(tiny()), keys_by_name(tiny("retrain.seeds=[1, 3]"))
    common = a.keys() & b.keys()
    assert {n for n in common if a[n] != b[n]} == {"aggregate/results"}
    assert "pretrain/cd-small-q0.3-s3" in b.keys() - a.keys()


def test_until_plans_a_prefix_of_the_dag():
    full = tiny()
    for until, stages in (
        ("pretrain", {"prepare", "tokenizer", "pretrain"}),
        ("generate", {"prepare", "tokenizer", "pretrain", "select", "generate"}),
    ):
        part = tiny().__class__(plan_sweep(load_config(ROOT / "configs/tiny.yaml"), until).steps)
        assert {s.stage for s in part.steps} == stages
        assert {s.key for s in part.steps} <= {s.key for s in full.steps}


def test_dependency_order_and_inputs_exist():
    plan = tiny()
    seen = set()
    for s in plan.steps:
        assert set(s.inputs.values()) <= seen, s.name
        seen.add(s.key)
    assert len(seen) == len(plan.steps)


def test_tiny_plan_shape():
    plan = tiny()
    counts = Counter(s.stage for s in plan.steps)
    # 2 baseline runs + 1 small amateur + 6 methods x 1 seed + 1 extra mix x 1 seed
    assert counts["pretrain"] == 10 and counts["select"] == 6 and counts["corpus"] == 6
    assert counts["generate"] == 12 and counts["aggregate"] == 1
    # runs in the table x checkpoints x tasks, and one aoa step per run over all its checkpoints
    assert counts["evaluate"] == 9 * 2 * 10 + 9
    aoa = [s for s in plan.stage("evaluate") if s.params["task"] == "aoa"]
    assert all(s.params["steps"] == [30, 60, 90, 120] and s.params["step"] == 120 for s in aoa)


def test_shard_seeds_are_derived_and_distinct():
    gens = tiny().stage("generate")
    seeds = [g.params["seed"] for g in gens]
    assert len(set(seeds)) == len(seeds)
    assert gens[0].params["seed"] == derive_seed(0, gens[0].params["method"], 0)
    prompts = [tuple(g.params["prompts"]) for g in gens if g.params["method"] == "no-contrast"]
    assert prompts == [(0, 96), (96, 192)]


@pytest.mark.slow
def test_paper_dry_run_lists_every_method_and_stage_counts():
    out = subprocess.run(
        [sys.executable, "-m", "cdhpc.launch", "configs/paper.yaml", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    methods = ["baseline", "no-contrast", "no-contrast-vhead", "no-contrast-top-k-200"]
    methods += [f"cd-early-{n}" for n in (500, 1000, 1500, 2000)] + [
        f"cd-small-{f}" for f in (5, 10, 20, 50, 100)
    ]
    methods += [f"cd-drop-0.{p}" for p in range(1, 8)] + [f"cd-early-500-top-k-{k}" for k in (50, 100, 200)]
    methods += [f"cd-early-500-top-p-{p}" for p in ("0.90", "0.95", "0.97")]
    for m in methods:
        assert f" {m}," in text or f" {m} " in text or text.endswith(m), m
    for stage, steps in (("pretrain", 355), ("select", 25), ("generate", 800), ("evaluate", 44800)):
        assert f"│ {stage} │ {steps} │" in text, stage
    assert "torch" not in out.stderr


def test_dry_run_imports_no_torch():
    code = (
        "import sys; from cdhpc.launch import main; main(['configs/tiny.yaml', '--dry-run']);"
        "assert not {'torch', 'transformers', 'deepspeed'} & set(sys.modules), sys.modules.keys()"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)


PAPER_GOLDEN = ROOT / "tests" / "golden" / "paper_plan_keys.txt"
PAPER_PATHS = (
    "data.babylm_dir=/data/babylm_2024",
    "data.tinystories=/data/TinyStories",
    "eval.data_dir=/data/evaluation_data",
)  # absolute: a relative path resolves against the cwd


@pytest.mark.slow
def test_paper_keys_match_the_golden_digest():
    """configs/paper.yaml's 46,008 step keys, as one count and SHA-256 of the sorted `stage/name key`
    lines (the same before and after the re-layout of issue #18; changed on purpose when bf16
    training began to accumulate gradients in fp32, `data_types` in the pretrain params). Regenerate
    on purpose only:
    UPDATE_GOLDEN=1 pytest -m slow tests/test_plan.py"""
    plan = plan_sweep(
        load_config(ROOT / "configs" / "paper.yaml", list(PAPER_PATHS), allow_missing_paths=True)
    )
    lines = sorted(f"{s.stage}/{s.name} {s.key}" for s in plan.steps)
    got = f"{len(lines)} {hashlib.sha256(chr(10).join(lines).encode()).hexdigest()}\n"
    if os.environ.get("UPDATE_GOLDEN"):
        PAPER_GOLDEN.write_text(got)
    assert got == PAPER_GOLDEN.read_text()
