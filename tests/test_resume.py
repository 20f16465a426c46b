"""Kill a running step (and its launcher) with SIGKILL, re-launch, and get exactly the bytes an
uninterrupted run gives: pretraining resumes from its DeepSpeed checkpoint, generation from its
last flushed chunk (marker: slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smallsweep import digests, kill_step_and_launcher, launch, run_to_end, wait_for, write_sweep_from

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def killed(tmp_path_factory, small_sweep_reference) -> Path:
    """The sweep file of the run this module stops and relaunches (its workdir `killed`)."""
    return write_sweep_from(small_sweep_reference, tmp_path_factory.mktemp("resume"), "killed")


def kill_when_and_relaunch(killed: Path, stage: str, ready, finished: str) -> str:
    """Run `killed` until `ready()`, SIGKILL its step of `stage` and its launcher (the glob
    `finished` must not exist yet), relaunch it to the end of `stage`; the relaunch's output."""
    workdir = killed.parent / "killed"
    launcher = launch(killed, stage)
    wait_for(ready, launcher)
    kill_step_and_launcher(launcher, workdir, stage)
    assert not any(workdir.glob(finished)), "the kill came too late to test a resume"
    return run_to_end(killed, stage)


def test_pretrain_killed_mid_run_resumes_to_identical_weights_and_one_metrics_line_per_step(
    killed, small_sweep_reference
):
    """The kill lands once metrics.jsonl is past the step of the last DeepSpeed checkpoint: the
    resumed run redoes those steps, writes each line once and ends with the reference's bytes."""
    from cdhpc.lm.metrics import read_metrics

    workdir = killed.parent / "killed"

    def past_checkpoint() -> bool:
        for run in workdir.glob("pretrain/baseline-s1-*"):
            progress = run / "ds" / "progress.json"
            if progress.is_file():
                saved = json.loads(progress.read_text())["step"]
                return (
                    saved < 80
                    and max((r["step"] for r in read_metrics(run / "metrics.jsonl")), default=0) > saved
                )
        return False

    out = kill_when_and_relaunch(
        killed, "pretrain", past_checkpoint, "pretrain/baseline-s1-*/checkpoints/step_80"
    )
    run_dir = next(workdir.glob("pretrain/baseline-s1-*"))
    log = "".join(p.read_text() for p in (workdir / "logs" / "pretrain").glob("*_log.out"))
    assert "start_step=0" in log and any(f"start_step={n}" in log for n in (20, 40, 60))
    reference = next(small_sweep_reference.glob("pretrain/baseline-s1-*"))
    assert run_dir.name == reference.name  # same content key
    assert digests(run_dir / "checkpoints") == digests(reference / "checkpoints")
    assert "steps done" in out

    lines = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in lines] == list(range(1, 81))
    assert [r["step"] for r in lines if "val_ppl" in r] == [20, 40, 60, 80]
    receipt = json.loads(next(workdir.glob("receipts/pretrain/baseline-s1-*.json")).read_text())
    assert any(o["path"].endswith("/metrics.jsonl") for o in receipt["outputs"])  # hashed once final
    assert "matmul_utilisation" in receipt["metrics"] and "mfu" not in receipt["metrics"]


def test_generate_killed_mid_shard_resumes_to_identical_bytes(killed, small_sweep_reference):
    workdir = killed.parent / "killed"
    kill_when_and_relaunch(
        killed,
        "generate",
        lambda: any(workdir.glob("generate/cd-0000-*/shard.parts/part-00001.parquet")),
        "generate/cd-0000-*/shard.parquet",
    )
    receipt = json.loads(next((workdir / "receipts" / "generate").glob("cd-0000-*.json")).read_text())
    assert 0 < receipt["metrics"]["chunks_generated"] < receipt["metrics"]["chunks"]  # resumed, not restarted
    ours = next(workdir.glob("generate/cd-0000-*/shard.parquet"))
    reference = next(small_sweep_reference.glob("generate/cd-0000-*/shard.parquet"))
    assert ours.read_bytes() == reference.read_bytes()


def test_pretrain_with_two_ranks_from_submitit_job_environment(tmp_path, small_sweep_reference):
    """tasks_per_node=2: both ranks get RANK/WORLD_SIZE from submitit's JobEnvironment (as on
    SLURM), train data-parallel with gloo, and only rank 0 writes the receipt."""
    sweep = write_sweep_from(small_sweep_reference, tmp_path, "multi")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdhpc.launch",
            str(sweep),
            "--until",
            "pretrain",
            "executor.resources.pretrain.tasks_per_node=2",
            "pretrain.micro_batch=4",
            "pretrain.steps=20",
            "pretrain.checkpoint_every=20",
            "methods.cd.amateur.step=20",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    receipt = json.loads(
        next((tmp_path / "multi" / "receipts" / "pretrain").glob("baseline-s1-*.json")).read_text()
    )
    assert receipt["status"] == "ok" and receipt["metrics"]["world_size"] == 2
    assert any((tmp_path / "multi").glob("pretrain/baseline-s1-*/checkpoints/step_20/model.safetensors"))
