"""cdhpc.toydata (+ cdhpc.corpora.toy.tasks): determinism, layout, real BabyLM 2025 schemas, intended
(un)grammaticality, entity-tracking answers re-derived by an independent simulator, a reading signal,
past-tense/COMPS answers re-derived from the lexicon, and an AoA signal."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import curve_fit
from scipy.stats import spearmanr

from cdhpc.corpora.toy import build, evalsets, grammar, lexicon
from cdhpc.corpora.toy import tasks as toytasks

REPO = Path(__file__).resolve().parents[1]
SMALL = {"train_docs": 60, "seed_docs": 20, "test_docs": 20}
SOURCES = ("stories", "wiki", "puzzles")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, dict]:
    """One write with the default sizes (timed, not asserted)."""
    out = tmp_path_factory.mktemp("toy") / "out"
    t0 = time.perf_counter()
    counts = build.write_toy(out, seed=0)
    print(f"\nwrite_toy(defaults) took {time.perf_counter() - t0:.2f} s")
    return out, counts


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _full(root: Path, folder: str) -> list[Path]:
    return sorted((root / "evaluation_data/full_eval" / folder).glob("*.jsonl"))


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        build.write_toy(tmp_path / name, seed, **SMALL)
    a, b, c = (_hashes(tmp_path / name) for name in "abc")
    assert a == b and len(a) == 9 + 34 + 8
    assert a.keys() == c.keys()
    differ = [k for k in a if a[k] != c[k]]
    assert len(differ) >= len(a) - 2, f"seed change left files identical: {set(a) - set(differ)}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"], "temp dir left behind"


def test_layout_matches_babylm_2025(toy):
    root, counts = toy
    for split in ("train", "seed", "test"):
        assert sorted(p.name for p in (root / "corpus" / split).iterdir()) == sorted(
            f"{s}.txt" for s in SOURCES
        )
    ev = root / "evaluation_data"
    assert len(_full(root, "blimp_filtered")) >= 4
    assert len(_full(root, "supplement_filtered")) >= 2
    assert len(_full(root, "ewok_filtered")) >= 2
    assert {p.stem for p in _full(root, "entity_tracking")} == {"regular", "ambiref", "move_contents"}
    for kind in ("full_eval", "fast_eval"):
        assert (ev / kind / "wug_adj_nominalization/wug_adj_nominalization.jsonl").is_file()
        assert (ev / kind / "reading/reading_data.csv").is_file()
        assert (ev / kind / "wug_past_tense/wug_past_tense.jsonl").is_file()
    assert {p.name for p in (ev / "full_eval/comps").iterdir()} == {
        "comps_base.jsonl",
        "comps_wugs.jsonl",
        "comps_wugs_dist-before.jsonl",
        "comps_wugs_dist-in-between.jsonl",
    }
    assert {p.name for p in (ev / "full_eval/aoa").iterdir()} == {"cdi_childes.json", "cdi_human.csv"}
    assert not (ev / "fast_eval/comps").exists() and not (ev / "fast_eval/aoa").exists()
    pairs = [
        ("blimp_filtered", "blimp_fast"),
        ("supplement_filtered", "supplement_fast"),
        ("ewok_filtered", "ewok_fast"),
        ("entity_tracking", "entity_tracking_fast"),
        ("wug_adj_nominalization", "wug_adj_nominalization"),
        ("wug_past_tense", "wug_past_tense"),
    ]
    for full, fast in pairs:  # fast sets are non-empty subsets of the full sets
        for path in _full(root, full):
            fast_lines = (ev / "fast_eval" / fast / path.name).read_text().splitlines()
            assert fast_lines and set(fast_lines) < set(path.read_text().splitlines()), path
    assert counts["eval"]["evaluation_data/full_eval/blimp_filtered/anaphor_gender_agreement.jsonl"] == 100


def test_corpus_documents_are_well_formed(toy):
    root, counts = toy
    for split in ("train", "seed", "test"):
        for src in SOURCES:
            text = (root / "corpus" / split / f"{src}.txt").read_bytes().decode("utf-8")
            assert text.endswith("\n") and not text.endswith("\n\n") and "\n\n\n" not in text
            docs = text[:-1].split("\n\n")
            lines = [doc.split("\n") for doc in docs]
            assert all(line.strip() == line and line for doc in lines for line in doc), (split, src)
            words = [sum(len(line.split()) for line in doc) for doc in lines]
            assert counts["corpus"][split][src] == {"docs": len(docs), "words": sum(words)}
            if split == "seed":
                assert 20 <= min(words) and max(words) <= 200, (src, min(words), max(words))
    train_words = sum(c["words"] for c in counts["corpus"]["train"].values())
    assert 500_000 <= train_words <= 1_000_000


def test_checker_known_answers():
    v = grammar.agreement_violations
    assert v("The dogs near the cat run.") == []
    assert v("The dog that the cats see runs.") == []
    assert len(v("The dogs near the cat runs.")) == 1
    assert len(v("The dog that the cats sees run.")) == 2
    assert "determiner" in v("These dog runs.")[0]
    assert v("Anna saw herself.") == [] and len(v("Anna saw himself.")) == 1
    assert len(v("The boys like himself.")) == 1 and v("The teacher washed herself.") == []
    assert len(v("The teacher washed itself.")) == 1
    assert v("The dog hurt the cat.") == [] and v("The dogs hurt the cat.") == []  # past = bare form
    assert v("Hello world.") is None and v("The dogs near.") is None and v("Is the dog big?") is None


def test_nominalize_rule_and_exceptions():
    cases = {
        "kind": "kindness",
        "happy": "happiness",
        "stable": "stability",
        "visible": "visibility",
        "formal": "formality",
        "active": "activity",
        "brave": "bravery",
        "warm": "warmth",
        "zorpable": "zorpability",
        "glimish": "glimishness",
    }
    assert {a: lexicon.nominalize(a) for a in cases} == cases


def test_blimp_pairs_are_good_and_bad_as_intended(toy):
    root, _ = toy
    required = {"sentence_good", "sentence_bad", "field", "linguistics_term", "UID", "pairID"}
    for path in _full(root, "blimp_filtered"):
        recs = _jsonl(path)
        assert 50 <= len(recs) <= 200
        for r in recs:
            assert required <= r.keys() and r["UID"] == path.stem and isinstance(r["pairID"], str)
            assert r["sentence_good"] != r["sentence_bad"]
            assert grammar.agreement_violations(r["sentence_good"]) == [], r
            bad = grammar.agreement_violations(r["sentence_bad"])
            assert bad is not None and len(bad) >= 1, r


def test_corpus_sentences_obey_the_checker(toy):
    root, _ = toy
    checked = 0
    for src in ("stories", "wiki"):
        text = (root / "corpus/train" / f"{src}.txt").read_text(encoding="utf-8")
        for sent in re.split(r"(?<=[.?])\s+", text[:200_000]):
            errs = grammar.agreement_violations(sent.strip())
            if errs is not None:
                assert errs == [], (sent, errs)
                checked += 1
    assert checked > 1000


def test_supplement_and_ewok_schemas(toy):
    root, _ = toy
    for path in _full(root, "supplement_filtered"):
        for r in _jsonl(path):
            assert {"sentence_good", "sentence_bad", "pair_ID"} <= r.keys() and "field" not in r
            assert r["sentence_good"] != r["sentence_bad"]
    size = {a: i for i, a in enumerate(lexicon.ANIMALS)}
    fields = {
        "Domain",
        "ConceptA",
        "ConceptB",
        "ContextType",
        "ContextDiff",
        "TargetDiff",
        "Context1",
        "Context2",
        "Target1",
        "Target2",
    }
    for path in _full(root, "ewok_filtered"):
        for r in _jsonl(path):
            assert set(r) == fields and r["Domain"] == path.stem
            assert r["Context1"] != r["Context2"] and r["Target1"] != r["Target2"]
            if r["Domain"] == "physical-relations":  # Target1 agrees with the hidden world
                for target, truth in ((r["Target1"], True), (r["Target2"], False)):
                    x, rel, y = re.fullmatch(
                        r"The (\w+) is (bigger|smaller) than the (\w+)\.", target
                    ).groups()
                    assert ((size[x] > size[y]) == (rel == "bigger")) == truth, r


def _simulate(prefix: str) -> tuple[list[str], int, int]:
    """Independent reading of an entity-tracking prefix: (true contents of the queried box,
    its index, number of operations that touched it)."""
    body, q = re.fullmatch(r"(.*) Box (\d) contains ", prefix).groups()
    sents = body[:-1].split(". ")

    def items(d):
        return [] if d == "nothing" else [x.removeprefix("the ") for x in d.split(" and ")]

    boxes = {int(i): items(d) for i, d in re.findall(r"Box (\d) contains ([^,]+)", sents[0])}
    touched = Counter()
    for op in sents[1:]:
        if m := re.fullmatch(r"Put (.+) into Box (\d)", op):
            boxes[int(m[2])] += items(m[1])
            touched[int(m[2])] += 1
        elif m := re.fullmatch(r"Remove (.+) from Box (\d)", op):
            boxes[int(m[2])] = [o for o in boxes[int(m[2])] if o not in items(m[1])]
            touched[int(m[2])] += 1
        elif m := re.fullmatch(r"Move the contents of Box (\d) to Box (\d)", op):
            a, b = int(m[1]), int(m[2])
            boxes[b], boxes[a] = boxes[b] + boxes[a], []
            touched.update([a, b])
        else:
            m = re.fullmatch(r"Move (.+) from Box (\d) to Box (\d)", op)
            a, b = int(m[2]), int(m[3])
            boxes[a] = [o for o in boxes[a] if o not in items(m[1])]
            boxes[b] += items(m[1])
            touched.update([a, b])
    return sorted(boxes[int(q)]), int(q), touched[int(q)]


def _said(option: str) -> list[str]:
    return [] if option == "nothing." else sorted(x.removeprefix("the ") for x in option[:-1].split(" and "))


def test_entity_tracking_answers_are_right(toy):
    root, _ = toy
    for path in _full(root, "entity_tracking"):
        recs = _jsonl(path)
        assert {r["numops"] for r in recs} >= {0, 1, 2, 3}
        for r in recs:
            assert {"sample_id", "numops", "input_prefix", "options", "example_id"} <= r.keys()
            assert len(r["options"]) == 5 == len(set(r["options"]))
            truth, _, touched = _simulate(r["input_prefix"])
            assert _said(r["options"][0]) == truth, r
            assert all(_said(o) != truth for o in r["options"][1:]), r
            assert touched == r["numops"], r


def test_wug_records(toy):
    root, _ = toy
    recs = _jsonl(root / "evaluation_data/full_eval/wug_adj_nominalization/wug_adj_nominalization.jsonl")
    assert len(recs) == 100
    for r in recs:
        first, second = r["sentences"].split("\t")
        adj = re.fullmatch(r"Create a noun out of the following adjective: (\w+)\. \w+", first)[1]
        assert second.startswith(f"Create a noun out of the following adjective: {adj}. ")
        assert first.endswith(" " + lexicon.nominalize(adj)) and first != second
        assert isinstance(r["ratio"], float) and 0.0 <= r["ratio"] <= 1.0
        assert adj[: -4 if adj.endswith("able") else -3] in lexicon.WUG_EVAL_STEMS  # novel stems


def _corpus_words(root: Path) -> Counter:
    return Counter(
        w.lower().strip(".,?!:")
        for p in sorted((root / "corpus").rglob("*.txt"))
        for w in p.read_text(encoding="utf-8").split()
    )


def _expected_past(verb: str) -> tuple[str, str]:
    """(preferred, other) past of a nonce verb, re-derived from the verb lexicon: the rhyme gang's
    vowel change where its irregular verbs outnumber its regular ones plus one, else -ed."""

    def rhyme(v):
        return re.search(r"[aeiou]+[^aeiou]*$", v)[0]

    def regular(v):
        return v + ("d" if v.endswith("e") else "ed")

    r = rhyme(verb)
    gang = [(v, past) for v, (past, _) in toytasks.PAST_VERBS.items() if rhyme(v) == r]
    irregular = Counter(past[len(v) - len(r) :] for v, past in gang if past != regular(v))
    if irregular and sum(irregular.values()) > len(gang) - sum(irregular.values()) + 1:
        return verb[: -len(r)] + irregular.most_common(1)[0][0], regular(verb)
    return regular(verb), verb[: -len(r)] + {"u": "a", "a": "u", "o": "a", "e": "o"}[r[0]] + r[1:]


def test_wug_past_records(toy):
    root, counts = toy
    assert all(toytasks.PAST_VERBS[v][0] == past for v, (_, past, _) in lexicon.VERBS.items())
    recs = _jsonl(root / "evaluation_data/full_eval/wug_past_tense/wug_past_tense.jsonl")
    assert (
        len(recs) == 100
        and counts["eval"]["evaluation_data/fast_eval/wug_past_tense/wug_past_tense.jsonl"] == 50
    )
    ed_share = {True: [], False: []}  # rhymes with an irregular gang -> shares of -ed
    for r in recs:
        assert set(r) == {"sentences", "ratio"} and isinstance(r["ratio"], float) and 0.5 <= r["ratio"] <= 1.0
        cands = r["sentences"].split("\t")
        verb, first = re.fullmatch(
            r"Create the past tense of the following verb: (\w+)\. (\w+)", cands[0]
        ).groups()
        assert verb in toytasks.PAST_EVAL_VERBS and len(cands) == 2
        assert (first, cands[1].split(". ")[-1]) == _expected_past(verb), r
        assert cands[1].startswith(f"Create the past tense of the following verb: {verb}. ")
        irregular = not first.endswith("ed")
        ed_share[irregular].append(1 - r["ratio"] if irregular else r["ratio"])
    assert len(ed_share[True]) >= 30 and len(ed_share[False]) >= 30
    assert max(ed_share[True]) < 0.5 < min(ed_share[False])  # rhyming with sing/sang lowers -ed


def test_eval_nonce_words_absent_from_corpus_training_ones_taught(toy):
    root, _ = toy
    words = _corpus_words(root)
    past_forms = {f for v in toytasks.PAST_EVAL_VERBS for f in _expected_past(v)}
    for w in [*toytasks.PAST_EVAL_VERBS, *past_forms, *toytasks.COMPS_EVAL_WUGS]:
        assert words[w] == 0, w
    train = (root / "corpus/train/wiki.txt").read_text(encoding="utf-8")
    for verb, past in toytasks.PAST_TRAIN_VERBS.items():  # lessons answer with the verb's one past
        for said in re.findall(rf"following verb: {verb}\. (\w+)", train):
            assert said == past, (verb, said)
    assert sum(f"following verb: {v}." in train for v in toytasks.PAST_TRAIN_VERBS) >= 50
    assert sum(f"Therefore, a {w} " in train for w in toytasks.COMPS_TRAIN_WUGS) >= 12
    assert "Dogs can bark." in train and "Yesterday " in (root / "corpus/train/stories.txt").read_text()


def _bound_concept(prefix: str) -> str:
    """The concept the prefix's last nonce word (or bare noun) names: 'A wug is a dog. ... a wug'."""
    if " " not in prefix.removeprefix("A ").removeprefix("An "):
        return prefix.split()[-1]
    defs = dict(re.findall(r"An? (\w+) is an? (\w+)\.", prefix))
    return defs[re.search(r"Therefore, an? (\w+)$", prefix)[1]]


def test_comps_records(toy):
    root, _ = toy
    uid = {
        "comps_base": "base",
        "comps_wugs": "wugs",
        "comps_wugs_dist-before": "wugs_dist_before",
        "comps_wugs_dist-in-between": "wugs_dist_in_between",
    }  # the official reader's mapping
    for concept, (plural, cls) in toytasks.CONCEPTS.items():  # the table speaks of toy-world words
        assert (
            lexicon.NOUNS[concept][0] == plural if cls in ("animal", "person") else concept in lexicon.THINGS
        )
    fields = {
        "id",
        "property",
        "acceptable_concept",
        "unacceptable_concept",
        "negative_sample_type",
        "similarity",
        "prefix_acceptable",
        "prefix_unacceptable",
        "property_phrase",
        "distraction_type",
    }
    paths = _full(root, "comps")
    assert sorted(uid) == [p.stem for p in paths]
    for path in paths:
        recs = _jsonl(path)
        assert 50 <= len(recs) <= 100 and uid[path.stem]
        for r in recs:
            assert set(r) == fields | ({"nonsense_words"} if "wugs" in path.stem else set()), r
            assert r["property_phrase"] == r["property"] + "." and 0.0 <= r["similarity"] <= 1.0
            good, bad = _bound_concept(r["prefix_acceptable"]), _bound_concept(r["prefix_unacceptable"])
            assert (good, bad) == (r["acceptable_concept"], r["unacceptable_concept"]), r
            assert (
                good in toytasks.PROPERTIES[r["property"]] and bad not in toytasks.PROPERTIES[r["property"]]
            )
            if "wugs" in path.stem:
                assert r["prefix_acceptable"].count(". ") == (1 if r["distraction_type"] == "none" else 2)
                assert set(r["nonsense_words"]) <= set(toytasks.COMPS_EVAL_WUGS)
            if "dist" in path.stem:  # both prefixes name both concepts; only the binding differs
                assert sorted(r["prefix_acceptable"].split()) == sorted(r["prefix_unacceptable"].split())


def _child_aoa(ages: np.ndarray, props: np.ndarray) -> float | None:
    """Age (months) where a 4-parameter sigmoid fitted as the official evaluator does crosses 0.5."""

    def sigmoid(x, a, b, c, d):
        return a / (1 + np.exp(-b * (x - c))) + d

    try:
        (a, b, c, d), _ = curve_fit(
            sigmoid,
            ages,
            props,
            p0=[1, 0.5, ages.mean(), 0],
            maxfev=10_000,
            bounds=([0, 0, ages[0], -0.5], [2, 1, ages[-1], 0.5]),
        )
    except RuntimeError:
        return None
    ratio = a / (0.5 - d) if d < 0.5 else 0.0
    return c - math.log(ratio - 1) / b if ratio > 1 and b > 0 else None


def test_aoa_files(toy):
    root, _ = toy
    aoa = root / "evaluation_data/full_eval/aoa"
    words = json.loads((aoa / "cdi_childes.json").read_text(encoding="utf-8"))
    assert 50 <= len(words) <= 70 and all(len(w) > 1 for w in words)
    docs = "\n".join(line for doc in build.aoa_docs(0) for line in doc)
    for word, entries in words.items():
        assert 1 <= len(entries) <= 8
        for e in entries:
            stats = e["word_in_context_stats"]
            assert set(stats) == {"count", "frequency", "log_freq_per_million"} and isinstance(
                stats["count"], int
            )
            assert e["context"].strip() and f"{e['context'].strip()} {word}" in docs, (word, e)
    with open(aoa / "cdi_human.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["word"] + [str(a) for a in range(16, 31)]
    assert sorted(r[0] for r in rows[1:]) == sorted(words)
    table = np.array([[float(x) if x else np.nan for x in r[1:]] for r in rows[1:]])
    assert np.nanmin(table) >= 0.0 and np.nanmax(table) <= 1.0 and np.isnan(table).sum() <= 10
    means = np.nanmean(table, axis=0)
    assert means[-1] - means[0] > 0.5 and np.corrcoef(means, np.arange(len(means)))[0, 1] > 0.9
    ages, child = np.arange(16, 31, dtype=float), []
    train = Counter(
        w.lower().strip(".,?!:")
        for p in (root / "corpus/train").glob("*.txt")
        for w in p.read_text(encoding="utf-8").split()
    )
    for r, props in zip(rows[1:], table):
        ok = ~np.isnan(props)
        child.append((_child_aoa(ages[ok], props[ok]), math.log(train[r[0]])))
    fitted = [(a, f) for a, f in child if a is not None and 17 <= a <= 29]
    assert len(fitted) >= 0.9 * len(child)
    assert spearmanr(*zip(*fitted))[0] < -0.3  # frequent words: earlier child AoA


def _r2(cols: list[np.ndarray], y: np.ndarray) -> float:
    x = np.column_stack([np.ones(len(y))] + cols)
    resid = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
    return 1 - resid.var() / y.var()


def test_reading_csv_schema_and_surprisal_signal(toy):
    root, _ = toy
    path = root / "evaluation_data/full_eval/reading/reading_data.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == evalsets.READING_COLUMNS and len(rows) >= 100
    for r in rows:
        assert r["sentence"].startswith(r["item"] + " " + r["word"])
        assert int(r["context_length"]) == len(r["item"].split()) and int(r["length"]) == len(r["word"])
        assert (r["prev_word"] == "") == (int(r["prev_length"]) == -1) == (int(r["context_length"]) == 1)
        assert all(float(r[k]) > 0 for k in ("RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound"))
    # Surprisal from an independent bigram count over the train files explains RT variance that
    # frequency, length and context length (with interactions, as in the pipeline) do not.
    text = " ".join((root / "corpus/train" / f"{s}.txt").read_text() for s in SOURCES)
    words = [w.lower().strip(".,?!:") for w in text.split()]
    uni, bi = Counter(words), Counter(zip(words, words[1:]))

    def norm(w):
        return w.lower().strip(".,?!:")

    pred = np.array(
        [
            -math.log(
                (bi[norm(r["item"].split()[-1]), norm(r["word"])] + 0.1)
                / (uni[norm(r["item"].split()[-1])] + 0.1 * len(uni))
            )
            for r in rows
        ]
    )
    f, n, c = (np.array([float(r[k]) for r in rows]) for k in ("Subtlex_log10", "length", "context_length"))
    base = [f, n, c, f * n, f * c, n * c]
    for dv in ("RTfirstpass", "self_paced_reading_time"):
        y = np.array([float(r[dv]) for r in rows])
        r2_base, r2_model = _r2(base, y), _r2(base + [pred], y)
        assert 100 * (r2_model - r2_base) / (1 - r2_base) > 3.0, dv


@pytest.mark.slow
def test_cli_refuses_non_empty_out_and_writes_fresh(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "cdhpc.toydata", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and str(out) in proc.stderr and "not an empty directory" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    with pytest.raises(FileExistsError):
        build.write_toy(out, **SMALL)
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [str(empty), "--seed", "1", "--train-docs", "30", "--seed-docs", "10", "--test-docs", "10"]
    assert build.main(argv) == 0
    assert "corpus/train: 30 docs" in capsys.readouterr().out
    assert (empty / "corpus/train/stories.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "taken"]


def test_bad_sizes_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="train_docs=0"):
        build.write_toy(tmp_path / "x", train_docs=0)
    assert not (tmp_path / "x").exists()


def test_import_does_not_pull_torch():
    code = (
        "import sys, cdhpc.toydata; "
        "print(sorted(m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr
