"""HF `datasets` interop: shards and the corpus load with `datasets.load_dataset`; data.babylm_dir
and data.tinystories take a `save_to_disk` dataset or a hub id in the local HF cache. Tests that
import `datasets` (about 2 s) are marked slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from cdhpc.config.hfdata import DataSourceError, hub_snapshot, source_kind
from cdhpc.lm.shards import SCHEMA, write_table_atomic

ROOT = Path(__file__).resolve().parent.parent
# the documented columns (cdhpc/lm/shards.py) and their element types
COLUMNS = {
    "prompt_index": "int64",
    "sample_index": "int32",
    "text": "string",
    "input_ids": "int32",
    "prompt_ids": "int32",
}


def test_source_kinds(tmp_path):
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    (tmp_path / "plain").mkdir()
    assert source_kind(tmp_path / "saved") == "saved" and source_kind(tmp_path / "plain") == "local"
    assert source_kind("roneneldan/TinyStories") == "hub" and source_kind("/no/such/dir/x") is None


def test_a_hub_id_not_in_the_cache_is_one_clear_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(DataSourceError) as e:
        hub_snapshot("someone/nothing-here", "data.tinystories")
    assert str(e.value).startswith(
        "data.tinystories='someone/nothing-here' is neither a local path nor a dataset "
        "in the local Hugging Face cache"
    )


def fake_hub_cache(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A hub cache entry as huggingface_hub lays it out (refs/main -> snapshots/<commit>/...)."""
    entry = cache / f"datasets--{repo.replace('/', '--')}"
    commit = "0" * 40
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    for name, data in files.items():
        (entry / "snapshots" / commit / name).parent.mkdir(parents=True, exist_ok=True)
        (entry / "snapshots" / commit / name).write_bytes(data)
    return entry / "snapshots" / commit


def test_a_cached_hub_id_resolves_to_its_snapshot_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = fake_hub_cache(tmp_path, "someone/stories", {"data/train.txt": b"a\n"})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert hub_snapshot("someone/stories", "data.tinystories") == snapshot


def stories(n: int, offset: int = 0) -> list[str]:
    return [f"Story {i + offset}. Tom saw a dog.\nThe dog ran home. It was happy." for i in range(n)]


def babylm_rows(n: int) -> list[dict]:
    return [
        {"text": f"Line one of doc {i}.\nLine two of doc {i}.", "source": s}
        for s in ("gutenberg", "simple_wiki", "open_subtitles")
        for i in range(n)
    ]


def save_datasets(root: Path) -> tuple[Path, Path]:
    import datasets

    ts = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": stories(20)}),
            "validation": datasets.Dataset.from_dict({"text": stories(3, 100)}),
        }
    )
    bl = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(babylm_rows(10)),
            "test": datasets.Dataset.from_list(babylm_rows(2)),
        }
    )
    ts.save_to_disk(str(root / "ts"))
    bl.save_to_disk(str(root / "bl"))
    return root / "bl", root / "ts"


@pytest.mark.slow
def test_shards_load_with_load_dataset_and_their_documented_columns(tmp_path):
    import datasets

    rows = {
        "prompt_index": [0, 0, 1],
        "sample_index": [0, 1, 0],
        "text": [["a b"], [], ["c", "d"]],
        "input_ids": [[5, 6], [7], [8, 9]],
        "prompt_ids": [[1, 4], [1, 4], [1, 3]],
    }
    for i in range(2):
        write_table_atomic(pa.Table.from_pydict(rows, schema=SCHEMA), tmp_path / f"gen-{i}" / "shard.parquet")
    ds = datasets.load_dataset(
        "parquet",
        data_files=str(tmp_path / "gen-*" / "shard.parquet"),
        split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    assert ds.column_names == list(COLUMNS)
    assert {k: getattr(v, "feature", v).dtype for k, v in ds.features.items()} == COLUMNS
    assert ds.num_rows == 6 and ds[2] == {k: v[2] for k, v in rows.items()}
    assert any((tmp_path / "hf-cache").iterdir())  # the Arrow cache went where we said


@pytest.mark.slow
def test_save_to_disk_sources_give_the_same_corpus_as_their_text(tmp_path):
    """materialize + build from a DatasetDict == build from the same documents as release files."""
    from cdhpc.config.sections import DataConfig
    from cdhpc.corpora.tinybabylm import build_tinybabylm
    from jobs.prepare import text_sources

    bl, ts = save_datasets(tmp_path)
    data = DataConfig(kind="tinybabylm", babylm_dir=bl, tinystories=ts)
    babylm, tinystories, provenance = text_sources(data, tmp_path / "sources")
    assert set(provenance) == {"babylm_dir", "tinystories"}
    text = tmp_path / "text"
    for folder, suffix, n in (("train_100M", "train", 10), ("test", "test", 2)):
        (text / folder).mkdir(parents=True)
        for s in ("gutenberg", "simple_wiki", "open_subtitles"):
            (text / folder / f"{s}.{suffix}").write_text(
                "".join(r["text"] + "\n\n" for r in babylm_rows(n) if r["source"] == s)
            )
    (text / "TinyStories-train.txt").write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories(20)))
    (text / "TinyStories-valid.txt").write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories(3, 100)))
    a = build_tinybabylm(babylm, tinystories, tmp_path / "a", chunk_words=(4, 8))
    b = build_tinybabylm(text, text, tmp_path / "b", chunk_words=(4, 8))
    assert a == b and a["corpus"]["train"]["gutenberg"]["docs"] > 0
    for f in sorted((tmp_path / "a").rglob("*.txt")):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()


@pytest.mark.slow
def test_a_sweep_whose_data_is_a_save_to_disk_dataset_runs_its_prepare_step(tmp_path):
    bl, ts = save_datasets(tmp_path)
    workdir = tmp_path / "work"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdhpc.launch",
            "configs/tiny.yaml",
            f"workdir={workdir}",
            "data.kind=tinybabylm",
            f"data.babylm_dir={bl}",
            f"data.tinystories={ts}",
            "data.chunk_words=[4, 8]",
            "eval.tasks=[perplexity]",
            "--until",
            "prepare",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, HF_HOME=str(tmp_path / "no-hf-home")),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    receipt = json.loads(next((workdir / "receipts" / "prepare").glob("*.json")).read_text())
    assert receipt["status"] == "ok" and set(receipt["metrics"]["sources"]) == {"babylm_dir", "tinystories"}
    corpus = next((workdir / "prepare").glob("*/corpus"))
    assert sorted(p.name for p in (corpus / "train").iterdir()) == [
        "gutenberg.txt",
        "open_subtitles.txt",
        "simple_wiki.txt",
        "tinystories.txt",
    ]
    assert not list((workdir / "prepare").glob("*/sources"))  # text copies and Arrow cache removed
    assert not (tmp_path / "no-hf-home").exists()  # nothing cached outside the workdir


@pytest.mark.slow
def test_the_tiny_sweeps_synthetic_and_real_corpora_load_with_datasets(tiny_local, tmp_path):
    import datasets

    workdir, _ = tiny_local
    receipts = [json.loads(p.read_text()) for p in (workdir / "receipts" / "generate").glob("*.json")]
    method = receipts[0]["spec"]["params"]["method"]
    mine = [r for r in receipts if r["spec"]["params"]["method"] == method]
    files = sorted(str(workdir / r["outputs"][0]["path"]) for r in mine)
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.column_names == list(COLUMNS) and ds.num_rows == sum(r["metrics"]["samples"] for r in mine)
    prepare = json.loads(next((workdir / "receipts" / "prepare").glob("*.json")).read_text())
    train = next((workdir / "prepare").glob("*/corpus/train"))
    docs = datasets.load_dataset(
        "text",
        data_files=str(train / "*.txt"),
        sample_by="paragraph",
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    train_counts = prepare["metrics"]["counts"]["corpus"]["train"]
    assert docs.num_rows == sum(c["docs"] for c in train_counts.values()) > 0


def test_eval_data_dir_takes_a_cached_hub_repo_and_refuses_a_saved_dataset(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from cdhpc.config import ConfigError, load_config

    snapshot = fake_hub_cache(
        tmp_path / "hub", "someone/evaldata", {"full_eval/blimp_filtered/x.jsonl": b"{}\n"}
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    sweep = ROOT / "configs" / "tiny.yaml"
    assert load_config(sweep, ["eval.data_dir=someone/evaldata"]).eval.data_dir == snapshot
    with pytest.raises(ConfigError) as e:
        load_config(sweep, ["eval.data_dir=someone/not-cached"])
    assert (
        "eval.data_dir = 'someone/not-cached': neither a local path nor a dataset in the local Hugging Face "
        "cache" in str(e.value)
    )
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    with pytest.raises(ConfigError) as e:
        load_config(sweep, [f"eval.data_dir={tmp_path / 'saved'}"])
    assert "is a save_to_disk dataset; the evaluation data is a folder of task files" in str(e.value)
