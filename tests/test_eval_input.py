"""Evaluation input that is not what the tasks expect fails early, naming file, line and field:
size limits (read in bounded pieces), values that are not text, bytes that are not UTF-8,
sentences longer than the model's context (or cut with `truncate`), corrupt model files."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import subprocess
import time
import tracemalloc
from pathlib import Path

import pytest

from cdhpc.evals.data import MAX_FILE_BYTES, EvalDataError, read_csv, read_records, read_text

GOLDEN_MODEL = Path(__file__).parent / "golden" / "babylm2025" / "model"
CONTEXT = 16  # positions of the tiny model below
BLIMP = {
    "sentence_good": "The cat sat on the mat.",
    "sentence_bad": "The cat sat on mat the.",
    "field": "syntax",
    "linguistics_term": "order",
    "UID": "word_order",
}
LONG = "The dog barked at the man who walked by the river and the cat sat on the mat all day long."


def _lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _blimp_data(root: Path, records: list[dict]) -> Path:
    _lines(root / "full_eval" / "blimp_filtered" / "word_order.jsonl", [json.dumps(r) for r in records])
    return root


@pytest.fixture(scope="module")
def short_model(tmp_path_factory) -> Path:
    """The golden tiny Llama (tokenizer without BOS) told its context is 16 positions."""
    out = tmp_path_factory.mktemp("short") / "model"
    shutil.copytree(GOLDEN_MODEL, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "max_position_embeddings": CONTEXT}))
    return out


# ----------------------------------------------------------------------------- sizes
def test_a_long_jsonl_line_fails_fast_without_being_held_whole(tmp_path):
    line = json.dumps({**BLIMP, "sentence_good": "x" * 3_000_000})
    path = _lines(tmp_path / "word_order.jsonl", [json.dumps(BLIMP), line, json.dumps(BLIMP)])
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(
            EvalDataError, match=r"word_order\.jsonl:2: line longer than 1,048,576 characters"
        ):
            read_records(path, ("sentence_good",))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 3_000_000  # less than the line itself: it was read in bounded pieces


def test_a_long_csv_field_and_a_huge_file_fail(tmp_path):
    path = _lines(tmp_path / "reading_data.csv", ["item,word", '"' + "x " * 600_000 + '",the'])
    with pytest.raises(EvalDataError, match=r"reading_data\.csv:2: line longer than"):
        read_csv(path, ("item", "word"))
    quoted = _lines(tmp_path / "quoted.csv", ["item,word", '"' + "x\n" * 600_000 + '",the'])
    with pytest.raises(EvalDataError, match=r"quoted\.csv:\d+: bad CSV \(field larger than field limit"):
        read_csv(quoted, ("item", "word"))
    huge = tmp_path / "huge.jsonl"
    with huge.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: nothing is written or read
    with pytest.raises(
        EvalDataError, match=r"huge\.jsonl: 2,147,483,649 bytes; evaluation files are limited"
    ):
        read_records(huge, ())


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize(
    "task,record,field,got",
    [
        ("blimp", {**BLIMP, "sentence_good": None}, "sentence_good", "null"),
        ("blimp_supplement", {"sentence_good": "a b", "sentence_bad": 7}, "sentence_bad", "number 7"),
        (
            "ewok",
            {"Domain": "d", "Context1": "c", "Context2": "c", "Target1": ["a"], "Target2": "t"},
            "Target1",
            r'array \["a"\]',
        ),
        (
            "entity_tracking",
            {"input_prefix": {"a": 1}, "options": ["x", "y"], "numops": 0},
            "input_prefix",
            "object",
        ),
        ("wug", {"sentences": None, "ratio": 0.5}, "sentences", "null"),
    ],
)
def test_values_that_are_not_text_fail_naming_file_line_and_field(tmp_path, task, record, field, got):
    from cdhpc.evals import get_task
    from cdhpc.evals.choice import load_items

    spec = get_task(task)
    name = "regular.jsonl" if task == "entity_tracking" else "items.jsonl"
    good = {**record, field: "a\tb" if field == "sentences" else "text"}
    path = _lines(tmp_path / name, [json.dumps(good), "", json.dumps(record)])  # line 3: record 2
    with pytest.raises(
        EvalDataError,
        match=rf"{name}:3: field '{field}' must be a string \(the text "
        rf"scored\), got {got}",
    ):
        load_items(spec, [path])


def test_option_items_that_are_not_text_fail(tmp_path):
    from cdhpc.evals import get_task
    from cdhpc.evals.choice import load_items

    path = _lines(
        tmp_path / "regular.jsonl", [json.dumps({"input_prefix": "p", "options": ["a", None], "numops": 0})]
    )
    with pytest.raises(
        EvalDataError,
        match=r"regular\.jsonl: record 1: field 'options' must be a list "
        r"of strings.*\(line 1\)",
    ):
        load_items(get_task("entity_tracking"), [path])


# ----------------------------------------------------------------------------- bytes
def test_undecodable_bytes_name_the_file_and_line(tmp_path):
    jsonl = tmp_path / "word_order.jsonl"
    jsonl.write_bytes(json.dumps(BLIMP).encode() + b"\n\n" + b'{"sentence_good": "caf\xe9"}\n')
    with pytest.raises(
        EvalDataError,
        match=r"word_order\.jsonl:3: undecodable byte 0xe9 at column 23; "
        r"evaluation files must be UTF-8",
    ):
        read_records(jsonl, ())
    csv = tmp_path / "reading_data.csv"
    csv.write_bytes(b"item,word\nthe,dog\n\xff,cat\n")
    with pytest.raises(EvalDataError, match=r"reading_data\.csv:3: undecodable byte 0xff at column 1"):
        read_csv(csv, ("item", "word"))
    doc = tmp_path / "cdi_childes.json"
    doc.write_bytes(b'{"dog": [\n  {"context": "a \x80"}]}')
    with pytest.raises(
        EvalDataError,
        match=r"cdi_childes\.json:2: undecodable byte 0x80 at byte offset 27 "
        r"\(column 18\)",
    ):
        read_text(doc)


# ----------------------------------------------------------------------------- context length
def test_fit_context_refuses_or_cuts_from_the_left():
    """Rows of 3 and 5 tokens (flat ids 0..7) against a context of 4 positions."""
    import numpy as np

    from cdhpc.evals.engine import ContextLengthError, _fit_context

    lens, ids, ends = np.array([3, 5]), np.arange(8), np.arange(8) * 10
    with pytest.raises(ContextLengthError) as err:
        _fit_context(lens, ids, ends, 0, 4, truncate=False)
    assert (err.value.rows, err.value.lengths, err.value.limit) == ([1], [5], 4)
    got = _fit_context(lens, ids, ends, 0, 4, truncate=True)
    assert [x.tolist() for x in got] == [[3, 4], [0, 1, 2, 4, 5, 6, 7], [0, 10, 20, 40, 50, 60, 70]]
    got = _fit_context(lens, ids, ends, 1, 4, truncate=True)  # joint: a BOS column in front stays
    assert [x.tolist() for x in got[:2]] == [[3, 3], [0, 1, 2, 5, 6, 7]]
    assert _fit_context(lens, ids, ends, 0, 5, truncate=False)[0] is lens


def test_a_candidate_too_long_is_named_by_file_line_uid_and_index():
    from cdhpc.evals import get_task
    from cdhpc.evals.engine import ContextLengthError
    from cdhpc.evals.scoring import _choice_too_long
    from cdhpc.evals.task import ChoiceItem

    items = [
        ChoiceItem("u", ("", ""), ("a", "b")),
        ChoiceItem("v", ("", ""), ("a", "b")),
        ChoiceItem("u", ("", ""), ("a", "b")),
    ]
    sources = [(Path("f.jsonl"), 1), (Path("f.jsonl"), 2), (Path("g.jsonl"), 7)]
    message = _choice_too_long(ContextLengthError([5, 0], [40, 20], 16), get_task("blimp"), items, sources)
    assert message.startswith(
        "g.jsonl:7: item u_1 (uid 'u', item index 2), candidate 1: 40 tokens (context + "
        "continuation, special tokens included), but the model's context is 16 "
        "positions (max_position_embeddings) (1 more candidate(s) of blimp are too long)"
    )
    assert message.endswith("or pass --truncate (EvalOptions.truncate) to cut it from the left")


@pytest.mark.slow  # loads a model in-process: importing torch and transformers alone takes ~5 s
def test_a_sentence_longer_than_the_context_fails_naming_the_item(short_model, tmp_path):
    from cdhpc.evals.run import evaluate_task

    data = _blimp_data(tmp_path / "evaluation_data", [BLIMP, {**BLIMP, "sentence_bad": LONG}])
    with pytest.raises(
        EvalDataError,
        match=r"word_order\.jsonl:2: item word_order_1 \(uid 'word_order', "
        r"item index 1\), candidate 1: \d+ tokens \(context \+ "
        r"continuation, special tokens included\), but the model's "
        rf"context is {CONTEXT} positions.*--truncate",
    ):
        evaluate_task(short_model, "blimp", data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_truncate_cuts_from_the_left_and_counts(short_model, tmp_path, caplog):
    from transformers import AutoTokenizer

    from cdhpc.evals.engine import ScoreRequest, encode_requests
    from cdhpc.evals.run import EvalOptions, evaluate_task

    tok = AutoTokenizer.from_pretrained(short_model)
    requests = [ScoreRequest("", LONG), ScoreRequest("The cat", " sat.")]
    full, scored = encode_requests(tok, requests, "official")
    cut, cut_scored = encode_requests(tok, requests, "official", max_tokens=CONTEXT, truncate=True)
    n = int((full[0] >= 0).sum())
    assert n > CONTEXT and cut.shape[1] == CONTEXT
    assert cut[0].tolist() == full[0, n - CONTEXT : n].tolist()  # the last CONTEXT tokens
    assert cut_scored[0].tolist() == [False] + scored[0, n - CONTEXT + 1 : n].tolist()  # first: unpredicted
    assert (cut[1] == full[1, :CONTEXT]).all() and (cut_scored[1] == scored[1, :CONTEXT]).all()
    joint, _ = encode_requests(tok, requests[:1], "joint", max_tokens=CONTEXT, truncate=True)
    assert joint[0, 0] == tok.bos_token_id and joint[0, 1:].tolist() == full[0, n - CONTEXT + 1 : n].tolist()

    data = _blimp_data(tmp_path / "evaluation_data", [BLIMP, {**BLIMP, "sentence_bad": LONG}])
    with caplog.at_level(logging.WARNING, logger="cdhpc"):
        summary = evaluate_task(
            short_model, "blimp", data, tmp_path / "out", options=EvalOptions(truncate=True)
        )
    assert summary["truncate"] is True and summary["n_truncated"] == 1 and summary["n_items"] == 2
    assert "1 of 4 candidates are longer than the model's context of 16 positions" in caplog.text
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n_truncated"] == 1


@pytest.mark.slow
def test_reading_and_engine_refuse_what_does_not_fit(short_model, tmp_path):
    """Where --truncate does not apply (reading, aoa, direct engine use) a too-long sequence is an
    error, never a silent score past the model's positions."""
    import numpy as np
    from transformers import AutoModelForCausalLM

    from cdhpc.evals.engine import ContextLengthError, score_sequences
    from cdhpc.evals.run import evaluate_task

    full = np.arange(CONTEXT + 1)[None, :]
    with pytest.raises(ContextLengthError, match=rf"longest has {CONTEXT + 1} tokens"):
        score_sequences(AutoModelForCausalLM.from_pretrained(short_model), full, full >= 1)
    header = (
        "item,word,prev_item,prev_word,Subtlex_log10,length,context_length,prev_length,"
        "self_paced_reading_time"
    )
    rows = ["The,dog,,,3,3,1,,250", f"{LONG},cat,The,dog,3,3,20,3,260", "The dog,ran,The,dog,3,3,2,3,240"]
    _lines(tmp_path / "evaluation_data" / "full_eval" / "reading" / "reading_data.csv", [header] + rows)
    with pytest.raises(
        EvalDataError,
        match=r"reading_data\.csv:3: reading row 1 \(uid 'reading', item 1\): "
        r"word 'cat' with the text before it is \d+ tokens",
    ):
        evaluate_task(short_model, "reading", tmp_path / "evaluation_data", tmp_path / "out")


# ----------------------------------------------------------------------------- model files
def _cdhpc_eval(model: Path, data: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            shutil.which("cdhpc"),
            "eval",
            "--model",
            str(model),
            "--tasks",
            "blimp",
            "--data",
            str(data),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


@pytest.mark.parametrize(
    "damage,message",
    [
        (
            "header",
            r"model\.safetensors: corrupt safetensors file \(the header claims 1,000,000,000,000 bytes",
        ),
        (
            "truncated",
            r"model\.safetensors: corrupt safetensors file \(the tensors end at byte [\d,]+, the "
            r"file has [\d,]+: truncated\?\)",
        ),
        ("config", r"config\.json: not valid JSON \(JSONDecodeError: .*\); expected the model's HF config"),
    ],
)
def test_corrupt_model_files_give_one_line_and_exit_2(tmp_path, damage, message):
    model = tmp_path / "model"
    shutil.copytree(GOLDEN_MODEL, model)
    weights = model / "model.safetensors"
    if damage == "header":
        weights.write_bytes(struct.pack("<Q", 10**12) + weights.read_bytes()[8:])
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100_000])
    else:
        (model / "config.json").write_text('{"model_type": "llama",')
    data = _blimp_data(tmp_path / "evaluation_data", [BLIMP])
    proc = _cdhpc_eval(model, data, tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"cdhpc eval: error: {model}")
    assert re.search(message, proc.stderr), proc.stderr
