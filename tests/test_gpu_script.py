"""`.ci/gpu` without a GPU: its dry run (every command, the time boxes, the budget), its one-line
stop where no GPU is visible, and a whole run against a fake python (named as a fake: it stands in
for the GPU machine's interpreter), which checks the time boxes, the JSONL and the table. The
figure readers of cdhpc.gpufigures are checked on benchmark results of the shape the benches print."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cdhpc.ui import gpufigures as gf

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "gpu"

TRAIN = {
    "bench": "train",
    "device": "NVIDIA H200",
    "ours": 420000.0,
    "peer": 450000.0,
    "ratio": 0.933,
    "unit": "tokens/s",
    "mfu_ours": 0.41,
    "mfu_peer": 0.44,
    "peak_flops": 989e12,
    "preset": "llama-12x768",
    "vocab_size": 32000,
    "seq_len": 1024,
    "micro_batch": 16,
    "accumulation": 2,
    "precision": "bf16",
    "compile": False,
}
SAMPLER_ROW = {
    "preset": "llama-12x768",
    "vocab": 32000,
    "params_m": 162.4,
    "batch": 256,
    "new_tokens": 400,
    "prompt_len": 20,
    "ours_cd_tokens_per_s": 80000.0,
    "ours_vanilla_tokens_per_s": 150000.0,
    "reference_cd_tokens_per_s": 16000.0,
    "speedup_cd": 5.0,
}
SAMPLER = {"bench": "sampler", "rows": [SAMPLER_ROW]}
EVAL = {
    "bench": "eval",
    "pairs": 6700,
    "ours_s": 0.9,
    "peer_s": 2.5,
    "identical_decisions": True,
    "model": {"layers": 12},
}


def _dry() -> str:
    out = subprocess.run(
        ["bash", str(SCRIPT), "--dry"], capture_output=True, text=True, check=False, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_dry_run_prints_every_command_with_its_box_and_the_budget():
    text = _dry()
    boxes = {
        m[2]: (int(m[1]), m[3]) for m in re.finditer(r"^\s*\[\s*(\d+) s\] (\S+)\s+(.*)$", text, re.MULTILINE)
    }
    boxes = {
        k: v
        for k, v in (
            (p, boxes.get(p))
            for p in ("install", "bench_train", "bench_sampler", "bench_eval", "pytest_gpu", "tiny_sweep")
        )
        if v
    }
    assert len(boxes) == 6, text
    total = sum(b for b, _ in boxes.values())
    assert total <= 480 and f"time boxes: {total} s of 480 s" in text and "total budget 480 s" in text
    cmds = {k: c for k, (_, c) in boxes.items()}
    for bench in ("train", "sampler", "eval"):
        assert f"-m cdhpc.bench {bench} --device cuda" in cmds[f"bench_{bench}"]
    assert "--preset llama-12x768" in cmds["bench_train"] and "--preset llama-12x768" in cmds["bench_sampler"]
    assert "--batch 256" in cmds["bench_sampler"] and "--new-tokens 400" in cmds["bench_sampler"]
    assert f"--pairs {gf.BLIMP_PAIRS}" in cmds["bench_eval"]
    assert " -m gpu " in cmds["pytest_gpu"] and "configs/tiny.yaml" in cmds["tiny_sweep"]
    # every file holding a gpu test is named (collecting all of tests/ would need textual, which
    # no GPU part installs), and pyproject's addopts (-m 'not ... gpu') are replaced
    gpu_files = {
        f"tests/{p.name}"
        for p in (ROOT / "tests").glob("test_*.py")
        if re.search(r"^(pytestmark = pytest\.mark\.gpu|@pytest\.mark\.gpu)", p.read_text(), re.MULTILINE)
    }
    assert gpu_files and gpu_files <= set(cmds["pytest_gpu"].split()), gpu_files
    assert "-o addopts= " in cmds["pytest_gpu"]


def test_without_a_gpu_it_stops_with_one_line(tmp_path):
    env = {**os.environ, "NVIDIA_SMI": "false", "OUT": str(tmp_path)}
    out = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, check=False, timeout=30, env=env
    )
    assert out.returncode == 1 and out.stdout == ""
    assert len(out.stderr.splitlines()) == 1 and "no NVIDIA GPU visible" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_box_override_is_one_line_exit_2():
    env = {**os.environ, "CDHPC_GPU_BOXES": "bench_train=soon"}
    out = subprocess.run(
        ["bash", str(SCRIPT), "--dry"], capture_output=True, text=True, check=False, timeout=30, env=env
    )
    assert out.returncode == 2 and "bench_train=soon" in out.stderr and len(out.stderr.splitlines()) == 1


FAKE_PYTHON = r"""#!/usr/bin/env bash
# FAKE interpreter for .ci/gpu's orchestration: canned benchmark output, a hanging sampler, a failing
# eval, a pytest with one failure, a sweep whose receipts say cuda; cdhpc.gpufigures runs for real.
case "$*" in
  *"-m cdhpc.gpufigures"*) exec "$REAL_PYTHON" "$@" ;;
  *"-m cdhpc.bench train"*) echo "[INFO] deepspeed noise {not json"; echo "$TRAIN_JSON" ;;
  *"-m cdhpc.bench sampler"*) echo "$SAMPLER_JSON"; sleep 20 ;;  # its result printed, then a hang at exit
  *"-m cdhpc.bench eval"*) echo "Traceback: boom" >&2; exit 3 ;;
  *"-m pytest"*) x=$(printf '%s\n' "$@" | grep -A1 -x -- --junitxml | tail -1)
     echo '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="0">'\
'<testcase classname="t" name="a"/><testcase classname="t" name="b"><failure/></testcase>'\
'<testcase classname="t" name="c"/></testsuite></testsuites>' > "$x"; exit 1 ;;
  *"-m cdhpc.launch"*) w=$(printf '%s\n' "$@" | sed -n 's/^workdir=//p'); mkdir -p "$w/receipts/pretrain"
     echo '{"steps": [{"key": "k1"}]}' > "$w/plan.json"
     echo '{"key": "k1", "stage": "pretrain", "status": "ok", "metrics": {"device": "cuda:0"}}' \
       > "$w/receipts/pretrain/k1.json" ;;
  *) exit 0 ;;
esac
"""


@pytest.mark.slow
def test_fake_gpu_run_boxes_parts_and_writes_every_figure(tmp_path):
    fake, smi = tmp_path / "fakepython", tmp_path / "fake-nvidia-smi"
    fake.write_text(FAKE_PYTHON)
    smi.write_text("#!/bin/sh\necho FAKE-GPU\n")
    for f in (fake, smi):
        f.chmod(0o755)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {
        **os.environ,
        "CDHPC_PYTHON": str(fake),
        "REAL_PYTHON": sys.executable,
        "NVIDIA_SMI": str(smi),
        "TRAIN_JSON": json.dumps(TRAIN),
        "SAMPLER_JSON": json.dumps(SAMPLER),
        "OUT": str(out_dir),
        "CDHPC_GPU_WORK": str(tmp_path / "work"),
        "CDHPC_GPU_BUDGET_S": "27",
        "CDHPC_GPU_BOXES": "install=2 bench_train=2 bench_sampler=1 bench_eval=2 pytest_gpu=2 tiny_sweep=3",
    }
    run = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, check=False, timeout=60, env=env, cwd=tmp_path
    )
    lines = [json.loads(x) for x in (out_dir / "gpu.jsonl").read_text().splitlines()]
    by = {x["figure"]: x for x in lines}
    assert set(by) == {n for p in gf.PART_FIGURES.values() for n in p}, run.stdout + run.stderr
    assert by["train_mfu"]["value"] == 0.41 and by["train_mfu"]["met"] is True
    assert by["train_mfu"]["device"] == "FAKE-GPU" and "--device cuda" in by["train_mfu"]["command"]
    assert by["cd_tokens_per_s"]["status"].startswith("timeout") and by["cd_tokens_per_s"]["met"] is False
    assert by["cd_tokens_per_s"]["value"] == 80000.0  # what it printed before the hang is kept
    assert by["eval_blimp_s"]["status"] == "failed (exit 3)" and by["eval_blimp_s"]["value"] is None
    assert by["gpu_tests"]["value"] == 2 and by["gpu_tests"]["met"] is False
    assert by["gpu_tests"]["context"]["failed"] == ["t::b"]
    assert by["tiny_sweep_ok"]["value"] is True and by["tiny_sweep_ok"]["met"] is True
    assert run.returncode == 1  # targets not met
    table = run.stdout[run.stdout.index("figure  ") :]
    assert "train_mfu" in table and "NOT MET" in table and "timeout after" in table
    assert (out_dir / "gpu-logs.tar.gz").is_file()


def test_figures_from_benchmark_results():
    train = gf.from_train(TRAIN)
    assert train["train_tokens_per_s"][0] == 420000.0 and train["train_mfu"][0] == 0.41
    sampler = gf.from_sampler(SAMPLER)
    assert sampler["cd_tokens_per_s"][0] == 80000.0 and sampler["cd_speedup_vs_hf"][0] == 5.0
    ev = gf.from_eval(EVAL)
    assert ev["eval_blimp_s"][0] == pytest.approx(9.0) and ev["eval_blimp_s"][1]["scaled"] is True
    lines = gf.figure_lines("bench_sampler", "ok", sampler, {"device": "X"})
    assert [x["met"] for x in lines] == [True, True, None]


def test_bf16_decisions_may_flip_only_near_a_tie():
    from cdhpc.benchmarks.eval import decision_check

    ref = [[-1.0, -2.0], [-3.0, -3.01], [-5.0, -4.0]]
    near = decision_check([[-1.0, -2.0], [-3.02, -3.0], [-5.0, -4.0]], ref, 0.05)
    assert near["decision_flips"] == 1 and near["decisions_agree"] and not near["identical_decisions"]
    assert near["max_flip_margin"] == pytest.approx(0.01)
    far = decision_check([[-2.5, -2.0], [-3.0, -3.01], [-5.0, -4.0]], ref, 0.05)
    assert far["decision_flips"] == 1 and not far["decisions_agree"]
    assert not decision_check([[-1.0, -2.0], [-3.02, -3.0], [-5.0, -4.0]], ref, 0.0)["decisions_agree"]
    lines = gf.figure_lines("bench_eval", "ok", gf.from_eval({**EVAL, **far}), {})
    assert [x["met"] for x in lines] == [True, False] and lines[1]["context"]["decision_flips"] == 1


def test_cd_target_needs_batch_256_and_400_tokens():
    small = {"rows": [{**SAMPLER_ROW, "batch": 32}]}
    lines = gf.figure_lines("bench_sampler", "ok", gf.from_sampler(small), {})
    assert lines[0]["figure"] == "cd_tokens_per_s" and lines[0]["met"] is False


def test_last_json_skips_logs_and_names_a_missing_result():
    text = 'noise\n{"bench": "train", "ours": 1}\n[INFO] done {x}\n'
    assert gf.last_json(text) == {"bench": "train", "ours": 1}
    with pytest.raises(ValueError, match="no benchmark result"):
        gf.last_json("Traceback (most recent call last):\n  RuntimeError: CUDA out of memory\n")


def test_table_lists_figure_target_met(tmp_path):
    path = tmp_path / "gpu.jsonl"
    gf.append_lines(path, gf.figure_lines("bench_train", "ok", gf.from_train(TRAIN), {}))
    gf.append_lines(path, gf.figure_lines("bench_eval", "timeout after 55 s", {}, {}))
    table = gf.render_table([json.loads(x) for x in path.read_text().splitlines()])
    rows = table.splitlines()
    assert rows[0].split() == ["figure", "value", "unit", "target", "met", "status"] and len(rows) == 6
    assert "train_mfu" in rows[2] and ">= 0.4" in rows[2] and "MET" in rows[2]
    assert "NOT MET" in rows[4] and "timeout after 55 s" in rows[4]
