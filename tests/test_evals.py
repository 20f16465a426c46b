"""cdhpc.evals: engine scores equal plain HF scoring, official aggregation, reading regressions,
malformed-file errors, output shapes. A tiny random LlamaForCausalLM and a SentencePiece-style BPE
tokenizer are built here and saved with save_pretrained; data files are written in the real
on-disk layout into a tmp dir."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cdhpc.evals import TASK_NAMES, get_task
from cdhpc.evals.choice import entity_tracking_score, prediction_rows
from cdhpc.evals.data import EvalDataError
from cdhpc.evals.perplexity import cut_blocks
from cdhpc.evals.reading import joint_request
from cdhpc.evals.regression import BASE_EYE, BASE_SPR, delta_r2, fit_measure
from cdhpc.evals.task import ChoiceItem

SENTENCES = [
    "Who should Derek hug after shocking Richard?",
    "Who should Derek hug Richard after shocking?",
    "The cat sat on the mat.",
    "The cat sat on mat the.",
    "Ali gives orders to Wei.",
    "Ali is Wei's boss.",
    "Ali is Wei's subordinate.",
    "Box 0 contains the ball, Box 1 contains ",
    "the key.",
    "the gift.",
    "the ball.",
    "This is very wuggy.",
    "Its wuggity is clear.",
    "The dog barked at the man who walked by the river.",
    "A dog can bark.",
    "A cat can bark.",
    "A wug is a dog. Therefore, a wug can bark.",
    "A fep is a cat. Therefore, a fep can bark.",
]
WORDS = "the a man dog river walked slowly quietly xylophonic zephyrous ran to house green".split()


def _tiny_model_dir(root: Path) -> Path:
    import torch
    from tokenizers import SentencePieceBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = SentencePieceBPETokenizer()
    bpe.train_from_iterator(
        SENTENCES * 5, vocab_size=150, min_frequency=1, special_tokens=["<unk>", "<s>", "</s>", "<pad>"]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    out = root / "model"
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _reading_csv(path: Path, rng: np.random.Generator) -> None:
    header = (
        "item,word,prev_item,prev_word,Subtlex_log10,length,context_length,prev_length,"
        "RTfirstfix,RTfirstpass,RTgopast,RTrightbound,self_paced_reading_time"
    )
    lines = [header]
    for _s in range(6):
        words = list(rng.choice(WORDS, size=8))
        for k, w in enumerate(words):
            item, prev_item = " ".join(words[:k]), " ".join(words[: k - 1]) if k else ""
            prev_word = words[k - 1] if k else ""
            nums = [
                rng.normal(3, 1),
                len(w),
                k,
                len(prev_word) if k else "",
                *rng.normal(250, 40, size=5).round(1),
            ]
            cells = [f'"{item}"', w, f'"{prev_item}"', prev_word] + [str(x) for x in nums]
            lines.append(",".join(cells))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _eval_dir(root: Path) -> Path:
    d = root / "evaluation_data" / "full_eval"
    blimp = [
        {
            "sentence_good": SENTENCES[0],
            "sentence_bad": SENTENCES[1],
            "field": "syntax",
            "linguistics_term": "island_effects",
            "UID": "adjunct_island",
            "pairID": "0",
        },
        {
            "sentence_good": SENTENCES[2],
            "sentence_bad": SENTENCES[3],
            "field": "syntax",
            "linguistics_term": "order",
            "UID": "word_order",
            "pairID": "1",
        },
        {
            "sentence_good": SENTENCES[3],
            "sentence_bad": SENTENCES[3],
            "field": "syntax",
            "linguistics_term": "order",
            "UID": "word_order",
            "pairID": "2",
        },
    ]
    _jsonl(d / "blimp_filtered" / "adjunct_island.jsonl", blimp[:1])
    _jsonl(d / "blimp_filtered" / "word_order.jsonl", blimp[1:])
    sup = [{"sentence_good": SENTENCES[2], "sentence_bad": SENTENCES[3], "pair_ID": 0}]
    _jsonl(d / "supplement_filtered" / "hypernym.jsonl", sup)
    _jsonl(d / "supplement_filtered" / "turn_taking.jsonl", sup * 2)
    ewok = {
        "Domain": "social-relations",
        "Context1": SENTENCES[4],
        "Context2": "Wei gives orders.",
        "Target1": SENTENCES[5],
        "Target2": SENTENCES[6],
        "ContextType": "x",
        "ContextDiff": "y",
        "TargetDiff": "z",
    }
    _jsonl(d / "ewok_filtered" / "social-relations.jsonl", [ewok, {**ewok, "Target1": SENTENCES[6]}])
    _jsonl(d / "ewok_filtered" / "agent-properties.jsonl", [{**ewok, "Domain": "agent-properties"}])
    for split in ("regular", "ambiref", "move_contents"):
        et = [
            {
                "sample_id": i,
                "numops": i % 2,
                "input_prefix": SENTENCES[7],
                "options": SENTENCES[8:11][i:] + SENTENCES[8:11][:i],
            }
            for i in range(3)
        ]
        _jsonl(d / "entity_tracking" / f"{split}.jsonl", et)
    wug = [{"sentences": f"{SENTENCES[11]}\t{SENTENCES[12]}", "ratio": r} for r in (0.1, 0.5, 0.9)]
    wug.append({"sentences": f"{SENTENCES[12]}\t{SENTENCES[11]}", "ratio": 0.3})
    _jsonl(d / "wug_adj_nominalization" / "wug_adj_nominalization.jsonl", wug)
    _jsonl(d / "wug_past_tense" / "wug_past_tense.jsonl", wug)
    comps = {
        "comps_base": ("A dog", "A cat"),
        "comps_wugs": ("A wug is a dog. Therefore, a wug", "A wug is a cat. Therefore, a wug"),
        "comps_wugs_dist-before": (
            "A fep is a cat. A wug is a dog. Therefore, a wug",
            "A fep is a dog. A wug is a cat. Therefore, a wug",
        ),
        "comps_wugs_dist-in-between": (
            "A wug is a dog. A fep is a cat. Therefore, a wug",
            "A wug is a cat. A fep is a dog. Therefore, a wug",
        ),
    }
    for stem, (good, bad) in comps.items():
        _jsonl(
            d / "comps" / f"{stem}.jsonl",
            [{"prefix_acceptable": good, "prefix_unacceptable": bad, "property_phrase": "can bark."}],
        )
    _reading_csv(d / "reading" / "reading_data.csv", np.random.default_rng(0))
    (d / "aoa").mkdir()
    contexts = {
        w: [{"context": c} for c in ("The dog barked at the", "Who should", "The cat sat on")]
        for w in ("man", "river", "dog", "cat", "mat", "a")
    }
    (d / "aoa" / "cdi_childes.json").write_text(json.dumps(contexts))
    ages = list(range(16, 31))
    rows = [",".join(["word"] + [str(a) for a in ages])]
    for k, w in enumerate(("man", "river", "dog", "cat", "mat")):
        rows.append(",".join([w] + [f"{1 / (1 + math.exp(-(a - 18 - 2 * k))):.3f}" for a in ages]))
    (d / "aoa" / "cdi_human.csv").write_text("\n".join(rows) + "\n")
    return root / "evaluation_data"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evals")
    return _tiny_model_dir(root), _eval_dir(root)


@pytest.fixture(scope="module")
def hf(world):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, _ = world
    return (
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(),
        AutoTokenizer.from_pretrained(model_dir),
    )


def plain_score(hf, context: str, continuation: str, scoring: str = "official") -> float:
    """The straightforward way: the whole string alone, full log-softmax. Official: the text as
    the tokenizer encodes it, specials included, tokens ending past len(context) + the first
    token's start scored (never position 0); joint: BOS + the text, every continuation token."""
    import torch

    model, tok = hf
    official = scoring == "official"
    enc = tok(context + continuation, add_special_tokens=official, return_offsets_mapping=True)
    offsets = enc["offset_mapping"] if official else [(0, 0)] + enc["offset_mapping"]
    ids = enc["input_ids"] if official else [tok.bos_token_id] + enc["input_ids"]
    threshold = len(context) + (offsets[0][0] if official else 0)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
    return sum(logp[j - 1, ids[j]].item() for j in range(1, len(ids)) if offsets[j][1] > threshold)


def plain_reading(hf, item: str, word: str) -> float:
    """The official reader's surprisal, written out the plain way (get_p2 of reading/
    evaluation_functions.py): one forward per piece, the context re-tokenized each time."""
    import torch

    model, tok = hf
    context = item if item else "None"
    pieces = tok(word, add_special_tokens=False)["input_ids"]
    total = 0.0
    for k, piece in enumerate(pieces):
        target = piece if k == 0 else tok(tok.decode(piece), add_special_tokens=False)["input_ids"][0]
        with torch.no_grad():
            logits = model(torch.tensor([tok(context)["input_ids"]])).logits[0, -1]
        total += math.log(torch.softmax(logits, dim=-1)[target].item())
        context += tok.decode(piece)
    return -total


def _run(world, task, out, heldout_dir=None, **kw):
    from cdhpc.evals.run import EvalOptions, evaluate_task

    model_dir, data = world
    return evaluate_task(
        model_dir, task, data, out, heldout_dir=heldout_dir, options=EvalOptions(batch_size=2, **kw)
    )


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]


CHOICE_TASKS = ["blimp", "blimp_supplement", "ewok", "entity_tracking", "wug", "wug_past", "comps"]


@pytest.mark.parametrize("scoring", ["official", "joint"])
@pytest.mark.parametrize("task", CHOICE_TASKS)
def test_choice_scores_equal_plain_scoring(world, hf, tmp_path, task, scoring):
    """This fixture's tokenizer adds no BOS: official scoring leaves each sentence's first token
    unscored, joint scoring prepends BOS and scores it."""
    summary = _run(world, task, tmp_path, scoring=scoring)
    spec = get_task(task)
    from cdhpc.evals.choice import load_items

    items = load_items(spec, sorted(spec.data_dir(world[1], False).glob("*.jsonl")))
    rows = _rows(tmp_path)
    assert len(rows) == len(items) == summary["n_items"]
    for row, item in zip(rows, items):
        expect = [plain_score(hf, c, x, scoring) for c, x in zip(item.contexts, item.continuations)]
        assert row["scores"] == pytest.approx(expect, abs=1e-4)
        assert row["pred"] == int(np.argmax(expect)) and row["correct"] == (row["pred"] == 0)


def test_official_and_joint_agree_for_a_tokenizer_that_adds_bos(hf):
    """For this project's own tokenizers (a BOS added by the post-processor, words with their
    space) the two rules score the same tokens."""
    from tokenizers.processors import TemplateProcessing

    from cdhpc.evals.engine import ScoreRequest, encode_requests

    _, tok = hf
    with_bos = type(tok)(
        tokenizer_object=tok.backend_tokenizer.__class__.from_str(tok.backend_tokenizer.to_str()),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    with_bos.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    reqs = [ScoreRequest(c, x) for c, x in PACK_CASES]
    official, joint = encode_requests(with_bos, reqs, "official"), encode_requests(with_bos, reqs, "joint")
    assert (official[0] == joint[0]).all() and (official[1] == joint[1]).all()


@pytest.mark.parametrize("task", ["reading", "eye_tracking"])
def test_reading_surprisal_official_rule_with_multi_token_words(world, hf, tmp_path, task):
    _run(world, task, tmp_path)
    rows = _rows(tmp_path)
    model, tok = hf
    multi = [r for r in rows if len(tok(r["word"], add_special_tokens=False)["input_ids"]) > 1]
    assert multi, "fixture must contain words split into several tokens"
    for r in rows:
        assert r["surprisal"] == pytest.approx(plain_reading(hf, r["item"], r["word"]), abs=1e-4)
    firsts = [r for r in rows if r["item"] == ""]
    assert firsts and all(r["prev_surprisal"] is None for r in firsts)
    official = json.loads((tmp_path / "predictions.json").read_text())["reading"]["predictions"]
    assert math.isnan(official[0]["prev_pred"])  # NaN, as the official file writes it
    assert (tmp_path / "report.txt").read_text().startswith("EYE TRACKING SCORE: ")
    for name in (
        "prediction.jsonl",
        "correlations.txt",
        "predictive_power.jsonl",
        "predictive_power_spillover.jsonl",
    ):
        assert (tmp_path / name).stat().st_size > 0


def test_reading_surprisal_joint_rule(world, hf, tmp_path):
    _run(world, "reading", tmp_path, scoring="joint")
    for r in _rows(tmp_path):
        req = joint_request(r["item"], r["word"])
        assert r["surprisal"] == pytest.approx(
            -plain_score(hf, req.context, req.continuation, "joint"), abs=1e-4
        )


PACK_CASES = [
    ("", "The cat sat on the mat."),
    ("", "The cat sat on mat the."),
    ("The cat ", "sat on the mat."),
    ("The dog ", "barked at the man."),
    ("Ali gives orders to Wei. ", "Ali is Wei's boss."),
    ("Ali gives orders to Wei. ", "Ali is Wei's subordinate."),
    ("", "The dog barked."),
]


def test_packing_shares_prefixes_across_items(hf):
    """All requests go into one trie per row, sorted by token ids: a prefix shared by several
    items (not only by one item's candidates) is one set of nodes."""
    from cdhpc.evals.engine import ScoreRequest, encode_requests, pack_requests

    _, tok = hf
    reqs = [ScoreRequest(c, x) for c, x in PACK_CASES]
    rows = pack_requests(tok, reqs, "joint", row_tokens=10_000)
    full, scored = encode_requests(tok, reqs, "joint")
    paths = {
        tuple(ids[:j])
        for ids, sc in zip(full.tolist(), scored)
        for j in range(1, np.flatnonzero(sc).max() + 1)
    }
    assert len(rows) == 1 and len(rows[0].ids) == len(paths)  # one node per distinct prefix
    singles = [pack_requests(tok, [r], "joint")[0] for r in reqs]
    assert len(rows[0].ids) < sum(len(r.ids) for r in singles)
    assert sorted(rows[0].member_requests) == sorted(
        i for i, r in enumerate(singles) for _ in r.member_requests
    )
    # the growing prefixes of one long text stay one chain, however small the row size
    text = " ".join(WORDS * 3)
    chain = [joint_request(" ".join(text.split()[:k]), w) for k, w in enumerate(text.split())]
    rows = pack_requests(tok, chain, "joint", row_tokens=4)
    longest = np.flatnonzero(encode_requests(tok, chain, "joint")[1].any(axis=0)).max()
    assert len(rows) == 1 and len(rows[0].ids) == longest


@pytest.mark.parametrize("scoring", ["official", "joint"])
@pytest.mark.parametrize("row_tokens,batch_size", [(1, 1), (8, 2), (16, 3), (64, 64)])
def test_scores_do_not_depend_on_packing(hf, row_tokens, batch_size, scoring):
    """Rows cut anywhere (one request per row, several items per row; without a BOS a row is a
    forest of tries) and any batch size give the plain one-string-at-a-time scores."""
    from cdhpc.evals.engine import ScoreRequest, score_candidates

    model, tok = hf
    reqs = [ScoreRequest(c, x) for c, x in PACK_CASES] + [ScoreRequest("", "")]
    got = score_candidates(model, tok, reqs, scoring=scoring, batch_size=batch_size, row_tokens=row_tokens)
    want = [plain_score(hf, r.context, r.continuation, scoring) for r in reqs[:-1]] + [0.0]
    assert got == pytest.approx(want, abs=1e-4)


@pytest.mark.gpu
def test_cuda_bf16_scores_track_cpu_fp32(world):
    """With dtype bfloat16 on a GPU the scores stay close to fp32 on the CPU."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from cdhpc.evals.engine import ScoreRequest, score_candidates
    from cdhpc.evals.loading import load_model

    reqs = [ScoreRequest(c, x) for c, x in PACK_CASES]
    cpu = score_candidates(*load_model(world[0], "cpu"), reqs, device="cpu")
    gpu = score_candidates(*load_model(world[0], "cuda", "bfloat16"), reqs, device="cuda")
    assert gpu == pytest.approx(cpu, rel=0.05, abs=0.5)


def test_joint_request_spacing():
    assert (joint_request("", "The").context, joint_request("", "The").continuation) == ("", "The")
    assert joint_request("The dog", "ran").continuation == " ran"


def test_summary_and_official_files(world, tmp_path):
    s = _run(world, "entity_tracking", tmp_path)
    for key in ("task", "version", "data_sha256", "score", "per_uid", "n_items", "metric", "fast"):
        assert key in s
    assert json.loads((tmp_path / "summary.json").read_text()) == s
    assert set(s["per_uid"]) == {
        f"{sp}_{n}_ops" for sp in ("regular", "ambiref", "move_contents") for n in (0, 1)
    }
    assert s["score"] == pytest.approx(entity_tracking_score(s["per_uid"]))
    row = _rows(tmp_path)[0]
    assert set(row) >= {"uid", "item_id", "scores", "pred", "correct"}
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert preds["regular_0_ops"]["predictions"][0]["id"] == "regular_0_ops_0"
    assert preds["regular_0_ops"]["predictions"][0]["pred"] in SENTENCES[8:11]
    report = (tmp_path / "best_temperature_report.txt").read_text()
    assert report.startswith("TEMPERATURE: 1.00\n\n### UID ACCURACY\n")
    assert "regular: " in report and f"### AVERAGE ACCURACY\n{s['score']:.2f}\n" in report


def test_blimp_tie_counts_as_correct_and_macro_mean(world, tmp_path):
    s = _run(world, "blimp", tmp_path)
    tie = _rows(tmp_path)[-1]  # identical good and bad sentence
    assert tie["scores"][0] == tie["scores"][1] and tie["pred"] == 0 and tie["correct"]
    assert s["score"] == pytest.approx(sum(s["per_uid"].values()) / 2)
    assert "### FIELD ACCURACY" in (tmp_path / "best_temperature_report.txt").read_text()


@pytest.mark.parametrize("task,uid", [("wug", "wug_adj"), ("wug_past", "wug_past")])
def test_wug_spearman_is_the_default(world, hf, tmp_path, task, uid):
    from scipy.stats import spearmanr

    s = _run(world, task, tmp_path)
    a, b = SENTENCES[11], SENTENCES[12]
    sa, sb = plain_score(hf, "", a), plain_score(hf, "", b)
    p_ab = 1 / (1 + math.exp(sb - sa))
    expect = spearmanr([p_ab, p_ab, p_ab, 1 - p_ab], [0.1, 0.5, 0.9, 0.3])[0]
    assert s["metric"] == "spearman" and s["score"] == pytest.approx(expect)
    pred = json.loads((tmp_path / "predictions.json").read_text())
    assert pred[uid]["predictions"][0]["prob"] == pytest.approx(p_ab, abs=1e-5)
    assert "SPEARMAN'S RHO" in (tmp_path / "best_temperature_report.txt").read_text()


def test_wug_accuracy_is_the_papers_option(world, tmp_path):
    s = _run(world, "wug", tmp_path, wug_metric="accuracy")
    assert s["metric"] == "accuracy" and s["score"] in (25.0, 75.0)  # 3 of 4 records put a first


def test_wug_probability_rounds_as_float32():
    """The official softmax runs in float32: a pair 20 nats apart gets P = 1.0 exactly, which ties
    with other such pairs in Spearman's ranks (float64 would not)."""
    from cdhpc.evals.choice import first_probs

    items = [ChoiceItem("wug_adj", ("", ""), ("a", "b"), ratio=r) for r in (0.2, 0.9)]
    assert first_probs(items, [2, 2], [-1.0, -21.0, -2.0, -30.0]) == [1.0, 1.0]


def test_comps_shows_the_whole_sentence(world, tmp_path):
    _run(world, "comps", tmp_path)
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert set(preds) == {"base", "wugs", "wugs_dist_before", "wugs_dist_in_between"}
    assert preds["base"]["predictions"][0]["pred"] in ("A dog can bark.", "A cat can bark.")


def test_entity_tracking_averaging_known_answer():
    per_uid = {
        "regular_0_ops": 100.0,
        "regular_1_ops": 50.0,
        "ambiref_0_ops": 0.0,
        "move_contents_0_ops": 30.0,
        "move_contents_1_ops": 40.0,
        "move_contents_2_ops": 50.0,
    }
    assert entity_tracking_score(per_uid) == pytest.approx((75.0 + 0.0 + 40.0) / 3)


def test_prediction_rows_first_argmax():
    items = [ChoiceItem("u", ("", "", ""), ("a", "b", "c")), ChoiceItem("u", ("", ""), ("a", "b"))]
    rows = prediction_rows(items, [-2.0, -1.0, -1.0, -3.0, -3.0])
    assert [r["pred"] for r in rows] == [1, 0] and [r["item_id"] for r in rows] == ["u_0", "u_1"]


def test_prediction_rows_choose_as_torch_max_does_with_nan():
    """A NaN score (a diverged checkpoint) wins, the first one among several, as in the official
    pipeline's torch.max(stacked log-probs, dim=1); items of mixed sizes keep their order."""
    import torch

    nan = float("nan")
    blocks = [[-1.0, nan], [nan, nan], [-1.0, -1.0], [nan, -1.0, nan], [-3.0, -1.0, -2.0], [0.0, nan]]
    items = [ChoiceItem("u", ("",) * len(b), tuple("abc"[: len(b)])) for b in blocks]
    rows = prediction_rows(items, [x for b in blocks for x in b])
    official = [int(torch.max(torch.tensor([b]), dim=1)[1]) for b in blocks]
    assert [r["pred"] for r in rows] == official == [1, 0, 0, 0, 1, 1]


def _reading_columns(rng, n=60):
    cols = {c: rng.normal(size=n) for c in ("Subtlex_log10", "length", "context_length", "prev_length")}
    return cols


def _delta(columns, pred, measure, base, prev=None):
    cols = {**columns, "pred": pred} | ({} if prev is None else {"prev_pred": prev})
    return delta_r2(*fit_measure(cols, measure, base))


def test_delta_r2_known_answers():
    rng = np.random.default_rng(1)
    c = _reading_columns(rng)
    s = rng.normal(size=60)
    c["RT"] = 2 * c["length"] - c["Subtlex_log10"] * c["length"] + 0.5 * s  # exact in surprisal
    assert _delta(c, s, "RT", BASE_EYE) == pytest.approx(100.0)
    c["RT2"] = c["length"] + rng.normal(size=60)
    collinear = 3 * c["length"] - c["context_length"]  # already in the baseline
    assert _delta(c, collinear, "RT2", BASE_EYE) == pytest.approx(0.0, abs=1e-9)


def test_delta_r2_equals_squared_partial_correlation():
    rng = np.random.default_rng(2)
    c = _reading_columns(rng)
    s, prev = rng.normal(size=60), rng.normal(size=60)
    c["y"] = c["length"] + 0.3 * s + rng.normal(size=60)
    c["y"][3] = np.nan  # dropped as pandas dropna would
    names = ["Subtlex_log10", "length", "context_length", "prev_length"]
    v = [c[n] for n in names] + [prev]
    x = np.column_stack([np.ones(60)] + v + [v[i] * v[j] for i in range(5) for j in range(i + 1, 5)])
    keep = ~np.isnan(c["y"])
    res = [y - x[keep] @ np.linalg.pinv(x[keep]) @ y for y in (c["y"][keep], s[keep])]
    partial = np.corrcoef(res[0], res[1])[0, 1]
    assert _delta(c, s, "y", BASE_SPR, prev) == pytest.approx(100 * partial**2, rel=1e-8)


def test_reading_and_eye_tracking_scores(world, tmp_path):
    for task in ("reading", "eye_tracking"):
        s = _run(world, task, tmp_path / task)
        assert s["metric"] == "delta_r2" and math.isfinite(s["score"])
        measures = (
            ["self_paced_reading_time"]
            if task == "reading"
            else ["RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound"]
        )
        assert list(s["per_uid"]) == measures
        assert s["score"] == pytest.approx(sum(s["per_uid"].values()) / len(measures))
        preds = json.loads((tmp_path / task / "predictions.json").read_text())
        assert len(preds["reading"]["predictions"]) == s["n_items"] == 48


def test_aoa_over_a_runs_checkpoints(world, tmp_path):
    """aoa reads every checkpoint folder (step_N), scores each (word, context) as the official
    AoA_word extractor, writes the official surprisal.json and the curve fitness of its rows."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cdhpc.evals import aoa

    model_dir, data = world
    run = tmp_path / "run" / "checkpoints"
    for step in (10, 100, 1000):
        torch.manual_seed(step)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + step / 1000)
        model.save_pretrained(run / f"step_{step}")
        for f in model_dir.glob("*token*"):
            shutil.copy(f, run / f"step_{step}" / f.name)
    (run / "notes").mkdir()  # not a checkpoint: ignored
    s = _run((run, data), "aoa", tmp_path / "out")
    official = json.loads((tmp_path / "out" / "surprisal.json").read_text())
    words, contexts = aoa.load_words(data / "full_eval/aoa/cdi_childes.json")
    assert words == ["man", "river", "dog", "cat", "mat"]  # one-letter words dropped, as officially
    assert official["metadata"]["completed_steps"] == 3 and len(official["results"]) == 3 * 15
    for r in official["results"][::7]:
        hf = (
            AutoModelForCausalLM.from_pretrained(run / f"step_{r['step']}").eval(),
            AutoTokenizer.from_pretrained(run / f"step_{r['step']}"),
        )
        want = -plain_score(hf, r["context"].strip() + " ", r["target_word"].strip())
        assert r["surprisal"] == pytest.approx(want, abs=1e-4)
    cdi = aoa.read_cdi(data / "full_eval/aoa/cdi_human.csv")
    assert s["score"] == pytest.approx(aoa.curve_fitness(official["results"], cdi).fitness)
    assert s["metric"] == "pearson" and s["checkpoints"] == [10, 100, 1000]
    with pytest.raises(EvalDataError, match="needs >= 3 checkpoint folders"):
        _run((model_dir.parent, data), "aoa", tmp_path / "out2")


def test_perplexity_equals_hf_loss(world, hf, tmp_path):
    import torch

    held = tmp_path / "heldout"
    held.mkdir()
    (held / "a.txt").write_text("The cat sat on the mat.\nThe dog barked.\n\nAli is Wei's boss.\n")
    (held / "b.txt").write_text(" ".join(SENTENCES * 3) + "\n")
    s = _run(world, "perplexity", tmp_path / "out", heldout_dir=held)
    model, tok = hf
    docs = ["The cat sat on the mat.\nThe dog barked.", "Ali is Wei's boss.", " ".join(SENTENCES * 3)]
    ids = [t for d in docs for t in [1] + tok(d, add_special_tokens=False)["input_ids"] + [2]]
    blocks = torch.tensor([ids[i : i + 64] for i in range(0, len(ids) - 63, 64)])
    with torch.no_grad():
        losses = [model(b[None], labels=b[None]).loss.item() for b in blocks]
    assert s["n_items"] == len(losses) and s["block_tokens"] == 64
    assert s["score"] == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-4)
    assert [r["mean_loss"] for r in _rows(tmp_path / "out")] == pytest.approx(losses, abs=1e-4)


def test_cut_blocks():
    assert cut_blocks(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert cut_blocks([5, 6, 7], 4) == [[5, 6, 7]]
    with pytest.raises(EvalDataError):
        cut_blocks([5], 4)


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing", r"good\.jsonl:2: missing field\(s\) \['UID'\]"),
        ("empty", r"good\.jsonl: empty file"),
        ("badjson", r"good\.jsonl:3: bad JSON"),
    ],
)
def test_malformed_jsonl_fails_and_writes_nothing(world, tmp_path, case, match):
    from cdhpc.evals.run import evaluate_task

    rec = {
        "sentence_good": "a b",
        "sentence_bad": "b a",
        "field": "f",
        "linguistics_term": "t",
        "UID": "good",
        "pairID": "0",
    }
    lines = {
        "missing": [json.dumps(rec), json.dumps({k: v for k, v in rec.items() if k != "UID"})],
        "empty": [],
        "badjson": [json.dumps(rec), json.dumps(rec), '{"sentence_good": '],
    }[case]
    data = tmp_path / "evaluation_data"
    (data / "full_eval" / "blimp_filtered").mkdir(parents=True)
    (data / "full_eval" / "blimp_filtered" / "good.jsonl").write_text("\n".join(lines))
    with pytest.raises(EvalDataError, match=match):
        evaluate_task(world[0], "blimp", data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_malformed_csv_and_options_fail(world, tmp_path):
    from cdhpc.evals.run import evaluate_task

    data = tmp_path / "evaluation_data" / "full_eval"
    (data / "reading").mkdir(parents=True)
    (data / "reading" / "reading_data.csv").write_text("item,word,length\n,the,3\n")
    with pytest.raises(EvalDataError, match=r"reading_data\.csv:1: CSV header lacks .*Subtlex_log10"):
        evaluate_task(world[0], "eye_tracking", data.parent, tmp_path / "out")
    _jsonl(
        data / "entity_tracking" / "regular.jsonl",
        [{"input_prefix": "x", "options": "the key.", "numops": 0}],
    )
    with pytest.raises(EvalDataError, match=r"regular\.jsonl: record 1: field 'options' must be a list"):
        evaluate_task(world[0], "entity_tracking", data.parent, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError, match="did you mean 'blimp'.*known tasks: blimp, blimp_supplement"):
        get_task("blimpp")
    assert [get_task(n).name for n in TASK_NAMES] == list(TASK_NAMES)


def test_main_eval_cli(world, tmp_path, capsys):
    from cdhpc.evals.run import main_eval

    model_dir, data = world
    rc = main_eval(
        [
            "--model",
            str(model_dir),
            "--tasks",
            "blimp_supplement,wug",
            "--data",
            str(data),
            "--out",
            str(tmp_path),
            "--batch-size",
            "3",
        ]
    )
    assert rc == 0 and (tmp_path / "wug" / "summary.json").exists()
    assert "blimp_supplement\taccuracy" in capsys.readouterr().out
    assert main_eval(["--model", str(model_dir), "--tasks", "nope", "--out", str(tmp_path)]) == 2
    assert "known tasks" in capsys.readouterr().err


def test_import_evals_is_light():
    code = (
        "import sys, cdhpc.evals, cdhpc.evals.run, cdhpc.evals.choice, cdhpc.evals.engine, "
        "cdhpc.evals.reading; [cdhpc.evals.get_task(n) for n in cdhpc.evals.TASK_NAMES]; "
        "print([m for m in ('torch', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "[]"
