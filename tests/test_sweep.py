"""The tiny sweep end to end on CPU, through the real launcher, local executor, DeepSpeed,
sampler, evaluation and aggregation: what a user of `python -m cdhpc.launch configs/tiny.yaml`
depends on. One sweep is run per module and inspected by every test (marker: slow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cdhpc.sweep.manifest import Manifest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TASKS = [
    "blimp",
    "blimp_supplement",
    "ewok",
    "entity_tracking",
    "wug",
    "reading",
    "eye_tracking",
    "perplexity",
    "wug_past",
    "comps",
]


def launch(workdir: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cdhpc.launch", "configs/tiny.yaml", f"workdir={workdir}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def started(out: subprocess.CompletedProcess) -> list[str]:
    return [line.split("started ", 1)[1] for line in out.stderr.splitlines() if " started " in line]


@pytest.fixture(scope="module")
def sweep(tiny_local):
    return tiny_local


def table_of(stdout: str) -> str:
    return "\n".join(line for line in stdout.splitlines() if line.startswith("|"))


def test_whole_study_prints_the_table_and_writes_every_file(sweep):
    workdir, out = sweep
    table = table_of(out.stdout)
    for method in (
        "baseline",
        "no-contrast",
        "no-contrast-vhead",
        "cd-early-60@q0.3",
        "cd-early-60@q0.5",
        "cd-early-60-top-k-50",
        "cd-small",
        "cd-drop-0.5",
    ):
        assert f"| {method} |" in table, method
    for name in (
        "paper_table.csv",
        "paper_table.md",
        "paper_table.tex",
        "scores_long.csv",
        "delta_rel.png",
        "curves.png",
    ):
        assert (workdir / "results" / name).stat().st_size > 0, name
        assert str(workdir / "results" / name) in out.stdout
    header = table.splitlines()[0]  # the later BabyLM tasks, metrics named where they could be several
    assert "WUG (acc.)" in header and "WUG Past (ρ)" in header and "COMPS" in header and "AoA (r)" in header
    long = (workdir / "results" / "scores_long.csv").read_text().splitlines()
    assert long[0].split(",")[5:7] == ["score", "metric"]
    assert any(",aoa," in line and ",pearson," in line for line in long)
    assert any(",comps," in line for line in long)


def test_relaunch_does_nothing_and_prints_the_same_table(sweep):
    workdir, out = sweep
    again = launch(workdir, timeout=120)
    assert again.returncode == 0
    assert started(again) == []
    assert table_of(again.stdout) == table_of(out.stdout)


def test_checkpoints_load_with_hf_and_give_the_recorded_validation_loss(sweep):
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cdhpc.lm.data import TokenArray

    workdir, _ = sweep
    with Manifest(workdir) as m:
        ckpt = next(r for r in m.rows("checkpoints") if r["run"] == "baseline-s1" and r["step"] == 120)
    path = workdir / ckpt["path"]
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer("the cat").input_ids[0] == tokenizer.bos_token_id == 1
    val = TokenArray.open(next(workdir.glob("tokenizer/*/tokens/test")))
    import yaml

    trained = yaml.safe_load((workdir / "sweep.resolved.yaml").read_text())["pretrain"]  # what the sweep ran
    micro, seq_len, batches = trained["micro_batch"], trained["seq_len"], trained["val_batches"]
    starts = val.fixed_starts(batches * micro, seq_len + 1)
    losses = []
    with torch.no_grad():
        for b in range(batches):
            rows = torch.from_numpy(val.windows(starts[b * micro : (b + 1) * micro], seq_len + 1))
            logits = model(input_ids=rows[:, :-1]).logits
            losses.append(F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten()).item())
    assert np.mean(losses) == pytest.approx(ckpt["val_loss"], abs=1e-4)


def test_training_beats_unigram_perplexity_and_loss_goes_down(sweep):
    from cdhpc.lm.data import TokenArray

    workdir, _ = sweep
    train = np.asarray(TokenArray.open(next(workdir.glob("tokenizer/*/tokens/train"))).tokens)
    test = np.asarray(TokenArray.open(next(workdir.glob("tokenizer/*/tokens/test"))).tokens)
    counts = np.bincount(train, minlength=int(test.max()) + 1) + 1.0
    unigram_ppl = math.exp(-np.mean(np.log(counts[test] / counts.sum())))
    with Manifest(workdir) as m:
        rows = {(r["run"], r["step"]): r["val_ppl"] for r in m.rows("checkpoints")}
    assert rows[("baseline-s1", 120)] < rows[("baseline-s1", 60)] < unigram_ppl
    assert rows[("baseline-s1", 120)] < 0.5 * unigram_ppl


def test_every_checkpoint_is_evaluated_on_every_task_and_beats_chance_on_blimp(sweep):
    workdir, _ = sweep
    with Manifest(workdir) as m:
        scores = m.rows("scores")
    runs = {r["run"] for r in scores}
    assert len(runs) == 9
    assert {(r["run"], r["step"], r["task"]) for r in scores} == {
        (run, s, t) for run in runs for s in (60, 120) for t in TASKS
    } | {(run, 120, "aoa") for run in runs}
    assert all(r["task_version"] and r["data_sha256"] for r in scores)
    aoa = next(workdir.glob("evaluate/baseline-s1-aoa-*"))  # one step per run over all 4 checkpoints
    assert {r["step"] for r in json.loads((aoa / "surprisal.json").read_text())["results"]} == {
        30,
        60,
        90,
        120,
    }
    blimp = [
        r["score"]
        for r in scores
        if r["task"] == "blimp" and r["run"].startswith("baseline") and r["step"] == 120
    ]
    assert min(blimp) > 55.0  # two-way forced choice: chance is 50


def test_shards_hold_every_method_and_a_deleted_shard_reruns_alone_with_identical_bytes(sweep):
    workdir, _ = sweep
    with Manifest(workdir) as m:
        shards = m.rows("shards")
    assert {r["method"] for r in shards} == {
        "no-contrast",
        "no-contrast-vhead",
        "cd-early-60",
        "cd-early-60-top-k-50",
        "cd-small",
        "cd-drop-0.5",
    }
    victim = next(r for r in shards if r["method"] == "cd-early-60" and r["shard"] == 1)
    (workdir / victim["path"]).unlink()
    out = launch(workdir, "--until", "generate", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert started(out) == [line for line in started(out) if line.startswith("generate: cd-early-60-0001 ")]
    assert len(started(out)) == 1
    with Manifest(workdir) as m:
        again = next(r for r in m.rows("shards") if r["method"] == "cd-early-60" and r["shard"] == 1)
    assert again["sha256"] == victim["sha256"]


def test_cd_shards_stay_inside_the_experts_head(sweep):
    """Every generated token of a CD shard lies in GOOD's alpha-head at its position, re-scored
    with full forward passes of the selected checkpoints (docs/method.md §5)."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM

    workdir, _ = sweep
    selection = json.loads(next(workdir.glob("select/cd-early-60-*/selection.json")).read_text())
    expert = AutoModelForCausalLM.from_pretrained(workdir / selection["good"]["path"]).eval()
    table = pq.read_table(next(workdir.glob("generate/cd-early-60-0000-*/shard.parquet"))).slice(0, 8)
    for prompt, generated, texts in zip(
        table["prompt_ids"].to_pylist(), table["input_ids"].to_pylist(), table["text"].to_pylist()
    ):
        ids = torch.tensor([prompt + generated])
        with torch.no_grad():
            logp = torch.log_softmax(expert(input_ids=ids).logits[0].float(), -1)
        steps = logp[len(prompt) - 1 : -1]
        chosen = steps.gather(1, torch.tensor(generated)[:, None])[:, 0]
        assert bool((chosen >= steps.max(1).values + math.log(0.1) - 1e-4).all())
        assert "<pad>" not in "".join(texts) and "<s>" not in "".join(texts)


def test_status_and_manifest_rebuild(sweep):
    workdir, _ = sweep
    status = subprocess.run(
        [sys.executable, "-m", "cdhpc", "status", str(workdir), "--once"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and "aggregate" in status.stdout
    with Manifest(workdir) as m:
        before = {
            t: sorted(map(tuple, (r.values() for r in m.rows(t))))
            for t in ("receipts", "checkpoints", "shards", "scores")
        }
    (workdir / "manifest.sqlite").unlink()
    rebuilt = subprocess.run(
        [sys.executable, "-m", "cdhpc", "manifest", "rebuild", str(workdir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    with Manifest(workdir) as m:
        after = {t: sorted(map(tuple, (r.values() for r in m.rows(t)))) for t in before}
    assert after == before


@pytest.mark.parametrize("method", ["cd-early-60-top-k-50", "no-contrast-vhead"])
def test_truncated_and_vhead_shards_obey_their_rule(sweep, method):
    """Re-scored with full forward passes of the selected checkpoints: a V-head token lies in the
    expert's alpha-head; a top-k CD token lies within the k best CD scores at its position."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM

    from cdhpc.lm.decoding import method_scores
    from jobs.generate import decoding_params

    workdir, _ = sweep
    selection = json.loads(next(workdir.glob(f"select/{method}-*/selection.json")).read_text())
    receipt = json.loads(next((workdir / "receipts" / "generate").glob(f"{method}-0000-*.json")).read_text())
    params = decoding_params(receipt["spec"]["params"]["decoding"])
    expert = AutoModelForCausalLM.from_pretrained(workdir / selection["good"]["path"]).eval()
    amateur = (
        AutoModelForCausalLM.from_pretrained(workdir / selection["bad"]["path"]).eval()
        if selection["bad"]
        else None
    )
    table = pq.read_table(next(workdir.glob(f"generate/{method}-0000-*/shard.parquet"))).slice(0, 6)
    for prompt, generated in zip(table["prompt_ids"].to_pylist(), table["input_ids"].to_pylist()):
        ids = torch.tensor([prompt + generated])
        with torch.no_grad():
            ze = expert(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
            za = (
                amateur(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
                if amateur is not None
                else None
            )
        tokens = torch.tensor(generated)[:, None]
        logp = torch.log_softmax(ze, -1)
        in_head = logp.gather(1, tokens)[:, 0] >= logp.max(1).values + math.log(params.alpha) - 1e-4
        assert bool(in_head.all()), "a token outside the expert's head was sampled"
        if params.top_k:
            scores = method_scores(ze, za, params)
            chosen, kth = scores.gather(1, tokens)[:, 0], scores.topk(params.top_k, dim=1).values[:, -1]
            inside = torch.isfinite(chosen)  # head-boundary tokens may round to -inf when re-scored
            assert bool((chosen[inside] >= kth[inside] - 1e-4).all()) and inside.float().mean() > 0.95
