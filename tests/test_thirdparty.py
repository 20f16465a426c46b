"""The private third-party APIs cdhpc uses (cdhpc/base/thirdparty.py), checked against the installed
libraries: each test fails, naming the library's version and the private name, when an upgrade
removes or changes one. submitit and tokenizers are exercised for real here; DeepSpeed,
transformers and datasets take seconds to import, so the fast tests read their installed source
and the slow ones exercise the wrappers on real objects."""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
import textwrap
from importlib import metadata, util
from pathlib import Path
from types import SimpleNamespace

import pytest

from cdhpc.base import thirdparty
from cdhpc.base.thirdparty import ThirdPartyChanged, installed_version

REPO = Path(__file__).resolve().parents[1]


def gone(dist: str, name: str, where: str = "") -> str:
    """The failure message: which library, which version, which private name."""
    return (
        f"{dist} {installed_version(dist)} no longer has the private {name} that cdhpc/base/thirdparty.py "
        f"relies on{where}: adapt the wrapper, or keep the version in constraints.txt"
    )


def class_source(dist: str, relpath: str, *names: str) -> tuple[ast.ClassDef, Path]:
    """The AST of the class named one of `names` in the installed file `relpath` of `dist`
    (read, not imported: seconds saved)."""
    path = Path(metadata.distribution(dist).locate_file(relpath))
    assert path.is_file(), gone(dist, f"{relpath} (the module holding {names[0]})")
    tree = ast.parse(path.read_text())
    found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in names]
    assert found, gone(dist, f"class {' or '.join(names)}", f" in {path}")
    return found[0], path


def methods(node: ast.ClassDef, name: str) -> list[ast.FunctionDef]:
    return [n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == name]


@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM, signal.SIGCONT)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


# ----------------------------------------------------------------------------- submitit
def test_sbatch_parameter_defaults_lists_what_the_scheduler_sets():
    from cdhpc.config.sbatch_rules import OWN_PARAMETERS

    params = thirdparty.sbatch_parameter_defaults()
    missing = set(OWN_PARAMETERS) - set(params)
    assert not missing, gone("submitit", f"_get_default_parameters entries {sorted(missing)}")


def test_make_sbatch_string_renders_an_array_with_our_command(tmp_path):
    command = thirdparty.submitit_command(tmp_path)
    text = thirdparty.make_sbatch_string(
        command, tmp_path, job_name="cd-x", partition="gpu", map_count=3, array_parallelism=2
    )
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --array=0-2%2" in text, (
        gone("submitit", "_make_sbatch_string's #SBATCH rendering") + "\n" + text
    )
    assert command in text, gone("submitit", "_make_sbatch_string's command line") + "\n" + text


def test_submitit_command_is_what_the_executor_writes(tmp_path):
    import submitit

    executor = submitit.SlurmExecutor(folder=tmp_path)
    assert thirdparty.executor_command(executor) == thirdparty.submitit_command(executor.folder), gone(
        "submitit", "SlurmExecutor._submitit_command_str format"
    )
    assert util.find_spec(thirdparty.SUBMITIT_ENTRY) is not None, gone(
        "submitit", f"module {thirdparty.SUBMITIT_ENTRY}"
    )


def submitit_usr2_handler(tmp_path, monkeypatch, function, max_requeues: int, timeout_min: int):
    """The USR2 handler submitit installs in a local job (its JobEnvironment._handle_signals),
    for a job of `function` with `max_requeues` time-limit requeues and `timeout_min` minutes."""
    from submitit.core.utils import DelayedSubmission, JobPaths
    from submitit.local.local import LocalJobEnvironment

    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "1")
    monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", "0")
    delayed = DelayedSubmission(function)
    delayed.set_timeout(timeout_min, max_requeues)
    installed = {}
    env = LocalJobEnvironment()
    assert hasattr(env, "_handle_signals"), gone("submitit", "JobEnvironment._handle_signals")
    with pytest.MonkeyPatch.context() as patch:  # record the handlers instead of installing them
        patch.setattr(signal, "signal", lambda s, h: installed.__setitem__(s, h))
        env._handle_signals(JobPaths(tmp_path, job_id="1"), delayed)
    assert signal.SIGUSR2 in installed, gone("submitit", "USR2 handler of JobEnvironment._handle_signals")
    return installed[signal.SIGUSR2]


class Resumable:
    """A checkpointable job function, as jobs.StepJob is."""

    def __call__(self) -> None:
        pass

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def test_requeue_handler_finds_submitits_countdown(tmp_path, monkeypatch):
    handler = submitit_usr2_handler(tmp_path, monkeypatch, Resumable(), max_requeues=3, timeout_min=60)
    owner = thirdparty.requeue_handler(handler)
    assert owner is not None, gone("submitit", "SignalHandler bound as the USR2 handler")
    assert thirdparty.requeues_left(owner) == 3, gone(
        "submitit", "_delayed._timeout_countdown = max_num_timeout"
    )
    assert thirdparty.requeue_handler(signal.SIG_DFL) is None  # outside a submitit job


def test_submitit_ends_a_timed_out_job_at_countdown_zero_and_requeues_above(tmp_path, monkeypatch):
    """The rule cdhpc.base.jobsignals.run_past_last_requeue anticipates: timed out with countdown 0,
    submitit's handler ends the job; with a requeue left it requeues (exit)."""
    from submitit.core.utils import UncompletedJobError

    last = submitit_usr2_handler(tmp_path, monkeypatch, Resumable(), max_requeues=0, timeout_min=0)
    with pytest.raises(UncompletedJobError, match="too many times"):
        last(signal.SIGUSR2, None)
    more = submitit_usr2_handler(tmp_path, monkeypatch, Resumable(), max_requeues=1, timeout_min=0)
    with pytest.raises(SystemExit):
        more(signal.SIGUSR2, None)


def test_run_past_last_requeue_runs_on_only_when_no_requeue_is_left(tmp_path, monkeypatch, restore_signals):
    from cdhpc.base.jobsignals import run_past_last_requeue

    for requeues, expect_exit in ((0, False), (1, True)):
        handler = submitit_usr2_handler(
            tmp_path, monkeypatch, Resumable(), max_requeues=requeues, timeout_min=0
        )
        signal.signal(signal.SIGUSR2, handler)
        run_past_last_requeue()
        wrapped = signal.getsignal(signal.SIGUSR2)
        assert wrapped is not handler
        if expect_exit:
            with pytest.raises(SystemExit):
                wrapped(signal.SIGUSR2, None)
        else:
            wrapped(signal.SIGUSR2, None)  # runs on: no UncompletedJobError


def test_a_missing_countdown_fails_loudly(tmp_path, monkeypatch):
    handler = submitit_usr2_handler(tmp_path, monkeypatch, Resumable(), max_requeues=1, timeout_min=60)
    del handler.__self__._delayed._timeout_countdown
    with pytest.raises(
        ThirdPartyChanged, match=rf"submitit {installed_version('submitit')}: .*_timeout_countdown"
    ):
        thirdparty.requeue_handler(handler)


# ----------------------------------------------------------------------------- tokenizers
def test_bpe_tokenizer_is_the_inner_tokenizer():
    from tokenizers import SentencePieceBPETokenizer, Tokenizer

    bpe = SentencePieceBPETokenizer(unk_token="<unk>")
    core = thirdparty.bpe_tokenizer(bpe)
    assert isinstance(core, Tokenizer), gone("tokenizers", "BaseTokenizer._tokenizer")
    core.add_special_tokens(["<s>"])  # the same object: a change through it shows in the wrapper
    assert bpe.token_to_id("<s>") == core.token_to_id("<s>") == 0, gone(
        "tokenizers", "BaseTokenizer._tokenizer identity"
    )


# ----------------------------------------------------------------------------- sources of the heavy libraries
def test_deepspeed_engine_has_the_zero3_gather():
    node, path = class_source("deepspeed", "deepspeed/runtime/engine.py", "DeepSpeedEngine")
    found = methods(node, "_zero3_consolidated_16bit_state_dict")
    assert found, gone("deepspeed", "DeepSpeedEngine._zero3_consolidated_16bit_state_dict", f" ({path})")
    args = found[0].args
    assert len(args.args) - len(args.defaults) == 1, gone(
        "deepspeed", "_zero3_consolidated_16bit_state_dict(self) callable without arguments", f" ({path})"
    )


def test_transformers_config_has_the_attn_implementation_property():
    node, path = class_source(
        "transformers", "transformers/configuration_utils.py", "PreTrainedConfig", "PretrainedConfig"
    )  # the 4.x name
    decorators = {ast.unparse(d) for f in methods(node, "_attn_implementation") for d in f.decorator_list}
    assert {"property", "_attn_implementation.setter"} <= decorators, gone(
        "transformers", "PreTrainedConfig._attn_implementation property and setter", f" ({path})"
    )


def test_datasets_dataset_sets_its_fingerprint():
    node, path = class_source("datasets", "datasets/arrow_dataset.py", "Dataset")
    init = methods(node, "__init__")
    targets = {
        ast.unparse(t)
        for f in init
        for n in ast.walk(f)
        if isinstance(n, (ast.Assign, ast.AnnAssign))
        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
    }
    assert "self._fingerprint" in targets, gone(
        "datasets", "Dataset._fingerprint", f" (set in __init__, {path})"
    )


# ----------------------------------------------------------------------------- the wrappers' own checks
@pytest.mark.parametrize(
    "call, dist, name",
    [
        (
            lambda: thirdparty.zero3_state_dict(SimpleNamespace()),
            "deepspeed",
            "_zero3_consolidated_16bit_state_dict",
        ),
        (
            lambda: thirdparty.set_attn_implementation(SimpleNamespace(), "sdpa"),
            "transformers",
            "_attn_implementation",
        ),
        (lambda: thirdparty.bpe_tokenizer(SimpleNamespace(_tokenizer="x")), "tokenizers", "_tokenizer"),
        (lambda: thirdparty.dataset_fingerprint(SimpleNamespace()), "datasets", "_fingerprint"),
        (lambda: thirdparty.executor_command(SimpleNamespace()), "submitit", "_submitit_command_str"),
        (
            lambda: thirdparty.requeues_left(SimpleNamespace(_delayed=SimpleNamespace())),
            "submitit",
            "_timeout_countdown",
        ),
    ],
)
def test_a_missing_private_name_raises_naming_library_version_and_name(call, dist, name):
    """Stand-in objects (fakes) without the private name: the wrapper refuses, it does not guess."""
    with pytest.raises(ThirdPartyChanged, match=rf"^{dist} {installed_version(dist)}: private .*{name}"):
        call()


def test_importing_the_wrappers_imports_no_third_party_library():
    code = (
        "import sys, cdhpc.base.thirdparty; "
        "heavy = ('torch', 'transformers', 'deepspeed', 'datasets', 'tokenizers', 'submitit'); "
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ------------------------------------------------------------------------- slow: the heavy libraries for real
@pytest.mark.slow
def test_attn_implementation_reaches_the_model():
    from cdhpc.lm.model import build_model, llama_config

    config = llama_config("tiny-small", 64, attn_implementation="eager")
    assert config._attn_implementation == "eager", gone(
        "transformers", "PreTrainedConfig._attn_implementation"
    )
    model = build_model("tiny-small", 64, attn_implementation="eager", seed=0)
    assert model.config._attn_implementation == "eager", gone(
        "transformers", "_attn_implementation in the model"
    )


@pytest.mark.slow
def test_dataset_fingerprint_follows_the_content():
    import datasets

    a, b = datasets.Dataset.from_dict({"text": ["a"]}), datasets.Dataset.from_dict({"text": ["b"]})
    assert thirdparty.dataset_fingerprint(a) != thirdparty.dataset_fingerprint(b), gone(
        "datasets", "Dataset._fingerprint"
    )


ZERO3 = textwrap.dedent("""
    import torch, deepspeed
    from cdhpc.lm.train_engine import init_distributed
    from cdhpc.base.thirdparty import zero3_state_dict

    init_distributed()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    config = {"train_batch_size": 1, "zero_optimization": {"stage": 3}, "zero_allow_untested_optimizer": True,
              "optimizer": {"type": "SGD", "params": {"lr": 0.1}}}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    assert engine.zero_optimization_stage() == 3
    got = zero3_state_dict(engine)
    assert sorted(got) == sorted(want), sorted(got)
    assert all(torch.equal(got[k].float(), want[k].float()) for k in want), "gathered weights differ"
    print("ok")
""")


@pytest.mark.slow
def test_zero3_state_dict_gathers_the_full_weights(tmp_path):
    """A real one-rank ZeRO-3 engine on CPU (gloo), in its own process (torch.distributed state)."""
    out = subprocess.run([sys.executable, "-c", ZERO3], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (
        gone("deepspeed", "DeepSpeedEngine._zero3_consolidated_16bit_state_dict") + "\n" + out.stderr[-3000:]
    )
