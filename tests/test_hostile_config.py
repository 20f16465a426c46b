"""Hostile and careless sweeps (issue #15): each defect found ends in a one-line ConfigError (exit 2)
that names the key, before anything is written; a seeded fuzz of configs/tiny.yaml finds no other
outcome (no traceback, no MemoryError, no hang, no workdir)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cdhpc.base.paths import inside
from cdhpc.config import ConfigError, load_config
from cdhpc.config.check import planned_steps
from cdhpc.config.yamlio import MAX_FILE_BYTES, MAX_NODES
from cdhpc.sweep.plan import StepSpec, plan_sweep
from cdhpc.ui.launch import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"


def tiny_text(workdir: str | Path) -> str:
    text = TINY.read_text()
    assert "workdir: runs/tiny\n" in text
    return text.replace("workdir: runs/tiny\n", f"workdir: {workdir}\n")


def sweep(tmp_path: Path, text: str | bytes | None = None, name: str = "sweep.yaml") -> Path:
    """A sweep file in tmp_path (tiny.yaml with workdir tmp_path/work by default)."""
    path = tmp_path / name
    text = tiny_text(tmp_path / "work") if text is None else text
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def error_of(path: Path, overrides: list[str] = ()) -> str:
    """The ConfigError's text; every issue is one line that starts with the file name."""
    with pytest.raises(ConfigError) as e:
        load_config(path, list(overrides))
    text = str(e.value)
    head, *issues = text.splitlines()
    assert str(path) in head and issues and all(line.startswith(f"  {path}") for line in issues), text
    return text


def launch(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cdhpc.launch", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_exit_2_naming(out: subprocess.CompletedProcess, path: Path, key: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith(f"invalid sweep {path} (1 error)"), out.stderr
    assert len(lines) == 2 and f": {key}" in lines[1], out.stderr


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- names and paths --------------------------------------------------------------------------

BAD_NAMES = ["../../../ESCAPED", "a/b", "..", ".", "", "a b", "a\nb", "x" * 65, ".hidden", "-x", "a\0b", "é"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_a_method_name_that_is_not_a_plain_name_is_an_error(tmp_path, name):
    text = tiny_text(tmp_path / "work").replace(
        "  no-contrast:\n", f"  {json.dumps(name)}:\n"
    )  # a YAML quoted key
    err = error_of(sweep(tmp_path, text))
    assert "not a valid name (1-64 characters: letters, digits, '.', '_', '+', '-'" in err, err
    assert f"= {name!r}: not a valid name" in err, err


def test_names_the_study_uses_are_valid(tmp_path):
    ok = ["cd-drop-0.7", "cd-early-500-top-p-0.95", "a+b", "A_1.x", "a..b", "x" * 64]
    methods = "".join(f"  {n}: {{decoding: {{mode: sample}}}}\n" for n in ok)
    text = tiny_text(tmp_path / "work").replace("  no-contrast:\n", methods + "  no-contrast:\n")
    assert set(ok) <= set(load_config(sweep(tmp_path, text)).methods)


def test_sweep_and_preset_names_follow_the_same_rule(tmp_path):
    assert "name = '../x': not a valid name" in error_of(sweep(tmp_path), ["name=../x"])
    text = tiny_text(tmp_path / "work") + "models:\n  'x/y': {layers: 1, hidden: 8, heads: 2, mlp: 8}\n"
    assert "models.x/y = 'x/y': not a valid name" in error_of(sweep(tmp_path, text))


@pytest.mark.slow
def test_path_traversal_through_a_method_name_exits_2_and_writes_nothing(tmp_path):
    """The issue's case: a method called ../../../ESCAPED wrote selection.json outside the workdir."""
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    text = tiny_text(deep / "work").replace("  no-contrast:\n", "  ../../../ESCAPED:\n")
    path = sweep(tmp_path, text)
    out = launch(tmp_path, path)
    assert_exit_2_naming(out, path, "methods.../../../ESCAPED = '../../../ESCAPED': not a valid name")
    assert files_under(tmp_path) == ["a", "a/b", "sweep.yaml"]


def test_inside_keeps_paths_under_the_root(tmp_path):
    assert inside(tmp_path, "evaluate", "x-12345678") == tmp_path / "evaluate" / "x-12345678"
    assert inside(tmp_path, "a/b") == tmp_path / "a" / "b"
    for parts in (("..", "x"), ("a", "../../x"), ("/etc",), ("a/../..",)):
        with pytest.raises(ValueError, match="leaves"):
            inside(tmp_path, *parts)
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(ValueError, match="leaves"):
        inside(tmp_path, "link", "x")


def test_a_step_directory_is_one_name_under_its_stage(tmp_path):
    spec = StepSpec("select", "cd-drop-0.5", "0123456789abcdef", {})
    assert spec.dirname == "select/cd-drop-0.5-01234567"
    assert spec.out_dir(tmp_path) == tmp_path / "select" / "cd-drop-0.5-01234567"
    for name in ("../../../ESCAPED", "a/b"):
        with pytest.raises(ValueError, match="not a single file name"):
            _ = StepSpec("select", name, "0123456789abcdef", {}).dirname


def test_run_names_of_different_origins_must_not_collide(tmp_path):
    """A baseline called x-q0.3 and a method x retrained at share 0.3 would both make run x-q0.3-s1."""
    text = tiny_text(tmp_path / "work").replace(
        "  baseline: {}\n", "  x-q0.3: {}\n  x: {decoding: {mode: sample}}\n"
    )
    text = text.replace("baseline: baseline", "baseline: x-q0.3")
    err = error_of(sweep(tmp_path, text), ["pretrain.seeds=[1]"])
    assert "methods.x: its run name 'x-q0.3-s1' is also a run name of methods.x-q0.3" in err


# --- YAML that would crash or hang the loader -------------------------------------------------


def alias_bomb(levels: int = 9) -> str:
    lines = ["x-bomb:", "  l0: &l0 [a, a, a, a, a, a, a, a, a]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


YAML_CASES = [
    ("alias-bomb", alias_bomb(), f"aliases expand this value to more than {MAX_NODES:,} YAML values"),
    ("self-alias-list", "x-self: &s [1, *s]\n", "an alias refers to the value that contains it"),
    ("self-alias-map", "x-self: &s {a: {b: *s}}\n", "an alias refers to the value that contains it"),
    ("deep-nesting", "x-deep: " + "[" * 500 + "]" * 500 + "\n", "nested deeper than 64 levels"),
    (
        "deep-through-aliases",
        "x-d:\n" + "".join(f"  d{i}: &d{i} [{f'*d{i - 1}' if i else 1}]\n" for i in range(80)),
        "aliases nest this value deeper than 64 levels",
    ),
    ("nul-character", "x: \0\n", "character '\\x00' is not allowed in YAML"),
]


@pytest.mark.parametrize("case, tail, words", YAML_CASES, ids=[c[0] for c in YAML_CASES])
def test_yaml_that_would_exhaust_the_loader_is_an_error_with_its_line(tmp_path, case, tail, words):
    base = tiny_text(tmp_path / "work")
    first_line = base.count("\n") + 1
    t = time.perf_counter()
    err = error_of(sweep(tmp_path, base + tail))
    assert time.perf_counter() - t < 2, "bounded: no expansion, no recursion"
    assert words in err, err
    line = int(err.splitlines()[1].split(":")[1])
    assert first_line <= line <= first_line + tail.count("\n"), err


def test_too_many_values_is_an_error_while_composing(tmp_path, monkeypatch):
    from cdhpc.config import yamlio as configio

    monkeypatch.setattr(configio, "MAX_NODES", 1000)
    err = error_of(sweep(tmp_path, tiny_text(tmp_path / "work") + "x-many: [" + "1, " * 1000 + "]\n"))
    assert "<top level>: more than 1,000 YAML values" in err, err


@pytest.mark.slow
def test_alias_bomb_through_launch_exits_2_without_memory_growth(tmp_path):
    path = sweep(tmp_path, tiny_text(tmp_path / "work") + alias_bomb(12))  # 9**12 values if expanded
    out = launch(tmp_path, path, timeout=30)
    assert_exit_2_naming(
        out, path, f"<top level>: aliases expand this value to more than {MAX_NODES:,} YAML values"
    )
    assert files_under(tmp_path) == ["sweep.yaml"]


def test_a_non_utf8_byte_is_an_error_with_its_line_and_column(tmp_path):
    blob = tiny_text(tmp_path / "work").encode().replace(b"seed: 0\n", b"seed: 0  # caf\xe9\n", 1)
    err = error_of(sweep(tmp_path, blob))
    assert f"{tmp_path / 'sweep.yaml'}:5: <top level>: not UTF-8: byte 0xe9 at column 15" in err, err


def test_an_oversized_file_is_refused_before_parsing(tmp_path):
    path = sweep(tmp_path, tiny_text(tmp_path / "work") + "# " + "x" * MAX_FILE_BYTES + "\n")
    assert f"a sweep file is at most {MAX_FILE_BYTES:,} bytes" in error_of(path)


# --- values that passed validation and failed later -------------------------------------------


@pytest.mark.slow
def test_duplicate_retrain_seeds_exit_2_before_the_workdir_exists(tmp_path):
    """Was: sqlite3.IntegrityError after the workdir had been created."""
    path = sweep(tmp_path)
    out = launch(tmp_path, path, "retrain.seeds=[1, 1]")
    assert_exit_2_naming(
        out, path, "retrain.seeds = [1, 1]: seeds must be distinct; 1 appears more than once"
    )
    assert files_under(tmp_path) == ["sweep.yaml"]


@pytest.mark.parametrize(
    "override, key, words",
    [
        (
            "retrain.mix=[0.3, 0.3]",
            "retrain.mix",
            "mix shares (as run names show them) must be distinct; 0.3",
        ),
        ("methods.cd-early-60.mix=[0.3, 0.30000001]", "methods.cd-early-60.mix", "must be distinct; 0.3"),
        ("pretrain.seeds=[2, 2]", "pretrain.seeds", "seeds must be distinct"),
        ("eval.checkpoints=[60, 60]", "eval.checkpoints", "checkpoint steps must be distinct; 60"),
        ("stats.tasks=[blimp, blimp]", "stats.tasks", "tasks must be distinct"),
    ],
)
def test_repeated_mix_ratios_seeds_and_steps_are_errors(tmp_path, override, key, words):
    err = error_of(sweep(tmp_path), [override])
    assert f"(override {override!r}): {key}" in err and words in err, err


def test_a_workdir_that_is_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    path = sweep(tmp_path)
    assert main([str(path), f"workdir={tmp_path / 'afile'}"]) == 2
    assert f"workdir = '{tmp_path / 'afile'}': exists and is not a directory" in capsys.readouterr().err
    err = error_of(path, [f"workdir={tmp_path / 'afile' / 'sub'}"])
    assert f"cannot be created: {tmp_path / 'afile'} is not a directory" in err


@pytest.mark.parametrize(
    "override, key, words",
    [
        (
            "pretrain.steps=1000000000000000000000000000000",
            "pretrain.steps",
            "less than or equal to 100000000",
        ),
        ("generation.shards=10000000", "generation.shards", "less than or equal to 100000"),
        (
            "generation.total_tokens=1000000000000000",
            "generation.total_tokens",
            "less than or equal to 100000000000",
        ),
        ("pretrain.checkpoint_every=1", "pretrain.checkpoint_every", None),
    ],
)
def test_sizes_that_exhausted_memory_or_time_are_bounded(tmp_path, override, key, words):
    overrides = [override] + (["pretrain.steps=100000000"] if "checkpoint_every" in override else [])
    t = time.perf_counter()
    err = error_of(sweep(tmp_path), overrides)
    assert time.perf_counter() - t < 2
    assert f"(override {override!r}): {key} = " in err, err
    if words is None:
        assert "100,000,000 checkpoints per run; at most 1,000 (checkpoint_every >= 100,000)" in err, err
    else:
        assert words in err, err


def test_more_shards_than_prompts_is_an_error(tmp_path):
    """tiny: 24,576 tokens / (2 continuations x 64 new tokens) = 192 prompts: 1,000 shards were 808 empty
    jobs."""
    err = error_of(sweep(tmp_path), ["generation.shards=1000"])
    assert (
        "(override 'generation.shards=1000'): generation.shards = 1000: more shards than prompts: "
        "total_tokens / (continuations x new_tokens) = 192 prompts; shards <= 192"
    ) in err, err
    assert len(err.splitlines()) == 2, "reported once at the top-level key, not once per method"


def test_the_whole_sweep_is_bounded(tmp_path, monkeypatch):
    from cdhpc.config import check as configcheck

    assert configcheck.MAX_PLANNED_STEPS == 500_000  # 10x paper.yaml
    monkeypatch.setattr(configcheck, "MAX_PLANNED_STEPS", 300)
    err = error_of(
        sweep(tmp_path), ["retrain.seeds=[1, 2]"]
    )  # tiny: 226 steps, 380 with a second retrain seed
    assert (
        "<top level>: the sweep plans 380 steps (evaluate 336, pretrain 17, generate 12); at most 300: fewer "
        "seeds, shares, checkpoints, tasks or shards, or split it into several sweeps"
    ) in err, err


@pytest.mark.parametrize(
    "override",
    [
        "pretrain.lr=.inf",
        "pretrain.min_lr=.nan",
        "pretrain.weight_decay=.inf",
        "pretrain.betas=[0.9, .nan]",
        "methods.cd-small.decoding.temperature=.nan",
        "methods.cd-small.decoding.amateur_temperature=.inf",
        "methods.cd-small.decoding.lambda=.inf",
        "methods.cd-small.decoding.alpha=.nan",
        "methods.cd-small.decoding.eps=.inf",
        "retrain.mix=[.nan]",
        "executor.resources.pretrain.mem_gb=.inf",
        "executor.poll_s=.nan",
        "pretrain.deepspeed.gradient_clipping=.nan",
        "data.seed_fraction=.nan",
    ],
)
def test_inf_and_nan_are_errors_wherever_a_float_is_accepted(tmp_path, override):
    err = error_of(sweep(tmp_path), [override])
    key = override.split("=")[0]
    assert f"(override {override!r}): {key}" in err and "finite number" in err, err


def test_minus_inf_tail_is_still_accepted(tmp_path):
    cfg = load_config(sweep(tmp_path), ["methods.cd-small.decoding.tail=-.inf"])
    assert cfg.methods["cd-small"].decoding.tail == -math.inf
    assert "tail must be -inf or a finite number" in error_of(
        sweep(tmp_path), ["methods.cd-small.decoding.tail=.inf"]
    )


def test_prompt_and_new_tokens_must_fit_the_models_positions(tmp_path):
    """Was: generate failed after pretraining, and was retried."""
    err = error_of(sweep(tmp_path), ["generation.new_tokens=200"])
    assert (
        "generation.new_tokens = 200: prompt_tokens + new_tokens = 8 + 200 positions; pretrain.model 'tiny' "
        "has 128 (new_tokens <= 120)"
    ) in err, err
    short = "models:\n  tiny-short: {layers: 2, hidden: 64, heads: 2, mlp: 256, context: 32}\n"
    text = tiny_text(tmp_path / "work") + short
    err = error_of(sweep(tmp_path, text), ["methods.cd-small.amateur.model=tiny-short"])
    assert (
        "generation.new_tokens = 64: prompt_tokens + new_tokens = 8 + 64 positions; "
        "methods.cd-small.amateur.model 'tiny-short' has 32 (new_tokens <= 24)"
    ) in err, err


@pytest.mark.parametrize(
    "override, words",
    [
        ("seed=9223372036854775808", "less than 9223372036854775808"),
        ("pretrain.seeds=[1, 18446744073709551616]", "less than 9223372036854775808"),
        ("retrain.seeds=[-1]", "greater than or equal to 0"),
        ("stats.seed=-5", "greater than or equal to 0"),
    ],
)
def test_seeds_fit_a_signed_64_bit_integer(tmp_path, override, words):
    assert words in error_of(sweep(tmp_path), [override])


def test_the_largest_seed_is_accepted(tmp_path):
    assert load_config(sweep(tmp_path), [f"seed={2**63 - 1}"]).seed == 2**63 - 1


# --- overrides --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, words",
    [
        ("a.b=", "a.b: empty value; give one (key=null for null"),
        ("pretrain.steps=", "pretrain.steps: empty value"),
        ("pretrain..steps=3", "pretrain..steps: empty key between dots"),
        (".steps=3", ".steps: empty key between dots"),
        ("pretrian.steps=3", "pretrian: unknown key; did you mean 'pretrain'?"),
        ("pretrain.stpes=3", "pretrain.stpes: unknown key; did you mean 'steps'?"),
        ("name.x=3", "name.x: cannot set: name is not a mapping"),
        ("pretrain.steps=" + "[" * 100 + "]" * 100, "nested deeper than 64 levels"),
    ],
    ids=lambda v: v[:40] if isinstance(v, str) else None,
)
def test_override_errors_name_the_override_as_typed_not_a_file_line(tmp_path, override, words):
    err = error_of(sweep(tmp_path), [override])
    issue = err.splitlines()[1]
    assert issue.startswith(f"  {tmp_path / 'sweep.yaml'} (override {override!r}): "), err
    assert words in issue, err


def test_an_empty_override_through_launch_names_it(tmp_path, capsys):
    path = sweep(tmp_path)
    assert main([str(path), "a.b="]) == 2
    err = capsys.readouterr().err
    assert f"{path} (override 'a.b='): a.b: empty value" in err and f"{path}:" not in err
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["eval.checkpoints=final", "retrain.seeds=[1, 2]"],
        ["eval.checkpoints=all", "methods.cd-small.amateur.seed=2", "retrain.mix=[0, 1]"],
    ],
)
def test_planned_steps_counts_what_the_planner_makes(tmp_path, overrides):
    """The size bound counts steps without making them; it must agree with plan_sweep."""
    cfg = load_config(sweep(tmp_path), overrides)
    stages = [s.stage for s in plan_sweep(cfg).steps]
    assert planned_steps(cfg) == {stage: stages.count(stage) for stage in planned_steps(cfg)}


@pytest.mark.slow
def test_planned_steps_counts_the_shipped_sweeps():
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        cfg = load_config(path, allow_missing_paths=True)
        stages = [s.stage for s in plan_sweep(cfg).steps]
        assert planned_steps(cfg) == {stage: stages.count(stage) for stage in planned_steps(cfg)}, path


# --- fuzz: 200 seeded mutations of configs/tiny.yaml ------------------------------------------

HOSTILE = ["../../../ESCAPED", "a/b", "..", "a\nb", "é☃𝄞", "", " ", "x" * 300, "-x", "a b", "\t", "%j"]
VALUES = [
    0,
    -1,
    1,
    2**63,
    2**64,
    10**30,
    -(10**30),
    1.5,
    -0.5,
    1e-300,
    math.inf,
    -math.inf,
    math.nan,
    None,
    True,
    False,
    "",
    "x" * 5000,
    "many",
    "1e400",
    [],
    {},
    [1, 2],
    [[[]]],
    {"a": 1},
    *HOSTILE,
]


def _key_paths(node, prefix=()):
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out += _key_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append(prefix + (i,))
            out += _key_paths(v, prefix + (i,))
    return out


def _parent(data, loc):
    for part in loc[:-1]:
        data = data[part]
    return data


def _typo(rng: random.Random, key: str) -> str:
    i = rng.randrange(len(key)) if key else 0
    return (
        rng.choice([key[:i] + key[i + 1 :], key[:i] + rng.choice("xz_.") + key[i:], key.upper(), key + "s"])
        or "k"
    )


def _deep(rng: random.Random):
    value = 1
    for _ in range(rng.choice([10, 40, 70, 200])):
        value = [value]
    return value


def mutate(rng: random.Random, base: dict, text: str) -> tuple[str, str | bytes]:
    """(kind, file content): one random change of keys, values or YAML structure."""
    kind = rng.choice(
        [
            "value",
            "value",
            "value",
            "typo",
            "delete",
            "hostile-key",
            "hostile-method",
            "list-for-map",
            "nest",
            "duplicate-line",
            "truncate",
            "bad-byte",
            "alias-bomb",
            "self-alias",
            "alias-merge",
        ]
    )
    data = copy.deepcopy(base)
    locs = _key_paths(data)
    loc = rng.choice(locs)
    parent = _parent(data, loc)
    if kind == "value":
        parent[loc[-1]] = copy.deepcopy(rng.choice(VALUES))
    elif kind == "typo" and isinstance(loc[-1], str):
        parent[_typo(rng, loc[-1])] = parent.pop(loc[-1])
    elif kind == "delete":
        parent.pop(loc[-1])
    elif kind == "hostile-key" and isinstance(parent, dict):
        parent[rng.choice(HOSTILE)] = parent.pop(loc[-1])
    elif kind == "hostile-method":
        methods = data["methods"]
        methods[rng.choice(HOSTILE)] = methods.pop(rng.choice(list(methods)))
    elif kind == "list-for-map":
        maps = [m for m in locs if isinstance(_parent(data, m)[m[-1]], dict)]
        target = rng.choice(maps)
        _parent(data, target)[target[-1]] = list(_parent(data, target)[target[-1]].values())
    elif kind == "nest":
        parent[loc[-1]] = _deep(rng)
    dumped = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    lines = text.splitlines(keepends=True)
    if kind == "duplicate-line":
        i = rng.randrange(len(lines))
        return kind, "".join(lines[: i + 1] + lines[i:])
    if kind == "truncate":
        return kind, text[: rng.randrange(len(text))]
    if kind == "bad-byte":
        i = rng.randrange(len(text))
        return kind, text[:i].encode() + rng.choice([b"\xff", b"\xc3", b"\x00", b"\xe9"]) + text[i:].encode()
    if kind == "alias-bomb":
        return kind, text + alias_bomb(rng.choice([6, 9, 20]))
    if kind == "self-alias":
        return kind, text.replace("decoding: &cd {", "decoding: &cd {self: *cd, ", 1)
    if kind == "alias-merge":
        return kind, text + "x-a: &xa {steps: 3}\nx-b: &xb {<<: [*xa, *xa, *xa], seeds: [1]}\n"
    return kind, dumped


def mutations(n: int, workdir: str = "w") -> list[tuple[str, str | bytes]]:
    text = tiny_text(workdir)
    base = yaml.safe_load(text)
    rng = random.Random(15)
    return [mutate(rng, base, text) for _ in range(n)]


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    def fire(signum, frame):
        raise _Timeout(f"more than {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def dry_run_in_process(path: Path) -> tuple[int, str]:
    """What `python -m cdhpc.launch PATH --dry-run` does, in this process: (exit code, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(path), "--dry-run"])
    return rc, err.getvalue()


def check_outcome(path: Path, rc: int, err: str, what: str) -> None:
    assert rc in (0, 2), f"{what}: exit {rc}\n{err}"
    assert "Traceback" not in err, f"{what}\n{err}"
    if rc == 2:
        first = next(line for line in err.splitlines() if line.strip())
        assert str(path) in first or first.startswith("workdir "), f"{what}: {first}"


def check_plan(path: Path, what: str) -> None:
    """A sweep that loads plans steps with distinct keys and names, each directory inside the workdir."""
    cfg = load_config(path, allow_missing_paths=True)
    steps = plan_sweep(cfg).steps
    assert len({s.key for s in steps}) == len(steps), what
    assert len({(s.stage, s.name) for s in steps}) == len(steps), what
    for s in steps:
        s.out_dir(cfg.workdir)  # raises ValueError when a name would leave the workdir


def run_fuzz(tmp_path: Path, monkeypatch, n: int) -> dict[str, int]:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # relative workdirs (w, ../../../ESCAPED) land here, or rather would
    outcomes = {0: 0, 2: 0}
    for i, (kind, content) in enumerate(mutations(n)):
        path = sweep(tmp_path, content, f"m{i:03d}.yaml")
        what = f"mutation {i} ({kind}): {path}"
        t = time.perf_counter()
        with time_limit(5):
            rc, err = dry_run_in_process(path)
        assert time.perf_counter() - t < 5, what
        check_outcome(path, rc, err, what)
        if rc == 0:
            check_plan(path, what)
        outcomes[rc] += 1
        assert list(cwd.iterdir()) == [], f"{what} wrote {list(cwd.iterdir())}"
        path.unlink()
    assert files_under(tmp_path) == ["cwd"]
    return outcomes


def test_fuzz_30_mutations_of_tiny_yaml(tmp_path, monkeypatch):
    outcomes = run_fuzz(tmp_path, monkeypatch, 30)
    assert outcomes[0] and outcomes[2], outcomes


@pytest.mark.slow
def test_fuzz_200_mutations_of_tiny_yaml(tmp_path, monkeypatch):
    outcomes = run_fuzz(tmp_path, monkeypatch, 200)
    assert outcomes[0] >= 20 and outcomes[2] >= 100, outcomes


@pytest.mark.slow
def test_fuzz_mutations_through_the_real_launcher(tmp_path):
    """Ten mutations of different kinds through `python -m cdhpc.launch ... --dry-run`, compared
    with the in-process outcome."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    chosen, kinds = [], set()
    for i, (kind, content) in enumerate(mutations(200)):
        if kind not in kinds and len(chosen) < 10:
            kinds.add(kind)
            chosen.append((i, kind, content))
    for i, kind, content in chosen:
        path = sweep(tmp_path, content, f"m{i:03d}.yaml")
        out = launch(cwd, path, "--dry-run", timeout=30)
        check_outcome(path, out.returncode, out.stderr, f"mutation {i} ({kind})")
        assert list(cwd.iterdir()) == []
