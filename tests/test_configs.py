"""The shipped sweep configs: all validate, tiny.yaml exercises every method kind of paper.yaml, and
the ablations are slices of paper.yaml (same data/pretrain/eval blocks, the same method definitions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdhpc.config import SweepConfig, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ALL_CONFIGS = sorted([*CONFIGS.glob("*.yaml"), *(CONFIGS / "ablations").glob("*.yaml")])
ABLATIONS = sorted((CONFIGS / "ablations").glob("*.yaml"))
KINDS = {"baseline", "sample", "vhead", "cd+early", "cd+small", "cd+dropout", "truncation", "mixing"}


def method_kinds(cfg: SweepConfig) -> set[str]:
    """The kinds of method a sweep runs (see KINDS); `mixing` = some method retrains at >= 2 shares."""
    kinds = set()
    for method in cfg.methods.values():
        if method.is_baseline:
            kinds.add("baseline")
            continue
        d = method.decoding
        kinds.add(f"cd+{method.amateur.kind}" if d.mode == "cd" else d.mode)
        if d.top_k is not None or d.top_p is not None:
            kinds.add("truncation")
        if len(cfg.mix_for(method)) >= 2:
            kinds.add("mixing")
    return kinds


def test_the_expected_configs_exist():
    names = {str(p.relative_to(CONFIGS)) for p in ALL_CONFIGS}
    assert {
        "tiny.yaml",
        "paper.yaml",
        "ablations/amateur.yaml",
        "ablations/truncation.yaml",
        "ablations/mixing.yaml",
    } <= names


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_validates(path):
    cfg = load_config(path, allow_missing_paths=True)
    assert cfg.methods and cfg.stats.baseline in cfg.methods


def test_tiny_has_every_method_kind_and_paper_has_them_too():
    tiny = method_kinds(load_config(CONFIGS / "tiny.yaml", allow_missing_paths=True))
    paper = method_kinds(load_config(CONFIGS / "paper.yaml", allow_missing_paths=True))
    assert tiny == KINDS
    assert tiny <= paper


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.name)
def test_ablation_is_a_slice_of_paper(path):
    paper = load_config(CONFIGS / "paper.yaml", allow_missing_paths=True)
    cfg = load_config(path, allow_missing_paths=True)
    assert cfg.name != paper.name and cfg.workdir != paper.workdir
    skip = {"name", "workdir", "methods"}
    assert cfg.model_dump(exclude=skip) == paper.model_dump(
        exclude=skip
    )  # data, pretrain, eval, ... unchanged
    assert "baseline" in cfg.methods and 2 < len(cfg.methods) < len(paper.methods)
    for name, method in cfg.methods.items():
        assert name in paper.methods, f"{path.name}: method {name} is not in paper.yaml"
        assert method.model_dump(exclude={"mix"}) == paper.methods[name].model_dump(exclude={"mix"}), name
        assert set(cfg.mix_for(method)) <= set(paper.mix_for(paper.methods[name])), name


def test_ablations_cover_their_topic():
    kinds = {p.stem: method_kinds(load_config(p, allow_missing_paths=True)) for p in ABLATIONS}
    assert {"cd+early", "cd+small", "cd+dropout"} <= kinds["amateur"] and "truncation" not in kinds["amateur"]
    assert "truncation" in kinds["truncation"] and "mixing" not in kinds["truncation"]
    assert "mixing" in kinds["mixing"]


@pytest.mark.slow
@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.name)
def test_ablation_dry_run_exits_0(path, tmp_path, monkeypatch, capsys):
    from cdhpc.ui.launch import main

    monkeypatch.chdir(tmp_path)  # relative workdir and data paths resolve here: nothing is written
    assert main([str(path), "--dry-run"]) == 0
    assert "cd-early-500" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
