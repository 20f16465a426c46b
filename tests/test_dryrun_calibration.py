"""`--dry-run --calibration gpu.jsonl`: GPU-hours from measured figures (or documented defaults,
and the dry run says which); a bad calibration file is one line naming the file and line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdhpc.config import load_config
from cdhpc.lm.model import flops_per_token
from cdhpc.sweep.plan import plan_sweep
from cdhpc.ui import gpufigures as gf
from cdhpc.ui.estimate import (
    CAL_PRESET,
    DEFAULTS,
    default_rates,
    rates_from_calibration,
    step_hours,
)
from cdhpc.ui.launch import main

ROOT = Path(__file__).resolve().parents[1]
GPU = [
    "executor.resources.pretrain.gpus_per_node=1",
    "executor.resources.generate.gpus_per_node=1",
    "executor.resources.evaluate.gpus_per_node=2",
]
TRAIN = {
    "ours": 400_000.0,
    "peer": 420_000.0,
    "ratio": 0.95,
    "mfu_ours": 0.4,
    "preset": "llama-12x768",
    "vocab_size": 32000,
    "seq_len": 1024,
}
SAMPLER = {
    "rows": [
        {
            "preset": "llama-12x768",
            "batch": 256,
            "new_tokens": 400,
            "ours_cd_tokens_per_s": 60_000.0,
            "ours_vanilla_tokens_per_s": 100_000.0,
            "reference_cd_tokens_per_s": 15_000.0,
            "speedup_cd": 4.0,
        }
    ]
}
EVAL = {"pairs": 67_000, "ours_s": 8.0, "peer_s": 20.0, "identical_decisions": True}
META = {"command": "bash .ci/gpu", "device": "NVIDIA H200", "date": "2026-12-02T10:00:00Z"}


def write_calibration(path: Path, train_status: str = "ok") -> Path:
    gf.append_lines(
        path,
        gf.figure_lines(
            "bench_train", train_status, gf.from_train(TRAIN) if train_status == "ok" else {}, META
        ),
    )
    gf.append_lines(path, gf.figure_lines("bench_sampler", "ok", gf.from_sampler(SAMPLER), META))
    gf.append_lines(path, gf.figure_lines("bench_eval", "ok", gf.from_eval(EVAL), META))
    gf.append_lines(path, gf.figure_lines("pytest_gpu", "ok", {"gpu_tests": (5, {"failures": 0})}, META))
    return path


def dry(capsys, tmp_path, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["configs/tiny.yaml", "--dry-run", f"workdir={tmp_path / 'work'}", *GPU, *extra])
    out, err = capsys.readouterr()
    return rc, " ".join(out.split()), err


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_without_calibration_the_dry_run_names_the_defaults(capsys, tmp_path):
    rc, out, _ = dry(capsys, tmp_path)
    assert rc == 0 and "GPU-h est.: documented defaults (docs/gpu.md" in out


def test_calibration_gives_measured_hours_and_names_its_source(capsys, tmp_path):
    cal = write_calibration(tmp_path / "gpu.jsonl")
    rc, out, _ = dry(capsys, tmp_path, "--calibration", str(cal))
    assert rc == 0, out
    assert (
        f"GPU-h est.: measured, from {cal} (NVIDIA H200, 2026-12-02T10:00:00Z) for training, CD sampling, "
        "plain sampling, evaluation" in out
    )


def test_estimates_follow_the_measured_figures(tmp_path):
    cfg = load_config(ROOT / "configs/tiny.yaml", GPU)
    plan = plan_sweep(cfg)
    rates = rates_from_calibration(write_calibration(tmp_path / "gpu.jsonl"))
    run = plan.stage("pretrain")[0]
    t = run.params["train"]
    achieved = 400_000.0 * flops_per_token(CAL_PRESET, 32000, 1024)
    want = (
        t["steps"]
        * t["global_batch"]
        * t["seq_len"]
        * flops_per_token(cfg.presets()[run.params["model"]], run.params["vocab_size"], t["seq_len"])
        / achieved
        / 3600
    )
    assert step_hours(run, cfg, rates) == pytest.approx(want)
    ev = plan.stage("evaluate")[0]
    assert step_hours(ev, cfg, rates) == pytest.approx(2 * 8.0 / 3600)  # two GPUs x one BLiMP
    gens = plan.stage("generate")
    cd = next(g for g in gens if g.params["decoding"]["mode"] == "cd")
    sample = next(g for g in gens if g.params["decoding"]["mode"] == "sample")

    def per_token(g):
        return step_hours(g, cfg, rates) / (
            (g.params["prompts"][1] - g.params["prompts"][0])
            * g.params["continuations"]
            * g.params["new_tokens"]
        )

    assert per_token(cd) == pytest.approx(per_token(sample) * 100_000 / 60_000)
    default = default_rates()
    assert step_hours(run, cfg, default) == pytest.approx(want * achieved / DEFAULTS["train_flops_per_s"])
    assert step_hours(plan.stage("prepare")[0], cfg, rates) == 0.0


def test_a_part_that_did_not_finish_keeps_its_default_and_says_so(tmp_path):
    rates = rates_from_calibration(
        write_calibration(tmp_path / "gpu.jsonl", train_status="timeout after 45 s")
    )
    assert rates.train_flops_per_s == DEFAULTS["train_flops_per_s"] and rates.cd_tokens_per_s == 60_000.0
    assert rates.source.endswith("documented defaults for training (not in the file)")


@pytest.mark.parametrize(
    "text,expected",
    [
        (
            '{"figure": "train_mfu", "value": 0.4}\n{"figure": "cd_tokens_per_s", "value": 1e5\n',
            ":2: not JSON",
        ),
        ("[1, 2]\n", ":1: expected a JSON object with a string 'figure'"),
        (
            '{"figure": "cd_tokens_per_s", "value": -5}\n',
            ":1: figure 'cd_tokens_per_s' has value -5; allowed: a finite number > 0",
        ),
        ('{"figure": "eval_blimp_s", "value": "fast"}\n', ":1: figure 'eval_blimp_s' has value 'fast'"),
        (
            '{"figure": "eval_blimp_s", "value": 3, "context": [1]}\n',
            ":1: figure 'eval_blimp_s': 'context' must be",
        ),
        ("\n", ": no usable figure"),
        ('{"figure": "train_mfu", "value": 0.4}\n', ": none of train_tokens_per_s"),
    ],
)
def test_bad_calibration_is_one_line_exit_2(capsys, tmp_path, text, expected):
    cal = tmp_path / "gpu.jsonl"
    cal.write_text(text)
    rc, _, err = dry(capsys, tmp_path, "--calibration", str(cal))
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"{cal}{expected}"), err


def test_missing_calibration_file_and_calibration_without_dry_run(capsys, tmp_path):
    rc, _, err = dry(capsys, tmp_path, "--calibration", str(tmp_path / "nope.jsonl"))
    assert rc == 2 and err.startswith(f"{tmp_path / 'nope.jsonl'}: cannot read the calibration file")
    rc = main(["configs/tiny.yaml", f"workdir={tmp_path / 'w'}", "--calibration", "gpu.jsonl"])
    err = capsys.readouterr().err
    assert (
        rc == 2
        and "--calibration gpu.jsonl: only used with --dry-run" in err
        and not (tmp_path / "w").exists()
    )


def test_calibration_lines_round_trip(tmp_path):
    cal = write_calibration(tmp_path / "gpu.jsonl")
    lines = [json.loads(x) for x in cal.read_text().splitlines()]
    assert {x["figure"] for x in lines} >= {"train_tokens_per_s", "cd_tokens_per_s", "eval_blimp_s"}
    figs = gf.read_calibration(cal)
    assert (
        figs["eval_blimp_s"]["value"] == 8.0 and "gpu_tests" not in figs and "eval_same_decisions" not in figs
    )
