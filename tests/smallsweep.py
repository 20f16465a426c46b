"""The small sweep of the kill-and-resume tests (test_resume, test_signals, test_rerun_clean): data,
tokenizer, one 80-step pretrain run and one contrastive generate shard, each a minute or less on
one core. Helpers to launch it, stop it the hard way and compare its outputs byte for byte; the
uninterrupted reference run is built once per session (conftest.py `small_sweep_reference`)."""

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

from donesteps import copy_done_steps

ROOT = Path(__file__).resolve().parent.parent

SWEEP = """\
name: resume
workdir: {workdir}
data: {{kind: toy, toy: {{train_docs: 800, seed_docs: 60, test_docs: 60}}}}
tokenizer: {{vocab_size: 500}}
pretrain: {{model: tiny, steps: 80, checkpoint_every: 20, seeds: [1], lr: 3.0e-3, warmup_steps: 5,
           global_batch: 8, micro_batch: 8, seq_len: 64, precision: fp32, log_every: 5, val_batches: 2,
           deepspeed: {{zero_optimization: {{stage: 0}}}}}}  # fp32 on one CPU rank, as tiny.yaml
generation: {{prompt_tokens: 6, continuations: 2, new_tokens: 48, total_tokens: 4608, shards: 1,
             batch_size: 8, chunk_prompts: 6}}
methods:
  baseline: {{}}
  cd: {{decoding: {{mode: cd}}, amateur: {{kind: early, step: 20}}}}
retrain: {{seeds: [1]}}
eval: {{tasks: [blimp]}}
"""


def write_sweep(tmp_path: Path, name: str) -> Path:
    """`tmp_path/<name>.yaml`, the sweep with its workdir `tmp_path/<name>`."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(SWEEP.format(workdir=tmp_path / name))
    return path


def write_sweep_from(reference: Path, tmp_path: Path, name: str) -> Path:
    """`write_sweep`, its workdir holding the reference's prepare and tokenizer steps done: the
    kill-and-resume tests start at pretraining instead of building the same data and tokenizer."""
    sweep = write_sweep(tmp_path, name)
    copy_done_steps(reference, tmp_path / name, sweep, "tokenizer")
    return sweep


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
