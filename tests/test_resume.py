"""Kill a running step (and its launcher) with SIGKILL, re-launch, and get exactly the bytes an
uninterrupted run gives: pretraining resumes from its DeepSpeed checkpoint, generation from its
last flushed chunk (marker: slow)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

SWEEP = """\
name: resume
workdir: {workdir}
data: {{kind: toy, toy: {{train_docs: 800, seed_docs: 60, test_docs: 60}}}}
tokenizer: {{vocab_size: 500}}
pretrain: {{model: tiny, steps: 80, checkpoint_every: 20, seeds: [1], lr: 3.0e-3, warmup_steps: 5,
           global_batch: 8, micro_batch: 8, seq_len: 64, precision: fp32, log_every: 5, val_batches: 2}}
generation: {{prompt_tokens: 6, continuations: 2, new_tokens: 48, total_tokens: 9216, shards: 1,
             batch_size: 8, chunk_prompts: 6}}
methods:
  baseline: {{}}
  cd: {{decoding: {{mode: cd}}, amateur: {{kind: early, step: 20}}}}
retrain: {{seeds: [1]}}
eval: {{tasks: [blimp]}}
"""


def write_sweep(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SWEEP.format(workdir=tmp_path / name))
    return path


def launch(sweep: Path, until: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cdhpc.launch", str(sweep), "--until", until],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def run_to_end(sweep: Path, until: str) -> str:
    p = launch(sweep, until)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-3000:]
    return out


def kill_step_and_launcher(launcher: subprocess.Popen, workdir: Path, stage: str) -> None:
    """SIGKILL the launcher and every process of the running job of `stage` (a preemption)."""
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    for record in (workdir / "jobs" / stage).glob("*.json"):
        controller = psutil.Process(int(json.loads(record.read_text())["job_id"]))
        for proc in controller.children(recursive=True) + [controller]:
            proc.kill()


def wait_for(predicate, launcher: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        assert launcher.poll() is None, launcher.stdout.read()[-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


def digests(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    return write_sweep(tmp, "whole"), write_sweep(tmp, "killed")


def kill_midway_and_relaunch(sweeps, stage: str, started: str, finished: str) -> tuple[Path, Path, str]:
    """Run `whole` to the end of `stage`; run `killed` until the glob `started` exists, SIGKILL
    its step and launcher (the glob `finished` must not exist yet), relaunch it to the end.
    Returns (whole's workdir, killed's workdir, the relaunch's output)."""
    whole, killed = sweeps
    run_to_end(whole, stage)
    workdir = killed.parent / "killed"
    launcher = launch(killed, stage)
    wait_for(lambda: any(workdir.glob(started)), launcher)
    kill_step_and_launcher(launcher, workdir, stage)
    assert not any(workdir.glob(finished)), "the kill came too late to test a resume"
    return whole.parent / "whole", workdir, run_to_end(killed, stage)


def test_pretrain_killed_mid_run_resumes_to_identical_weights(sweeps):
    whole_dir, workdir, out = kill_midway_and_relaunch(
        sweeps,
        "pretrain",
        "pretrain/baseline-s1-*/ds/progress.json",
        "pretrain/baseline-s1-*/checkpoints/step_80",
    )
    run_dir = next(workdir.glob("pretrain/baseline-s1-*"))
    log = "".join(p.read_text() for p in (workdir / "logs" / "pretrain").glob("*_log.out"))
    assert "start_step=0" in log and any(f"start_step={n}" in log for n in (20, 40, 60))
    reference = next(whole_dir.glob("pretrain/baseline-s1-*"))
    assert run_dir.name == reference.name  # same content key
    assert digests(run_dir / "checkpoints") == digests(reference / "checkpoints")
    assert "steps done" in out


def test_generate_killed_mid_shard_resumes_to_identical_bytes(sweeps):
    whole_dir, workdir, _ = kill_midway_and_relaunch(
        sweeps,
        "generate",
        "generate/cd-0000-*/shard.parts/part-00001.parquet",
        "generate/cd-0000-*/shard.parquet",
    )
    receipt = json.loads(next((workdir / "receipts" / "generate").glob("cd-0000-*.json")).read_text())
    assert 0 < receipt["metrics"]["chunks_generated"] < receipt["metrics"]["chunks"]  # resumed, not restarted
    ours = next(workdir.glob("generate/cd-0000-*/shard.parquet"))
    reference = next(whole_dir.glob("generate/cd-0000-*/shard.parquet"))
    assert ours.read_bytes() == reference.read_bytes()


def test_pretrain_with_two_ranks_from_submitit_job_environment(tmp_path):
    """tasks_per_node=2: both ranks get RANK/WORLD_SIZE from submitit's JobEnvironment (as on
    SLURM), train data-parallel with gloo, and only rank 0 writes the receipt."""
    sweep = write_sweep(tmp_path, "multi")
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
