"""The model builder, the MFU estimate and the DeepSpeed trainer on CPU (real DeepSpeed, gloo)."""

from __future__ import annotations

import json
import logging
import logging.handlers
import math
import os
import random
import socket
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from cdhpc.lm import data
from cdhpc.lm.model import PRESETS, ModelPreset, build_model, flops_per_token, llama_config, mfu
from cdhpc.lm.train import TrainSpec
from cdhpc.lm.train_engine import deepspeed_config, distributed_env, grad_accumulation, lr_at

REPO = Path(__file__).resolve().parents[1]
NOUNS, ADJS, VERBS = ["cat", "dog", "bird", "fish"], ["big", "small", "red"], ["sees", "likes", "chases"]


def _grammar_docs(n: int, seed: int) -> list[str]:
    """A tiny grammar: learnable word order (a model beats unigram perplexity on it quickly)."""
    rng = random.Random(seed)

    def sentence():
        return f"the {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)} ."

    return [" ".join(sentence() for _ in range(rng.randint(2, 5))) for _ in range(n)]


def grammar_corpus(root: Path, n_train: int = 400, n_test: int = 60) -> Path:
    """A tokenizer (tok/) and train/val token arrays (train_arr/, val_arr/) of the learnable
    grammar, under `root`: what the training tests (here, metrics, GPU) train on."""
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        (root / split).mkdir()
        (root / split / "grammar.txt").write_text("\n\n".join(_grammar_docs(n, seed)) + "\n")
    data.train_tokenizer(root / "train", root / "tok", vocab_size=64, min_frequency=1)
    data.encode_split(root / "tok", root / "train", root / "train_arr")
    data.encode_split(root / "tok", root / "test", root / "val_arr")
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return grammar_corpus(tmp_path_factory.mktemp("prepared"))


def _spec(**changes) -> TrainSpec:
    base = TrainSpec(
        preset="tiny-small",
        vocab_size=64,
        seed=7,
        steps=6,
        checkpoint_every=3,
        global_batch=8,
        micro_batch=4,
        seq_len=32,
        precision="fp32",
        warmup_steps=2,
        log_every=3,
        val_batches=2,
    )
    return replace(base, **changes)


def _paths(root: Path, out: str) -> dict:
    return {
        "tokenizer_dir": root / "tok",
        "train_array": root / "train_arr",
        "val_array": root / "val_arr",
        "synthetic_array": None,
        "out_dir": root / out,
    }


def test_lr_schedule_known_values():
    spec = _spec(lr=1e-3, min_lr=1e-4, warmup_steps=10, steps=110)
    assert lr_at(0, spec) == 0.0 and lr_at(5, spec) == pytest.approx(5e-4)
    assert lr_at(10, spec) == pytest.approx(1e-3)
    assert lr_at(60, spec) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half-way down the cosine
    assert lr_at(110, spec) == pytest.approx(1e-4) and lr_at(500, spec) == pytest.approx(1e-4)


def test_deepspeed_config_and_accumulation():
    spec = _spec(
        global_batch=256,
        micro_batch=16,
        precision="bf16",
        deepspeed={"zero_optimization": {"stage": 3}, "gradient_clipping": 0.5},
    )
    config = deepspeed_config(spec, world_size=4)
    assert config["gradient_accumulation_steps"] == 4 and config["train_batch_size"] == 256
    assert config["bf16"] == {"enabled": True} and config["gradient_clipping"] == 0.5
    assert config["zero_optimization"] == {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}
    assert deepspeed_config(_spec(), 1)["gradient_clipping"] == 1.0
    with pytest.raises(ValueError, match="micro_batch x world_size = 16 x 3"):
        grad_accumulation(spec, 3)
    with pytest.raises(ValueError, match="deepspeed.optimizer: not allowed"):
        deepspeed_config(_spec(deepspeed={"optimizer": {"type": "SGD"}}), 1)
    with pytest.raises(ValueError, match="precision='fp16'"):
        deepspeed_config(_spec(precision="fp16"), 1)


def test_bf16_accumulates_gradients_in_fp32_unless_told_otherwise():
    """DeepSpeed accumulates bf16 gradients in bf16 unless `data_types.grad_accum_dtype` says fp32,
    which it supports from ZeRO stage 1 up; stage 0 with bf16 is an error unless bf16 is chosen."""
    bf16 = {"precision": "bf16", "global_batch": 256, "micro_batch": 16}
    for stage in (1, 2, 3):
        config = deepspeed_config(_spec(**bf16, deepspeed={"zero_optimization": {"stage": stage}}), 1)
        assert config["data_types"] == {"grad_accum_dtype": "fp32"}
    opted = {"zero_optimization": {"stage": 0}, "data_types": {"grad_accum_dtype": "bf16"}}
    assert deepspeed_config(_spec(**bf16, deepspeed=opted), 1)["data_types"] == {"grad_accum_dtype": "bf16"}
    with pytest.raises(ValueError, match="stage 0: DeepSpeed would accumulate gradients in bf16"):
        deepspeed_config(_spec(**bf16), 1)
    with pytest.raises(ValueError, match="needs zero_optimization.stage 1, 2 or 3"):
        deepspeed_config(_spec(**bf16, deepspeed={"data_types": {"grad_accum_dtype": "fp32"}}), 1)
    with pytest.raises(ValueError, match="grad_accum_dtype='fp16': allowed values are fp32, bf16"):
        deepspeed_config(_spec(**bf16, deepspeed={"data_types": {"grad_accum_dtype": "fp16"}}), 1)
    assert "data_types" not in deepspeed_config(_spec(), 1)  # fp32: nothing to choose


def test_distributed_env_single_and_multi_process():
    assert distributed_env({}, 29511) == {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29511",
    }
    inherited = {"MASTER_PORT": "38703", "RANK": "0", "MASTER_ADDR": "127.0.0.1"}  # e.g. from a parent shell
    assert distributed_env(inherited, 29512)["MASTER_PORT"] == "29512"
    launched = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "n1", "MASTER_PORT": "5"}
    assert distributed_env(launched, 1) == {}
    with pytest.raises(RuntimeError, match="MASTER_ADDR, MASTER_PORT unset"):
        distributed_env({"RANK": "0", "WORLD_SIZE": "2"}, 1)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_param_counts_match_presets(name):
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):  # shapes only: no memory, no init time
        model = LlamaForCausalLM(llama_config(name, 32000))
    assert sum(p.numel() for p in model.parameters()) == PRESETS[name].n_params(32000)
    assert (
        model.config.tie_word_embeddings is False and model.config.num_key_value_heads == PRESETS[name].heads
    )


def test_build_model_is_seeded_and_leaves_global_rng_alone():
    import torch

    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("tiny-small", 64, seed=5)
    assert torch.equal(torch.rand(1), expected_next)
    b, c = build_model("tiny-small", 64, seed=5), build_model("tiny-small", 64, seed=6)
    assert torch.equal(a.lm_head.weight, b.lm_head.weight) and not torch.equal(
        a.lm_head.weight, c.lm_head.weight
    )
    assert (a.config.bos_token_id, a.config.eos_token_id, a.config.pad_token_id) == (1, 2, 3)
    assert a.config.max_position_embeddings == 128 and a.config.rope_parameters["rope_theta"] == 10000.0
    assert build_model("tiny-small", 64, seed=5, dtype=torch.bfloat16).lm_head.weight.dtype == torch.bfloat16


def test_flops_per_token_and_mfu_known_answer():
    # tiny-small, vocab 100: N = 144,192 params, minus the 6,400-entry input embedding = 137,792.
    # 6N = 826,752; attention 12 * L2 * H2 * Q32 * T128 = 196,608.
    assert PRESETS["tiny-small"].n_params(100) == 144_192
    assert flops_per_token("tiny-small", 100, 128) == 826_752 + 196_608
    assert mfu(1000.0, "tiny-small", 100, 128, 1.0e9) == pytest.approx(1.02336)


def _unigram_ppl(train: data.TokenArray, val: data.TokenArray, vocab: int) -> float:
    counts = np.bincount(np.asarray(train.tokens), minlength=vocab) + 1.0
    logp = np.log(counts / counts.sum())
    return float(np.exp(-logp[np.asarray(val.tokens)].mean()))


@pytest.mark.slow
def test_loss_goes_down_and_beats_unigram(prepared):
    from transformers import AutoModelForCausalLM

    logs: list[str] = []
    spec = _spec(steps=40, checkpoint_every=20, warmup_steps=5, lr=3e-3, log_every=5, val_batches=4)
    result = train_run(spec, prepared, "loss_run", logs)
    first, last = result["checkpoints"][0], result["checkpoints"][-1]
    assert [c["step"] for c in result["checkpoints"]] == [20, 40] and last["val_loss"] < first["val_loss"]
    losses = [float(line.split()[3]) for line in logs if line.startswith("step ")]
    assert len(losses) == 8 and losses[-1] < losses[0] - 1.0
    unigram = _unigram_ppl(
        data.TokenArray.open(prepared / "train_arr"), data.TokenArray.open(prepared / "val_arr"), 64
    )
    assert last["val_ppl"] < 0.8 * unigram, (last["val_ppl"], unigram)
    util = "mfu" if result["device"].startswith("cuda") else "matmul_utilisation"  # a CPU's is no MFU
    assert result["tokens"] == 40 * 8 * 32 and result["tokens_per_s"] > 0 and 0 < result[util] < 1
    mask = os.umask(0)
    os.umask(mask)
    for f in Path(first["path"]).iterdir():  # as the umask gives, at once (not only at the step's end)
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f
    model = AutoModelForCausalLM.from_pretrained(last["path"])  # a real HF directory, reloadable
    assert model.config.vocab_size == 64 and (Path(last["path"]) / "tokenizer.json").is_file()
    assert json.loads((Path(last["path"]) / "val.json").read_text())["val_loss"] == last["val_loss"]


def train_run(spec: TrainSpec, root: Path, out: str, logs: list | None = None, **kw) -> dict:
    from cdhpc.lm.train import train

    return train(spec, log=(logs.append if logs is not None else lambda _m: None), **_paths(root, out), **kw)


RESUME_CASES = {
    "fp32": {},
    "bf16-zero1": {"precision": "bf16", "deepspeed": {"zero_optimization": {"stage": 1}}},
}


@pytest.mark.slow
@pytest.mark.parametrize("case", RESUME_CASES)  # bf16-zero1: the paper's (BF16_Optimizer, fp32 state)
def test_resume_is_bit_identical(prepared, case):
    preset = ModelPreset(2, 64, 2, 256, context=128)  # a preset object, as jobs pass it
    spec = _spec(preset=preset, **RESUME_CASES[case])
    whole_dir, resumed_dir = prepared / f"whole-{case}", prepared / f"resumed-{case}"
    whole = train_run(spec, prepared, whole_dir.name)
    partial = train_run(spec, prepared, resumed_dir.name, stop_after=3)
    assert [c["step"] for c in partial["checkpoints"]] == [3] and partial["steps"] == 3
    logs: list[str] = []
    resumed = train_run(spec, prepared, resumed_dir.name, logs)
    assert "start_step=3" in logs[0]
    assert [p.name for p in (resumed_dir / "ds").glob("step_*")] == ["step_6"]  # latest only
    a = (whole_dir / "checkpoints/step_6/model.safetensors").read_bytes()
    b = (resumed_dir / "checkpoints/step_6/model.safetensors").read_bytes()
    assert a == b
    saved_spec = json.loads((resumed_dir / "checkpoints/step_6/val.json").read_text())["spec"]
    assert saved_spec["preset"] == {"layers": 2, "hidden": 64, "heads": 2, "mlp": 256, "context": 128}
    assert resumed["checkpoints"] == [
        {**c, "path": c["path"].replace(str(whole_dir), str(resumed_dir))} for c in whole["checkpoints"]
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_RANK_SCRIPT = """
import json, sys
from pathlib import Path
from cdhpc.lm.train import TrainSpec, train
spec = TrainSpec(**json.loads(sys.argv[1]))
paths = {k: (Path(v) if v else None) for k, v in json.loads(sys.argv[2]).items()}
result = train(spec, **paths)
print("RESULT " + json.dumps(result))
"""


@pytest.mark.slow
def test_two_process_data_parallel_matches_one_process(prepared):
    """2 ranks x micro 4 (ZeRO-2, gloo) see the same global batches as 1 rank x 2 accumulations."""
    spec = _spec(deepspeed={"zero_optimization": {"stage": 2}})
    paths = {k: str(v) if v else None for k, v in _paths(prepared, "ddp").items()}
    port, procs = _free_port(), []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _RANK_SCRIPT, json.dumps(asdict(spec)), json.dumps(paths)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[0][-3000:] + outputs[1][-3000:]
    result = json.loads(next(line for line in outputs[0].splitlines() if line.startswith("RESULT "))[7:])
    assert result["world_size"] == 2 and [c["step"] for c in result["checkpoints"]] == [3, 6]
    single = train_run(spec, prepared, "single")
    for dp, one in zip(result["checkpoints"], single["checkpoints"]):
        assert dp["val_loss"] == pytest.approx(one["val_loss"], rel=1e-4)
    progress = json.loads((prepared / "ddp" / "ds" / "progress.json").read_text())
    assert progress == {"step": 6, "world_size": 2, "zero_stage": 2}


@pytest.mark.slow
def test_bf16_mixed_synthetic_run(prepared, tmp_path, monkeypatch):
    """bf16 weights, fp32 accumulation (DeepSpeed's BF16_Optimizer, named in its INFO lines, which
    CDHPC_LOG_LEVEL=debug lets through its logger and its own stdout handler), and the exact
    synthetic share."""
    import deepspeed.utils
    import torch
    from safetensors.torch import load_file

    ds_log, seen = deepspeed.utils.logger, logging.handlers.BufferingHandler(10**6)  # keeps the records

    rng = np.random.default_rng(0)
    docs = [np.concatenate([[1], rng.integers(4, 64, 50), [2]]) for _ in range(40)]
    data.write_token_array(tmp_path / "syn", docs, 64, {"kind": "synthetic"})
    spec = _spec(
        precision="bf16",
        synthetic_share=0.3,
        steps=4,
        checkpoint_every=4,
        deepspeed={"zero_optimization": {"stage": 1}},
    )
    logs: list[str] = []
    monkeypatch.setenv("CDHPC_LOG_LEVEL", "debug")
    ds_log.addHandler(seen)
    try:
        result = _train_with_synthetic(spec, prepared, tmp_path / "syn", logs)
        assert [h.level for h in ds_log.handlers if h is not seen] == [logging.INFO]
    finally:
        ds_log.removeHandler(seen)
        for x in (ds_log, *ds_log.handlers):
            x.setLevel(logging.WARNING)
    assert "weights=bfloat16 accumulate_in=float32" in logs[0]  # DeepSpeed's default would be bf16
    assert "[Rank 0] DeepSpeed Final Optimizer = BF16_Optimizer" in [r.getMessage() for r in seen.buffer]
    assert result["realised_synthetic_share"] == 9 / 32  # floor(4 steps x 0.3 x 8 rows)
    state = load_file(Path(result["checkpoints"][0]["path"]) / "model.safetensors")
    assert state["lm_head.weight"].dtype == torch.bfloat16 and math.isfinite(
        result["checkpoints"][0]["val_loss"]
    )


def _train_with_synthetic(spec: TrainSpec, root: Path, synthetic: Path, logs: list[str]) -> dict:
    from cdhpc.lm.train import train

    return train(spec, log=logs.append, **{**_paths(root, "bf16"), "synthetic_array": synthetic})


@pytest.mark.slow
def test_bench_train_on_cpu_names_its_utilisation_as_the_metrics_do():
    """`python -m cdhpc.bench train` on a CPU: one JSON line with both rates and their ratio; the
    utilisation is `matmul_utilisation_*` (a measured matmul peak, not an MFU), never `mfu_*`."""
    out = subprocess.run(
        [sys.executable, "-m", "cdhpc.bench", "train", "--steps", "2", "--warmup", "1"]
        + ["--vocab-size", "1000", "--seq-len", "64"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["bench"] == "train" and result["device"] == "cpu"
    assert result["ratio"] == pytest.approx(result["ours"] / result["peer"])
    assert 0 < result["matmul_utilisation_ours"] < 1 and 0 < result["matmul_utilisation_peer"] < 1
    assert not any(k.startswith("mfu") for k in result)
