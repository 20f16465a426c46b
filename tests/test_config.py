"""Malformed sweeps exit 2 with a message naming the key path, and leave nothing behind."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import pytest
import yaml

from cdhpc.config import ConfigError, dump_config, load_config
from cdhpc.ui.launch import main

ROOT = Path(__file__).resolve().parent.parent

BASE = {
    "name": "t",
    "workdir": "WORKDIR",
    "pretrain": {
        "model": "tiny",
        "steps": 200,
        "checkpoint_every": 100,
        "seeds": [1, 2],
        "global_batch": 16,
        "micro_batch": 16,
        "seq_len": 64,
    },
    "generation": {"new_tokens": 100},  # prompt + continuation fit the tiny preset's 128 positions
    "methods": {
        "baseline": {},
        "cd-early-100": {"decoding": {"mode": "cd"}, "amateur": {"kind": "early", "step": 100}},
    },
    "retrain": {"seeds": [1]},
}


def edit(path: str, value):
    """A case that sets (or, with value DELETE, removes) one dotted key of BASE."""

    def apply(d):
        *parents, last = path.split("/")
        for p in parents:
            d = d.setdefault(p, {})
        if value is DELETE:
            d.pop(last)
        else:
            d[last] = value

    return apply


DELETE = object()

# (case id, edit of BASE or raw YAML text, expected key path in the message, expected words)
CASES = [
    ("wrong-type", edit("pretrain/steps", "many"), "pretrain.steps", "valid integer"),
    ("unknown-top-key", edit("pretrian", {"steps": 3}), "pretrian", "did you mean 'pretrain'"),
    (
        "unknown-nested-key",
        edit("pretrain/checkpoint_evry", 5),
        "pretrain.checkpoint_evry",
        "did you mean 'checkpoint_every'",
    ),
    ("ratio-above-1", edit("retrain/mix", [1.5]), "retrain.mix.0", "less than or equal to 1"),
    ("ratio-below-0", edit("retrain/mix", [-0.1]), "retrain.mix.0", "greater than or equal to 0"),
    (
        "alpha-zero",
        edit("methods/cd-early-100/decoding", {"mode": "cd", "alpha": 0}),
        "methods.cd-early-100.decoding.alpha",
        "greater than 0",
    ),
    (
        "alpha-above-1",
        edit("methods/cd-early-100/decoding", {"mode": "cd", "alpha": 1.5}),
        "methods.cd-early-100.decoding.alpha",
        "less than or equal to 1",
    ),
    ("missing-name", edit("name", DELETE), "name", "required key is missing"),
    ("missing-methods", edit("methods", DELETE), "methods", "required key is missing"),
    ("unknown-task", edit("eval", {"tasks": ["blimp", "glue"]}), "eval.tasks", "unknown task 'glue'"),
    ("unknown-baseline-method", edit("stats", {"baseline": "basline"}), "stats.baseline", "unknown method"),
    ("yaml-syntax", "name: t\nworkdir: [unclosed\n", "", "YAML syntax error"),
    (
        "missing-path",
        edit("data", {"kind": "prepared", "corpus_dir": "/nonexistent/corpus"}),
        "data.corpus_dir",
        "path does not exist",
    ),
    ("duplicate-method", None, "methods.baseline", "duplicate key 'baseline'"),
    (
        "dangling-amateur-step",
        edit("methods/cd-early-100/amateur", {"kind": "early", "step": 150}),
        "methods.cd-early-100.amateur.step",
        "no checkpoint is saved at this step",
    ),
    ("unknown-preset", edit("pretrain/model", "llama-99"), "pretrain.model", "unknown model preset"),
    (
        "cd-without-amateur",
        edit("methods/cd-early-100/amateur", DELETE),
        "methods.cd-early-100.amateur",
        "required when decoding.mode is 'cd'",
    ),
    (
        "bad-mode",
        edit("methods/cd-early-100/decoding", {"mode": "contrastive"}),
        "methods.cd-early-100.decoding.mode",
        "'sample', 'vhead' or 'cd'",
    ),
    ("bad-executor", edit("executor", {"kind": "kubernetes"}), "executor.kind", "'local' or 'slurm'"),
    (
        "unknown-resource",
        edit("executor", {"resources": {"pretrain": {"gpus": 2}}}),
        "executor.resources.pretrain.gpus",
        "did you mean 'gpus_per_node'",
    ),
    (
        "unknown-stage",
        edit("executor", {"resources": {"trian": {}}}),
        "executor.resources",
        "unknown stage 'trian'",
    ),
    (
        "batch-not-multiple",
        edit("pretrain/global_batch", 20),
        "pretrain.global_batch",
        "multiple of pretrain.micro_batch",
    ),
    (
        "batch-not-multiple-of-ranks",
        edit("executor", {"resources": {"pretrain": {"tasks_per_node": 2}}}),
        "pretrain.global_batch",
        "x ranks = 16 x 2",
    ),
    (
        "missing-eval-dir",
        edit("eval", {"data_dir": "/nonexistent/evaluation_data"}),
        "eval.data_dir",
        "directory does not exist",
    ),
    (
        "top-p-above-1",
        edit("methods/cd-early-100/decoding", {"mode": "cd", "top_p": 1.5}),
        "methods.cd-early-100.decoding.top_p",
        "less than or equal to 1",
    ),
    (
        "fixed-good-without-seed",
        edit("select", {"good": {"rule": "fixed", "step": 100}}),
        "select.good.seed",
        "required when rule is 'fixed'",
    ),
    (
        "eval-step-not-saved",
        edit("eval", {"checkpoints": [100, 130]}),
        "eval.checkpoints.1",
        "no checkpoint is saved",
    ),
    ("second-baseline", edit("methods/real-only", {}), "methods.real-only", "second method without decoding"),
    (
        "bf16-accumulation-at-zero-0",
        edit("pretrain/deepspeed", {"zero_optimization": {"stage": 0}}),
        "pretrain.deepspeed",
        "DeepSpeed would accumulate gradients in bf16",
    ),
]


def write_case(tmp_path: Path, case) -> Path:
    path = tmp_path / "sweep.yaml"
    cid, change = case[0], case[1]
    if isinstance(change, str):
        path.write_text(change)
        return path
    data = copy.deepcopy(BASE)
    data["workdir"] = str(tmp_path / "work")
    if change is not None:
        change(data)
    text = yaml.safe_dump(data, sort_keys=False)
    if cid == "duplicate-method":  # a YAML mapping with the same method name twice
        text = text.replace("methods:\n", "methods:\n  baseline: {}\n", 1)
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_sweep_exits_2_naming_the_key(tmp_path, capsys, case):
    path = write_case(tmp_path, case)
    rc = main([str(path)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert str(path) in err
    assert f" {case[2]}" in err or case[2] == "", err
    assert case[3] in err, err
    assert not (tmp_path / "work").exists(), "an invalid sweep must not create its workdir"


def test_errors_carry_the_yaml_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        textwrap.dedent("""\
        name: t
        workdir: w
        pretrain:
          model: tiny
          checkpoint_evry: 5
        methods: {baseline: {}}
        """)
    )
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f"{path}:5: pretrain.checkpoint_evry" in str(e.value)


def test_all_errors_reported_at_once(tmp_path):
    path = write_case(tmp_path, ("x", edit("pretrain/steps", "many")))
    data = yaml.safe_load(path.read_text())
    data["retrain"]["mix"] = [2.0]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert len(e.value.issues) == 2


def test_overrides_are_typed_and_dotted(tmp_path):
    path = write_case(tmp_path, ("ok", None))
    cfg = load_config(
        path,
        [
            "pretrain.steps=300",
            "pretrain.seeds=[7, 8]",
            "methods.cd-early-100.decoding.top_k=50",
            "eval.set=fast",
            "pretrain.lr=2e-3",
        ],
    )
    assert cfg.pretrain.steps == 300 and cfg.pretrain.seeds == [7, 8]
    assert cfg.methods["cd-early-100"].decoding.top_k == 50
    assert cfg.eval.set == "fast" and cfg.pretrain.lr == 2e-3


def test_override_of_a_dotted_method_name(tmp_path):
    path = write_case(
        tmp_path,
        (
            "ok",
            edit(
                "methods/cd-drop-0.7",
                {"decoding": {"mode": "cd"}, "amateur": {"kind": "dropout", "dropout": 0.7}},
            ),
        ),
    )
    cfg = load_config(path, ["methods.cd-drop-0.7.amateur.dropout=0.5"])
    assert cfg.methods["cd-drop-0.7"].amateur.dropout == 0.5


def test_bad_override_names_the_override(tmp_path, capsys):
    path = write_case(tmp_path, ("ok", None))
    assert main([str(path), "pretrain.steps=abc"]) == 2
    err = capsys.readouterr().err
    assert "override 'pretrain.steps=abc'" in err and "pretrain.steps" in err
    assert main([str(path), "pretrain.steps"]) == 2
    assert "expected key=value" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_print_config_round_trips(tmp_path, capsys):
    path = write_case(tmp_path, ("ok", None))
    assert main([str(path), "--print-config", "methods.cd-early-100.decoding.tail=-20"]) == 0
    out = capsys.readouterr().out
    again = tmp_path / "resolved.yaml"
    again.write_text(out)
    assert load_config(again) == load_config(path, ["methods.cd-early-100.decoding.tail=-20"])
    assert not (tmp_path / "work").exists()


def test_repo_configs_validate():
    tiny = load_config(ROOT / "configs/tiny.yaml")
    assert tiny.executor.kind == "local"
    paper = load_config(ROOT / "configs/paper.yaml", allow_missing_paths=True)
    assert len(paper.methods) >= 26
    assert dump_config(paper)


def test_paper_config_without_data_is_an_error_for_a_real_launch():
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs/paper.yaml")
    assert "data.babylm_dir" in str(e.value)


def test_override_touches_one_path_even_through_yaml_aliases(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        textwrap.dedent("""\
        name: t
        workdir: w
        pretrain: {model: tiny, steps: 200, checkpoint_every: 100}
        generation: {new_tokens: 100}
        methods:
          baseline: {}
          a: {decoding: &cd {mode: cd}, amateur: {kind: early, step: 100}}
          b: {decoding: *cd, amateur: {kind: dropout, dropout: 0.5}}
        """)
    )
    cfg = load_config(path, ["methods.a.decoding.alpha=0.3"])
    assert cfg.methods["a"].decoding.alpha == 0.3 and cfg.methods["b"].decoding.alpha == 0.1
