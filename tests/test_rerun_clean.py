"""A step that runs again starts from a clean output directory: only what its stage resumes from,
verified, is kept; a final output without the step's receipt is verified or generated again; a
full disk (ENOSPC) never leaves a step counted as running: its job record says FAILED or, where
even that write fails, its gone process makes it failed. The fast tests run steps in this process
(the shard ones with a fake chunk generator: no models); the `slow` ones run real generate and
pretrain steps through the launcher."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pyarrow as pa
import pytest

import cdhpc.base.atomicio
import cdhpc.lm.shards
import cdhpc.sweep.receipts
from cdhpc.base.atomicio import atomic_write_text
from cdhpc.executors.scheduler import FAILED, LocalScheduler, step_states
from cdhpc.lm.shards import SCHEMA, part_path, parts_dir, progress_path, write_shard
from cdhpc.sweep.jobrecords import job_record_path
from cdhpc.sweep.plan import Plan, StepSpec, content_key
from cdhpc.sweep.receipts import read_receipt, receipt_path
from cdhpc.ui.launch import execute
from jobs import StepContext, StepResult, run_step

VERIFIED = "verified\n"


def write_value(ctx: StepContext) -> StepResult:
    """A fake stage: value.txt = params.value; `resumable` keeps keep.txt while it says VERIFIED."""
    atomic_write_text(ctx.out_dir / "value.txt", str(ctx.params["value"]))
    return StepResult(outputs=[ctx.out_dir / "value.txt"])


def resumable(ctx: StepContext) -> list[Path]:
    keep = ctx.out_dir / "state" / "keep.txt"
    return [keep] if keep.is_file() and keep.read_text() == VERIFIED else []


def fake_step(name: str = "v", value: int = 7) -> StepSpec:
    params = {"value": value}
    return StepSpec(
        "evaluate",
        name,
        content_key("evaluate", name, params, {}),
        params,
        {},
        {"entry": "test_rerun_clean:write_value"},
        {},
    )


def running_record(workdir: Path, spec: StepSpec, job_id: str) -> Path:
    path = job_record_path(workdir, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "key": spec.key,
                "executor": "local",
                "job_id": job_id,
                "array_index": None,
                "state": "RUNNING",
                "attempt": 1,
                "submitted": 1.0,
                "updated": 1.0,
                "stdout": None,
                "stderr": None,
            }
        )
    )
    return path


def dead_pid() -> str:
    p = subprocess.Popen(["true"])
    p.wait()
    return str(p.pid)


def test_a_rerun_keeps_only_verified_resume_state(tmp_path):
    spec = fake_step()
    out = tmp_path / spec.dirname
    (out / "state").mkdir(parents=True)
    (out / "state" / "keep.txt").write_text(VERIFIED)
    (out / "state" / "stale.bin").write_bytes(b"x")
    (out / "value.txt").write_text("truncat")  # an output without a receipt
    (out / ".value.txt.123.tmp").write_text("half")
    (out / "old" / "deep").mkdir(parents=True)
    run_step(tmp_path, spec)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["state", "state/keep.txt", "value.txt"]
    assert (out / "value.txt").read_text() == "7"

    (out / "state" / "keep.txt").write_text("garbled")  # fails the stage's verification: removed
    run_step(tmp_path, spec)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["value.txt"]


def fake_pretrain_dir(out: Path, ds_step: int) -> None:
    """A pretrain output folder in train()'s layout: HF checkpoints every 20 steps up to 60, a
    DeepSpeed checkpoint (``latest`` + a zip, as torch.save writes) at `ds_step`, and debris."""
    for step in (20, 40, 60):
        ckpt = out / "checkpoints" / f"step_{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "config.json").write_text("{}")
        (ckpt / "val.json").write_text(json.dumps({"step": step}))
        header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
        (ckpt / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    tag = out / "ds" / f"step_{ds_step}"
    tag.mkdir(parents=True)
    with zipfile.ZipFile(tag / "mp_rank_00_model_states.pt", "w") as z:
        z.writestr("archive/data.pkl", bytes(range(256)) * 8)
    (out / "ds" / "latest").write_text(f"step_{ds_step}")
    (out / "ds" / "step_20").mkdir()  # an older tag
    (out / "checkpoints" / ".step_60.tmp-99").mkdir()


def pretrain_ctx(tmp_path: Path) -> StepContext:
    params = {"train": {"steps": 80, "checkpoint_every": 20}}
    return StepContext(StepSpec("pretrain", "r", "r" * 16, params, {}, {}, {}), tmp_path)


def test_pretrain_resumes_only_from_a_verified_deepspeed_checkpoint_and_the_hf_checkpoints_before_it(
    tmp_path,
):
    from jobs.pretrain import resumable

    ctx = pretrain_ctx(tmp_path)
    fake_pretrain_dir(ctx.out_dir, 40)
    kept = sorted(str(p.relative_to(ctx.out_dir)) for p in resumable(ctx))
    assert kept == ["checkpoints/step_20", "checkpoints/step_40", "ds/latest", "ds/step_40"]

    weights = ctx.out_dir / "checkpoints" / "step_20" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])  # step_20 could never be written again: start over
    assert resumable(ctx) == []
    weights.unlink()
    assert resumable(ctx) == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "latest"])
def test_a_damaged_deepspeed_checkpoint_is_not_resumed_from(tmp_path, damage):
    from jobs.pretrain import resumable

    ctx = pretrain_ctx(tmp_path)
    fake_pretrain_dir(ctx.out_dir, 40)
    states = ctx.out_dir / "ds" / "step_40" / "mp_rank_00_model_states.pt"
    data = bytearray(states.read_bytes())
    if damage == "truncate":
        states.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data[100] ^= 1  # inside the record: its CRC-32 no longer matches
        states.write_bytes(data)
    else:
        (ctx.out_dir / "ds" / "latest").write_text("step_")  # cut while DeepSpeed wrote it
    assert resumable(ctx) == []


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_enospc_writing_outputs_leaves_a_failed_receipt_and_record(tmp_path, monkeypatch):
    spec = fake_step()
    record = running_record(tmp_path, spec, "4242")
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "4242")
    real = cdhpc.base.atomicio.atomic_write_bytes
    out = tmp_path / spec.dirname
    monkeypatch.setattr(
        cdhpc.base.atomicio,
        "atomic_write_bytes",
        lambda path, data: disk_full() if out in Path(path).parents else real(path, data),
    )
    with pytest.raises(OSError) as raised:
        run_step(tmp_path, spec)
    assert raised.value.errno == errno.ENOSPC
    receipt = read_receipt(receipt_path(tmp_path, spec.stage, spec.name, spec.key))
    assert receipt.status == "failed" and "No space left on device" in receipt.error
    assert json.loads(record.read_text())["state"] == "FAILED"


def test_enospc_everywhere_raises_the_steps_error_and_the_dead_job_counts_as_failed(tmp_path, monkeypatch):
    spec = fake_step()
    pid = dead_pid()
    record = running_record(tmp_path, spec, pid)
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", pid)
    monkeypatch.setattr(cdhpc.base.atomicio, "atomic_write_bytes", disk_full)
    with pytest.raises(OSError) as raised:  # not masked by the failed receipt or record writes
        run_step(tmp_path, spec)
    assert raised.value.errno == errno.ENOSPC and any(
        entry.name == "write_value" for entry in raised.traceback
    )
    assert not receipt_path(tmp_path, spec.stage, spec.name, spec.key).exists()
    job = json.loads(record.read_text())
    assert job["state"] == "RUNNING"  # even the record could not be written
    states = step_states(tmp_path, Plan([spec]), {}, {spec.key: job}, lambda key: [])
    assert states[spec.key] == FAILED  # a RUNNING record whose process is gone

    # the launcher adopts it, sees its process gone, cannot write the record, and goes on
    summary = LocalScheduler(tmp_path, max_parallel=1, retries=0, poll_s=0.01).run(
        Plan([spec]), {spec.key: "running"}, {spec.key: job}
    )
    assert summary.failed == [spec.key]


def test_a_step_that_cannot_be_started_for_enospc_fails_without_stopping_the_launcher(tmp_path, monkeypatch):
    import submitit

    monkeypatch.setattr(submitit.LocalExecutor, "submit", disk_full)  # writing the job's pickle
    spec = fake_step()
    summary = LocalScheduler(tmp_path, max_parallel=1, retries=3, poll_s=0.01).run(
        Plan([spec]), {spec.key: "missing"}, {}
    )
    assert summary.failed == [spec.key]


def fake_chunk_table(expert, amateur, prompts, lo, hi, opts) -> pa.Table:
    """A fake of shards._chunk_table without models: the rows are a pure function of the seed,
    the chunk and the prompts, as the sampler's are."""
    n = opts["continuations"]
    rows = [(pi, si) for pi in range(lo, hi) for si in range(n)]
    ids = [
        [(opts["seed"] * 31 + pi * 7 + si * 3 + t) % 50 + 4 for t in range(opts["new_tokens"])]
        for pi, si in rows
    ]
    return pa.Table.from_pydict(
        {
            "prompt_index": [pi for pi, _ in rows],
            "sample_index": [si for _, si in rows],
            "text": [[opts["decode"](x)] for x in ids],
            "input_ids": ids,
            "prompt_ids": [prompts[pi] for pi, _ in rows],
        },
        schema=SCHEMA,
    )


class Killed(Exception):
    pass


@pytest.fixture
def fake_shard(monkeypatch):
    monkeypatch.setattr(cdhpc.lm.shards, "_chunk_table", fake_chunk_table)
    prompts = [[1, 10 + i, 11 + i] for i in range(7)]

    def shard(out: Path, **kw) -> dict:
        args = dict(
            params="fake-params",
            seed=3,
            continuations=2,
            new_tokens=5,
            batch_size=4,
            chunk_prompts=2,
            special_ids={0, 1, 2, 3},
            keep_prompt=False,
            decode=lambda ids: " ".join(map(str, ids)),
        )
        return write_shard(None, None, prompts, out, **(args | kw))

    return shard


def kill_after(chunks: int):
    written = []

    def log(message: str) -> None:
        written.append(message)
        if len(written) == chunks:
            raise Killed(message)

    return log


def test_shard_parts_and_final_file_are_trusted_only_while_their_checksums_match(tmp_path, fake_shard):
    reference = fake_shard(tmp_path / "ref" / "shard.parquet")
    out = tmp_path / "s" / "shard.parquet"
    with pytest.raises(Killed):
        fake_shard(out, log=kill_after(2))
    part0 = part_path(out, 0)
    part0.write_bytes(part0.read_bytes()[:-9])  # a truncated part: generated again, not read
    resumed = fake_shard(out)
    assert resumed["chunks_generated"] == 3 and resumed["sha256"] == reference["sha256"]
    assert (
        not parts_dir(out).exists() and out.read_bytes() == (tmp_path / "ref" / "shard.parquet").read_bytes()
    )

    out.write_bytes(out.read_bytes()[:100])  # a truncated shard: generated again
    again = fake_shard(out)
    assert again["chunks_generated"] == 4 and again["sha256"] == reference["sha256"]
    assert fake_shard(out)["chunks_generated"] == 0  # an intact shard is kept

    progress_path(out).unlink()  # a shard nothing vouches for is not trusted
    assert fake_shard(out)["chunks_generated"] == 4


def test_shard_parts_of_another_layout_are_not_resumed(tmp_path, fake_shard):
    out = tmp_path / "shard.parquet"
    with pytest.raises(Killed):
        fake_shard(out, log=kill_after(2))
    other = fake_shard(out, chunk_prompts=3)  # options are not in the step key: same folder
    assert other["chunks_generated"] == 3
    assert other["sha256"] == fake_shard(tmp_path / "direct.parquet", chunk_prompts=3)["sha256"]


def copy_of(reference: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the small sweep's finished workdir (mtimes kept: its steps stay done) and a sweep
    file for it."""
    from smallsweep import write_sweep

    shutil.copytree(reference, tmp_path / "copy")
    return write_sweep(tmp_path, "copy"), tmp_path / "copy"


def one(paths) -> Path:
    (path,) = list(paths)
    return path


@pytest.mark.slow
def test_a_shard_without_its_receipt_is_verified_or_generated_again(small_sweep_reference, tmp_path):
    from smallsweep import run_to_end

    sweep, work = copy_of(small_sweep_reference, tmp_path)
    shard = one(work.glob("generate/cd-0000-*/shard.parquet"))
    receipt = one(work.glob("receipts/generate/cd-0000-*.json"))
    reference = shard.read_bytes()
    receipt.unlink()  # killed between the shard's rename and its receipt: the shard checks out
    run_to_end(sweep, "generate")
    metrics = read_receipt(receipt).metrics
    assert metrics["chunks_generated"] == 0 and shard.read_bytes() == reference

    shard.write_bytes(reference[: len(reference) // 2])  # truncated, and no receipt: generated again
    receipt.unlink()
    run_to_end(sweep, "generate")
    metrics = read_receipt(receipt).metrics
    assert metrics["chunks_generated"] == metrics["chunks"] > 1 and shard.read_bytes() == reference


@pytest.mark.slow
def test_a_truncated_checkpoint_is_never_resumed_from(small_sweep_reference, tmp_path, monkeypatch):
    """A truncated HF checkpoint of a finished run, then a truncated DeepSpeed checkpoint of a run
    stopped at step 40: each time the run starts over and ends with the same bytes."""
    from cdhpc.config import load_config
    from cdhpc.sweep.plan import plan_sweep
    from smallsweep import digests, run_to_end

    sweep, work = copy_of(small_sweep_reference, tmp_path)
    run_dir = one(work.glob("pretrain/baseline-s1-*"))
    receipt = one(work.glob("receipts/pretrain/baseline-s1-*.json"))
    record = one(work.glob("jobs/pretrain/baseline-s1-*.json"))
    reference = digests(run_dir / "checkpoints")

    def last_log() -> str:
        return Path(json.loads(record.read_text())["stdout"]).read_text()

    weights = run_dir / "checkpoints" / "step_80" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    receipt.unlink()
    run_to_end(sweep, "pretrain")
    assert "start_step=0" in last_log() and digests(run_dir / "checkpoints") == reference

    plan = plan_sweep(load_config(sweep, []), "pretrain")
    stopped = [
        StepSpec.from_dict(s.to_dict() | {"options": s.options | {"stop_after": 40}})
        if s.stage == "pretrain"
        else s
        for s in plan.steps
    ]
    receipt.unlink()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert execute(work, Plan(stopped), max_parallel=1, retries=0, poll_s=0.2).failed  # stopped after step 40
    assert "start_step=0" in last_log() and not (run_dir / "checkpoints" / "step_60").exists()
    (states,) = list((run_dir / "ds" / "step_40").glob("*.pt"))
    states.write_bytes(states.read_bytes()[:-100])
    run_to_end(sweep, "pretrain")
    assert "start_step=0" in last_log() and digests(run_dir / "checkpoints") == reference
