"""The evaluation pack cache (cdhpc.evals.packcache): the host work of a task done once and reused
by every checkpoint with the same tokenizer, with the same scores to the bit; a cache file that is
partial, corrupt or made for other options is never used."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).parent / "golden" / "babylm2025"
TASK_DIRS = ("blimp_filtered", "ewok_filtered", "entity_tracking")
READING = GOLDEN / "evaluation_data" / "full_eval" / "reading" / "reading_data.csv"
LINES = 8  # of each golden file: enough for several batches, fast to score


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The first lines of the golden BLiMP, EWoK and entity-tracking files and the whole reading
    file (its regressions need the rows), in the official layout."""
    root = tmp_path_factory.mktemp("data") / "evaluation_data"
    (root / "full_eval" / "reading").mkdir(parents=True)
    shutil.copy(READING, root / "full_eval" / "reading" / READING.name)
    for name in TASK_DIRS:
        for src in sorted((GOLDEN / "evaluation_data" / "full_eval" / name).glob("*.jsonl")):
            dst = root / "full_eval" / name / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text("".join(src.read_text().splitlines(keepends=True)[:LINES]))
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[Path]:
    """Three checkpoints of one run: the golden tiny Llama, its weights scaled per step, one
    tokenizer (the same files in each folder)."""
    import torch
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("run") / "checkpoints"
    out = []
    for step in (10, 100, 1000):
        model = AutoModelForCausalLM.from_pretrained(GOLDEN / "model")
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + step / 2000)
        folder = root / f"step_{step}"
        model.save_pretrained(folder)
        for f in GOLDEN.joinpath("model").glob("*token*"):
            shutil.copy(f, folder / f.name)
        out.append(folder)
    return out


def _eval(
    data: Path, model_dir: Path, out: Path, task: str = "blimp", cache_dir: Path | None = None, **options
) -> dict:
    from cdhpc.evals.run import EvalOptions, evaluate_task

    return evaluate_task(
        model_dir, task, data, out, options=EvalOptions(**{"batch_size": 4, **options}), cache_dir=cache_dir
    )


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.mark.parametrize(
    "task,scoring",
    [
        ("blimp", "official"),
        ("ewok", "official"),
        pytest.param("entity_tracking", "official", marks=pytest.mark.slow),
        pytest.param(
            "reading", "official", marks=pytest.mark.slow
        ),  # ~1.5 s: 208 rows, 3 checkpoint runs x 3
        pytest.param("eye_tracking", "official", marks=pytest.mark.slow),
        pytest.param("reading", "joint", marks=pytest.mark.slow),
    ],
)
def test_scores_are_identical_with_and_without_the_cache(checkpoints, data, tmp_path, task, scoring):
    """Every output file is byte-identical: no cache, a cold cache (built and written), the pack
    read back from disk by a fresh process (memo cleared), and from this process's memory."""
    from cdhpc.evals import packcache

    cache = tmp_path / "cache"

    def outputs(ckpt: Path, name: str, cache_dir: Path | None) -> dict[str, bytes]:
        _eval(data, ckpt, tmp_path / name, task, cache_dir, scoring=scoring)
        return _outputs(tmp_path / name)

    for i, ckpt in enumerate(checkpoints[:2]):
        plain = outputs(ckpt, f"plain{i}", None)
        if i == 0:
            packcache.clear_memo()
        cold = outputs(ckpt, f"cold{i}", cache)  # i == 1: from this process's memory
        packcache.clear_memo()
        disk = outputs(ckpt, f"disk{i}", cache)
        assert plain == cold == disk
    assert len(list(cache.glob("*.npz"))) == 1  # one pack for both checkpoints: same tokenizer
    assert not list(cache.glob(".*tmp"))  # written atomically: no temporary file left


def test_a_pack_round_trips_and_scores_as_the_plain_engine(checkpoints, data, tmp_path):
    """A pack written and read back is equal and scores exactly as `score_sequences` does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cdhpc.evals import get_task
    from cdhpc.evals.batches import prepare_pack, score_pack
    from cdhpc.evals.choice import item_requests, load_items
    from cdhpc.evals.engine import encode_requests, score_sequences
    from cdhpc.evals.packcache import _to_bytes, read_pack

    spec = get_task("ewok")
    items = load_items(spec, sorted((data / "full_eval" / "ewok_filtered").glob("*.jsonl")))
    tok = AutoTokenizer.from_pretrained(checkpoints[0])
    model = AutoModelForCausalLM.from_pretrained(checkpoints[0]).eval()
    pack = prepare_pack(*encode_requests(tok, item_requests(items)), batch_size=1, meta={"x": 1})
    path = tmp_path / "p.npz"
    path.write_bytes(_to_bytes(pack, {"k": 1}))
    back = read_pack(path, {"k": 1})
    assert back is not None and back.meta == {"x": 1} and back.n_requests == pack.n_requests
    assert all(np.array_equal(a, b) for a, b in zip(pack.arrays().values(), back.arrays().values()))
    assert len(pack.shapes) > 3  # several batches
    assert score_pack(model, back) == score_sequences(
        model, *encode_requests(tok, item_requests(items)), batch_size=1
    )


def test_a_broken_or_foreign_cache_file_is_rebuilt_never_used(checkpoints, data, tmp_path, caplog):
    """A truncated file, garbage, a whole file made for other key fields, and a valid file whose
    indices were altered are each logged, rebuilt and replaced; the scores stay the plain ones."""
    from cdhpc.evals import packcache

    cache = tmp_path / "cache"
    _eval(data, checkpoints[0], tmp_path / "plain")
    want = (tmp_path / "plain" / "predictions.jsonl").read_bytes()
    _eval(data, checkpoints[0], tmp_path / "first", cache_dir=cache)
    (path,) = cache.glob("*.npz")
    good = path.read_bytes()
    with np.load(path) as z:
        arrays = dict(z)
    arrays["member_req"] = arrays["member_req"] + 10**6  # out of range: would index past the scores
    altered = tmp_path / "altered.npz"
    np.savez(altered, **arrays)
    arrays["key"] = np.frombuffer(json.dumps({"other": 1}).encode(), dtype=np.uint8)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, **arrays)
    for damage, why in (
        (good[: len(good) // 2], "unreadable"),
        (b"not a zip file", "unreadable"),
        (foreign.read_bytes(), "other key fields"),
        (altered.read_bytes(), "out of range"),
    ):
        path.write_bytes(damage)
        packcache.clear_memo()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cdhpc"):
            _eval(data, checkpoints[0], tmp_path / "again", cache_dir=cache)
        assert f"pack cache {path}" in caplog.text and why in caplog.text and "rebuilt" in caplog.text
        assert (tmp_path / "again" / "predictions.jsonl").read_bytes() == want
        assert path.read_bytes() == good  # replaced by a good pack


def test_the_key_holds_everything_that_changes_the_pack(checkpoints, tmp_path):
    """Scoring rule, truncate, batch size, context, tokenizer bytes, data checksum, task version:
    each makes another key; the weights do not."""
    from cdhpc.evals.packcache import pack_fields, pack_key

    base = {
        "task": "blimp",
        "version": "v",
        "data_sha256": "d",
        "scoring": "official",
        "truncate": False,
        "batch_size": 64,
    }
    key = pack_key(pack_fields(base, checkpoints[0], 512, 64))
    assert pack_key(pack_fields(base, checkpoints[1], 512, 64)) == key  # other weights, same tokenizer
    for change in (
        {"scoring": "joint"},
        {"truncate": True},
        {"batch_size": 8},
        {"data_sha256": "e"},
        {"version": "w"},
    ):
        assert pack_key(pack_fields({**base, **change}, checkpoints[0], 512, 64)) != key
    assert pack_key(pack_fields(base, checkpoints[0], 256, 64)) != key
    assert pack_key(pack_fields(base, checkpoints[0], 512, 32)) != key
    other = tmp_path / "other"
    shutil.copytree(checkpoints[0], other)
    (other / "tokenizer.json").write_text(
        (other / "tokenizer.json").read_text().replace('"<|endoftext|>"', '"<|eot|>"')
    )
    assert pack_key(pack_fields(base, other, 512, 64)) != key
    assert pack_fields(base, tmp_path, 512, 64) is None  # no tokenizer files: nothing is cached


def test_aoa_packs_once_for_a_runs_checkpoints(checkpoints, data, tmp_path, caplog):
    """aoa scores every checkpoint of the run from one pack, with the cache's path and without."""
    from cdhpc.evals import packcache
    from cdhpc.evals.run import EvalOptions, evaluate_task

    aoa = data / "full_eval" / "aoa"
    aoa.mkdir(exist_ok=True)
    contexts = {
        w: [{"context": c} for c in ("The dog saw the", "Who is", "The cat sat on")]
        for w in ("man", "river", "dog", "cat", "mat")
    }
    (aoa / "cdi_childes.json").write_text(json.dumps(contexts))
    ages = list(range(16, 31))
    rows = [",".join(["word"] + [str(a) for a in ages])]
    rows += [
        ",".join([w] + [f"{min(1, (a - 15) / (4 + k)):.3f}" for a in ages]) for k, w in enumerate(contexts)
    ]
    (aoa / "cdi_human.csv").write_text("\n".join(rows) + "\n")
    run = checkpoints[0].parent
    plain = evaluate_task(run, "aoa", data, tmp_path / "plain", options=EvalOptions())
    packcache.clear_memo()
    with caplog.at_level(logging.INFO, logger="cdhpc"):
        cached = evaluate_task(
            run, "aoa", data, tmp_path / "cached", options=EvalOptions(), cache_dir=tmp_path / "cache"
        )
    assert "aoa: pack cache" in caplog.text and "2 read, 1 built" in caplog.text
    assert (tmp_path / "plain" / "surprisal.json").read_bytes() == (
        tmp_path / "cached" / "surprisal.json"
    ).read_bytes()
    assert plain["score"] == cached["score"] and len(list((tmp_path / "cache").glob("*.npz"))) == 1


def test_cli_takes_a_cache_dir(checkpoints, data, tmp_path, capsys):
    from cdhpc.evals.run import main_eval

    args = ["--model", str(checkpoints[0]), "--tasks", "blimp", "--data", str(data), "--batch-size", "4"]
    assert main_eval(args + ["--out", str(tmp_path / "a"), "--cache", str(tmp_path / "c")]) == 0
    assert main_eval(args + ["--out", str(tmp_path / "b")]) == 0
    assert len(list((tmp_path / "c").glob("*.npz"))) == 1
    assert _outputs(tmp_path / "a" / "blimp") == _outputs(tmp_path / "b" / "blimp")


def test_a_cached_pack_needs_no_tokenizer(checkpoints, data, tmp_path, monkeypatch):
    """With the pack in the cache, a checkpoint is scored without loading its tokenizer (the
    host work is the pack's), and scores as it does without the cache."""
    from cdhpc.evals import loading

    cache = tmp_path / "cache"
    _eval(data, checkpoints[0], tmp_path / "first", cache_dir=cache)
    _eval(data, checkpoints[1], tmp_path / "plain")

    def refuse(model_dir: Path) -> None:
        raise AssertionError(f"tokenizer of {model_dir} loaded")

    monkeypatch.setattr(loading, "load_tokenizer", refuse)
    _eval(data, checkpoints[1], tmp_path / "cached", cache_dir=cache)
    assert _outputs(tmp_path / "cached") == _outputs(tmp_path / "plain")
    with pytest.raises(AssertionError, match="tokenizer of"):
        _eval(data, checkpoints[1], tmp_path / "uncached")  # without the cache it is needed


def test_a_job_parses_the_data_once_and_again_when_it_changes(checkpoints, data, tmp_path, monkeypatch):
    """With a cache, checkpoints after the first reuse the parsed data of this process; an edited
    file (another checksum) is parsed again; without a cache every evaluation parses."""
    from cdhpc.evals import packcache, run

    calls = []
    parse = run._prepare
    monkeypatch.setattr(run, "_prepare", lambda *a: calls.append(1) or parse(*a))
    packcache.clear_memo()
    own = tmp_path / "data"
    shutil.copytree(data, own)
    for ckpt in checkpoints[:2]:
        _eval(own, ckpt, tmp_path / ckpt.name, cache_dir=tmp_path / "cache")
    assert len(calls) == 1
    first = sorted((own / "full_eval" / "blimp_filtered").glob("*.jsonl"))[0]
    first.write_text("".join(first.read_text().splitlines(keepends=True)[:-1]))
    _eval(own, checkpoints[0], tmp_path / "edited", cache_dir=tmp_path / "cache")
    assert len(calls) == 2
    _eval(own, checkpoints[0], tmp_path / "plain")
    _eval(own, checkpoints[0], tmp_path / "plain")
    assert len(calls) == 4


@pytest.mark.slow
def test_bench_eval_checkpoints_prints_one_json_line_with_both_figures():
    """The pack cache benchmark as users run it: one JSON line on stdout, the per-checkpoint
    seconds with and without the cache from this run, their ratio, identical outputs, and the
    sweep's batch size; no progress bars on stderr."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdhpc.bench",
            "eval",
            "--checkpoints",
            "2",
            "--pairs",
            "200",
            "--repeats",
            "1",
            "--preset",
            "cpu-small",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = out.stdout.splitlines()
    result = json.loads(line)
    assert result["bench"] == "eval-checkpoints" and result["checkpoints"] == 2 and result["pairs"] == 200
    assert result["identical_outputs"] is True and result["batch_size"] == 64
    per = result["uncached_s_per_checkpoint"], result["cached_s_per_checkpoint"]
    assert min(per) > 0 and result["ratio"] == pytest.approx(per[0] / per[1])
    assert "Loading weights" not in out.stderr
