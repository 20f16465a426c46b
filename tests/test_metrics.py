"""Training metrics: metrics.jsonl (append, fsync'd lines, resume truncation, torn lines), the
status views' tail read, training.png, report_to (config check, plan keys, TensorBoard, W&B
offline), and (slow) real runs: a stopped and resumed train(), a SIGKILLed and relaunched
pretrain step, the tiny sweep's files."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest

from cdhpc.lm.metrics import (
    CSV_COLUMNS,
    TAIL_BYTES,
    MetricsLog,
    TrainingCurve,
    keep_through,
    latest_metrics,
    read_metrics,
    training_curves,
)
from cdhpc.results.figures import plot_training
from cdhpc.ui.training import running_progress

ROOT = Path(__file__).resolve().parent.parent


def rec(step: int, **extra) -> dict:
    return {
        "step": step,
        "tokens": step * 100,
        "loss": 5.0 - step / 10,
        "lr": 1e-3,
        "grad_norm": 1.5,
        "tokens_per_s": 1000.0,
        "time": 1.0e9 + step,
        **extra,
    }


def steps_of(path: Path) -> list[int]:
    return [r["step"] for r in read_metrics(path)]


class Recorder:
    """A tracker that keeps what it was given (a fake of cdhpc.lm.trackers' interface)."""

    def __init__(self):
        self.records, self.closed = [], False

    def log(self, records):
        self.records += records

    def close(self):
        self.closed = True


def test_lines_are_appended_whole_and_fed_to_trackers(tmp_path):
    tracker = Recorder()
    log = MetricsLog(tmp_path, 0, trackers=[tracker])
    assert (tmp_path / "metrics.jsonl").read_text() == ""  # exists from the start (an output)
    log.write([rec(1), rec(2, val_loss=4.0, val_ppl=math.exp(4.0))])
    log.write([rec(3, loss=float("nan"), grad_norm=float("inf"))])
    log.close()
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 3
    lines = [json.loads(line) for line in text.splitlines()]  # strict JSON: no NaN tokens
    assert [r["step"] for r in lines] == [1, 2, 3] and lines[1]["val_ppl"] == pytest.approx(math.exp(4.0))
    assert lines[2]["loss"] is None and lines[2]["grad_norm"] is None and lines[2]["tokens"] == 300
    assert "NaN" not in text and "Infinity" not in text
    assert [r["step"] for r in tracker.records] == [1, 2, 3] and tracker.closed


def test_a_resumed_log_drops_steps_after_the_resume_step_and_a_torn_line(tmp_path):
    log = MetricsLog(tmp_path, 0)
    log.write([rec(s) for s in range(1, 8)])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "tokens": 8')  # a kill in the middle of a write
    assert steps_of(tmp_path / "metrics.jsonl") == list(range(1, 8))  # readers skip the torn line
    resumed = MetricsLog(tmp_path, 5)  # the last checkpoint was step 5: 6 and 7 are redone
    assert steps_of(tmp_path / "metrics.jsonl") == [1, 2, 3, 4, 5]
    resumed.write([rec(s) for s in range(6, 11)])
    assert steps_of(tmp_path / "metrics.jsonl") == list(range(1, 11))
    MetricsLog(tmp_path, 0)  # starting over (nothing to resume from) starts an empty file
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_keep_through_leaves_a_clean_file_untouched(tmp_path):
    MetricsLog(tmp_path, 0).write([rec(1), rec(2)])
    path = tmp_path / "metrics.jsonl"
    before = path.stat().st_ino
    assert keep_through(path, 2) == 2 and path.stat().st_ino == before  # no rewrite
    assert keep_through(path, 1) == 1 and steps_of(path) == [1]
    assert keep_through(tmp_path / "absent.jsonl", 3) == 0


def test_csv_has_one_header_and_is_truncated_like_the_jsonl(tmp_path):
    MetricsLog(tmp_path, 0, csv=True).write([rec(1), rec(2), rec(3, val_loss=3.0)])
    MetricsLog(tmp_path, 2, csv=True).write([rec(3), rec(4)])
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS) and [line.split(",")[0] for line in lines[1:]] == [
        "1",
        "2",
        "3",
        "4",
    ]
    row = dict(zip(CSV_COLUMNS, lines[1].split(",")))
    assert row["tokens"] == "100" and float(row["loss"]) == pytest.approx(4.9) and row["val_loss"] == ""


def test_latest_metrics_reads_only_the_tail(tmp_path):
    path = tmp_path / "metrics.jsonl"
    MetricsLog(tmp_path, 0).write([rec(s) for s in range(1, 2001)])
    assert path.stat().st_size > 10 * TAIL_BYTES
    assert latest_metrics(path)["step"] == 2000
    with open(path, "a") as f:
        f.write('{"step": 2001, "lo')
    assert latest_metrics(path)["step"] == 2000
    assert latest_metrics(tmp_path / "none.jsonl") is None
    t0 = time.perf_counter()
    for _ in range(100):
        latest_metrics(path)
    assert (time.perf_counter() - t0) / 100 < 0.005  # per refresh, whatever the file's length


def _pretrain_step(name: str, key: str, steps: int = 120) -> dict:
    return {
        "stage": "pretrain",
        "name": name,
        "key": key,
        "params": {"train": {"steps": steps}},
        "inputs": {},
    }


def test_status_shows_the_latest_line_of_each_running_pretrain_step(tmp_path):
    from rich.console import Console

    from cdhpc.ui.status import Snapshot
    from cdhpc.ui.training import print_training

    steps = [
        _pretrain_step("baseline-s1", "a" * 16),
        _pretrain_step("baseline-s2", "b" * 16),
        _pretrain_step("baseline-s3", "c" * 16),
    ]
    MetricsLog(tmp_path / "pretrain" / f"baseline-s1-{'a' * 8}", 0).write([rec(1), rec(40, loss=4.25)])
    MetricsLog(tmp_path / "pretrain" / f"baseline-s2-{'b' * 8}", 0).write([rec(1)])  # done: not shown
    states = {"a" * 16: "running", "b" * 16: "done", "c" * 16: "running"}  # s3: no line yet
    rows = running_progress(tmp_path, steps, states, now=1.0e9 + 52)
    assert [(p.name, p.step, p.steps, p.loss, p.age_s) for p in rows] == [
        ("baseline-s1", 40, 120, 4.25, 12.0)
    ]
    assert rows[0].text() == "step 40/120  loss 4.2500  tokens/s 1,000  (12s ago)"
    console = Console(record=True, width=140)
    print_training(console, Snapshot(tmp_path, steps, states, now=1.0e9 + 52))
    out = console.export_text()
    assert "1 pretrain step(s) training" in out and "baseline-s1" in out and "step 40/120" in out


def test_training_curves_label_runs_as_the_table_does(tmp_path):
    def ev(run, method, share, key, step):
        return {
            "params": {"run": run, "method": method, "synthetic_share": share, "step": step},
            "inputs": {"model": key},
        }

    MetricsLog(tmp_path / "pretrain" / f"cd-q0.3-s1-{'1' * 8}", 0).write([rec(1), rec(2)])
    specs = [
        ev("baseline-s1", "baseline", 0.0, "0" * 16, 60),
        ev("baseline-s1", "baseline", 0.0, "0" * 16, 120),
        ev("cd-q0.3-s1", "cd", 0.3, "1" * 16, 60),
        ev("cd-q0.5-s1", "cd", 0.5, "2" * 16, 60),
    ]
    curves = training_curves(lambda name, key: tmp_path / "pretrain" / f"{name}-{key[:8]}", specs)
    assert [(c.run, c.method, len(c.records)) for c in curves] == [
        ("baseline-s1", "baseline", 0),
        ("cd-q0.3-s1", "cd@q0.3", 2),
        ("cd-q0.5-s1", "cd@q0.5", 0),
    ]


def test_training_png_has_both_panels_and_a_colour_per_method(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [
        TrainingCurve("baseline-s1", "baseline", [rec(s, val_ppl=50.0 - s) for s in (1, 2, 3)]),
        TrainingCurve("baseline-s2", "baseline", [rec(s, val_ppl=52.0 - s) for s in (1, 2, 3)]),
        TrainingCurve("cd-s1", "cd", [rec(s, val_ppl=49.0 - s) for s in (1, 2, 3)]),
        TrainingCurve("cd-s2", "cd", []),
    ]
    saved = []
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, path, **kw: saved.append((fig, path)))
    plot_training(curves, tmp_path / "training.png", partial="1 of 2 evaluate steps done")
    ((fig, _),) = saved
    loss_ax, ppl_ax = fig.axes
    colours = [line.get_color() for line in loss_ax.get_lines()]
    assert len(colours) == 3 and colours[0] == colours[1] != colours[2]  # seeds share their method's colour
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["baseline", "cd"]
    assert list(ppl_ax.get_lines()[0].get_xdata()) == [100, 200, 300]  # tokens seen on x
    assert "PARTIAL" in fig._suptitle.get_text()
    assert plot_training([TrainingCurve("r", "m", [])], tmp_path / "none.png") is None


def test_plot_writes_a_png(tmp_path):
    path = plot_training([TrainingCurve("r", "m", [rec(1, val_ppl=9.0), rec(2)])], tmp_path / "training.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_to_is_checked_and_stays_out_of_the_keys(monkeypatch):
    import importlib.util

    from cdhpc.config import ConfigError, load_config
    from cdhpc.sweep.plan import plan_sweep

    plain = plan_sweep(load_config(ROOT / "configs/tiny.yaml", []))
    tracked = plan_sweep(load_config(ROOT / "configs/tiny.yaml", ["pretrain.report_to=[csv,csv]"]))
    assert [s.key for s in plain.steps] == [s.key for s in tracked.steps]
    pre = tracked.stage("pretrain")[0]
    assert pre.options["report_to"] == ["csv"] and pre.options["sweep"] == "tiny"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs/tiny.yaml", ["pretrain.report_to=[wandb]"])
    assert "pretrain.report_to = 'wandb': wandb asked for but the wandb package is not installed" in str(
        e.value
    )
    with pytest.raises(ConfigError, match="'tensorboard', 'wandb' or 'csv'"):
        load_config(ROOT / "configs/tiny.yaml", ["pretrain.report_to=[mlflow]"])


def test_a_rerun_keeps_the_training_logs_only_when_it_resumes(tmp_path):
    from jobs import clean_out_dir
    from test_rerun_clean import fake_pretrain_dir, pretrain_ctx

    ctx = pretrain_ctx(tmp_path)
    fake_pretrain_dir(ctx.out_dir, 40)
    MetricsLog(ctx.out_dir, 0, csv=True).write([rec(s) for s in range(1, 51)])
    (ctx.out_dir / "tensorboard").mkdir()
    (ctx.out_dir / "tensorboard" / "events.out.tfevents.1").write_bytes(b"x")
    clean_out_dir(ctx)
    assert sorted(p.name for p in ctx.out_dir.iterdir()) == [
        "checkpoints",
        "ds",
        "metrics.csv",
        "metrics.jsonl",
        "tensorboard",
    ]
    (ctx.out_dir / "ds" / "latest").write_text("step_")  # nothing verified to resume from: all goes
    clean_out_dir(ctx)
    assert list(ctx.out_dir.iterdir()) == []


# ----------------------------------------------------------------------------- slow: real training
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from test_train import grammar_corpus

    return grammar_corpus(tmp_path_factory.mktemp("metrics"), n_train=200, n_test=40)


def _train(prepared: Path, out: str, **kw) -> dict:
    from cdhpc.lm.train import train
    from test_train import _paths, _spec

    spec = _spec(log_every=2)  # 6 steps, checkpoints at 3 and 6
    return train(spec, log=lambda _m: None, **_paths(prepared, out), **kw)


def _scalars(log_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


@pytest.mark.slow
def test_a_stopped_and_resumed_run_has_one_line_per_step_and_tensorboard_events(prepared):
    pytest.importorskip("tensorboard")
    run = prepared / "tb"
    first = _train(
        prepared, "tb", stop_after=4, report_to=["tensorboard", "csv"], run_info={"sweep": "t", "seed": 7}
    )
    assert steps_of(run / "metrics.jsonl") == [1, 2, 3, 4] and first["steps"] == 4
    result = _train(prepared, "tb", report_to=["tensorboard", "csv"], run_info={"sweep": "t", "seed": 7})
    lines = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]  # step 4 was redone after ds/step_3, once
    assert [r["step"] for r in lines if "val_ppl" in r] == [3, 6]
    assert [r["val_loss"] for r in lines if "val_loss" in r] == [c["val_loss"] for c in result["checkpoints"]]
    assert all(
        r["grad_norm"] > 0 and r["tokens_per_s"] > 0 and 0 < r["matmul_utilisation"] < 1 for r in lines
    )
    assert "mfu" not in lines[0] and "matmul_utilisation" in result and "mfu" not in result  # a CPU run
    assert [r["tokens"] for r in lines] == [s * 8 * 32 for s in range(1, 7)]
    assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]] == list(
        "123456"
    )
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert _scalars(run / "tensorboard", "train/loss") == [1, 2, 3, 4, 5, 6]  # the redone step 4 once
    assert _scalars(run / "tensorboard", "val/ppl") == [3, 6]


@pytest.mark.slow
def test_wandb_offline_run_is_written_inside_the_step(prepared, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    run_info = {
        "sweep": "tiny",
        "run": "baseline-s7",
        "method": "baseline",
        "seed": 7,
        "key": "0123456789abcdef",
        "params": {"seed": 7},
    }
    _train(prepared, "wb", report_to=["wandb"], run_info=run_info)
    runs = list((prepared / "wb" / "wandb").glob("offline-run-*-0123456789abcdef"))
    assert len(runs) == 1 and list(runs[0].glob("run-0123456789abcdef.wandb")), os.listdir(
        prepared / "wb" / "wandb"
    )
    assert steps_of(prepared / "wb" / "metrics.jsonl") == [1, 2, 3, 4, 5, 6]


# A killed and relaunched pretrain step writes each metrics line once: tests/test_resume.py.


@pytest.mark.slow
def test_tiny_sweep_writes_metrics_for_every_run_and_training_png(tiny_local):
    workdir, out = tiny_local
    planned = [
        s for s in json.loads((workdir / "plan.json").read_text())["steps"] if s["stage"] == "pretrain"
    ]
    runs = [workdir / "pretrain" / f"{s['name']}-{s['key'][:8]}" for s in planned]
    assert len(runs) == 10  # 2 baselines, 1 small amateur, 7 retrained runs
    for run in runs:
        lines = read_metrics(run / "metrics.jsonl")
        assert [r["step"] for r in lines] == list(range(1, 121)), run.name
        assert [r["step"] for r in lines if "val_ppl" in r] == [30, 60, 90, 120], run.name
        assert lines[-1]["loss"] < lines[0]["loss"], run.name
    png = workdir / "results" / "training.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in out.stdout


def test_the_tui_detail_shows_a_pretrain_steps_latest_line(tmp_path):
    from cdhpc.ui.status import Snapshot
    from cdhpc.ui.tui_screens import training_text

    steps = [_pretrain_step("baseline-s1", "a" * 16), {"stage": "evaluate", "name": "e", "key": "e" * 16}]
    snap = Snapshot(tmp_path, steps, {"a" * 16: "running", "e" * 16: "queued"})
    assert training_text(snap, "a" * 16) == "training: no metrics.jsonl line yet\n"
    MetricsLog(tmp_path / "pretrain" / f"baseline-s1-{'a' * 8}", 0).write([rec(40, loss=4.25)])
    assert training_text(snap, "a" * 16).startswith("training: step 40/120  loss 4.2500  tokens/s 1,000")
    assert training_text(snap, "e" * 16) == ""
