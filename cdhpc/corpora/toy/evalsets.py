"""The toy evaluation sets in the BabyLM 2025 record formats: BLiMP and its supplement, EWoK, entity
tracking, WUG, and the reading / eye-tracking rows. Pure and seeded."""

from __future__ import annotations

import csv
import io
import json
import math
import random
from collections import Counter

from cdhpc.corpora.toy.corpus import (
    AMBIREF_OBJECTS,
    MAX_ENTITY_WORDS,
    N_BOXES,
    SIZE_CONTEXTS,
    SOCIAL,
    _box_options,
    _hypernym_pair,
    _size_pair,
    _size_target,
    _social_target,
    _with_article,
    box_puzzle,
    world_sentence,
)
from cdhpc.corpora.toy.lexicon import (
    ANIMALS,
    HYPERNYMS,
    IRREGULAR,
    NAMES,
    PEOPLE,
    REFLEXIVE,
    STORY_ADJS,
    THINGS,
    TRANSITIVE,
    WUG_EVAL_STEMS,
    WUG_PROMPT,
    _cap,
    _flip,
    _join,
    _noun_form,
    _reflexive,
    _subject,
    _verb_form,
    agreement_parts,
    agreement_sentence,
    nominalize,
)

# ------------------------------------------------------------ evaluation sets ----------------
REGULAR = [n for n in PEOPLE + ANIMALS if n not in IRREGULAR]


def _sva_pair(shape: str, nouns: list[str]):
    def pair(rng: random.Random) -> tuple[str, str]:
        number = rng.choice(["sg", "pl"])
        subj, verb, tail = agreement_parts(rng, shape, number, nouns)
        return _join(subj, _verb_form(verb, number), tail), _join(subj, _verb_form(verb, _flip(number)), tail)

    return pair


def _det_noun_pair(adj_p: float):
    def pair(rng: random.Random) -> tuple[str, str]:
        number, noun = rng.choice(["sg", "pl"]), rng.choice(PEOPLE + ANIMALS)
        det = rng.choice(["this", "that"] if number == "sg" else ["these", "those"])
        adj = rng.choice(STORY_ADJS) if rng.random() < adj_p else ""
        verb = _verb_form(rng.choice(TRANSITIVE), "sg", rng.choice(["present", "past"]))
        head = f"{rng.choice(list(NAMES))} {verb}"
        return tuple(_join(head, det, adj, _noun_form(noun, n)) for n in (number, _flip(number)))

    return pair


def _anaphor_pair(by: str):
    def pair(rng: random.Random) -> tuple[str, str]:
        number = "sg" if by == "gender" else rng.choice(["sg", "pl"])
        subj, gender = _subject(rng, number)
        while number == "sg" and gender is None:
            subj, gender = _subject(rng, number)
        good = _reflexive(number, gender, rng)
        same_number = by == "gender"  # a gender pair keeps the number, a number pair flips it
        bad = rng.choice([r for r, (n, _) in REFLEXIVE.items() if (n == number) == same_number and r != good])
        verb = _verb_form(rng.choice(TRANSITIVE), number, rng.choice(["present", "past"]))
        return _join(subj, verb, good), _join(subj, verb, bad)

    return pair


# UID -> (linguistics_term, pair maker); field is "morphology" for all, as in BLiMP.
BLIMP_UIDS = {
    "regular_plural_subject_verb_agreement_1": ("subject_verb_agreement", _sva_pair("simple", REGULAR)),
    "irregular_plural_subject_verb_agreement_1": (
        "subject_verb_agreement",
        _sva_pair("simple", list(IRREGULAR)),
    ),
    "distractor_agreement_relational_noun": ("subject_verb_agreement", _sva_pair("pp", None)),
    "distractor_agreement_relative_clause": ("subject_verb_agreement", _sva_pair("rc", None)),
    "determiner_noun_agreement_1": ("determiner_noun_agreement", _det_noun_pair(0.0)),
    "determiner_noun_agreement_with_adjective_1": ("determiner_noun_agreement", _det_noun_pair(1.0)),
    "anaphor_gender_agreement": ("anaphor_agreement", _anaphor_pair("gender")),
    "anaphor_number_agreement": ("anaphor_agreement", _anaphor_pair("number")),
}


def _unique(rng: random.Random, n: int, make) -> list:
    """n distinct items from make(rng) (distinct by their JSON form)."""
    seen, out = set(), []
    for _ in range(n * 50):
        item = make(rng)
        key = json.dumps(item, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(item)
        if len(out) == n:
            return out
    raise AssertionError(f"only {len(out)} distinct items of {n}")


def blimp_records(rng: random.Random, uid: str, n: int) -> list[dict]:
    term, make = BLIMP_UIDS[uid]
    recs = []
    for i, (good, bad) in enumerate(_unique(rng, n, make)):
        g, b = good.split(), bad.split()
        one_word = len(g) == len(b) and sum(x != y for x, y in zip(g, b)) == 1
        recs.append(
            {
                "sentence_good": good,
                "sentence_bad": bad,
                "field": "morphology",
                "linguistics_term": term,
                "UID": uid,
                "simple_LM_method": True,
                "one_prefix_method": one_word,
                "two_prefix_method": False,
                "lexically_identical": False,
                "pairID": str(i),
            }
        )
    return recs


def _hypernym_item(rng: random.Random) -> tuple:
    hypo, hyper, other = _hypernym_pair(rng)
    who = rng.choice(list(NAMES))
    link = rng.choice(["If {w} has {x}, then {w} has {y}.", "{w} has {x}, so {w} has {y}."])
    contrast = rng.choice(["hypernym_and_base/converse", "hypernym_and_base/other"])
    good = link.format(w=who, x=_with_article(hypo), y=_with_article(hyper))
    bad = (
        link.format(w=who, x=_with_article(hyper), y=_with_article(hypo))
        if contrast.endswith("converse")
        else link.format(w=who, x=_with_article(hypo), y=_with_article(other))
    )
    return sorted(HYPERNYMS).index(hyper), contrast, good, bad


def _aux_item(rng: random.Random) -> tuple:
    number, noun = rng.choice(["sg", "pl"]), rng.choice(PEOPLE + ANIMALS)
    be, (a1, a2), n = ("is" if number == "sg" else "are"), rng.sample(STORY_ADJS, 2), _noun_form(noun, number)
    return number, f"{_cap(be)} the {n} that {be} {a1} {a2}?", f"{_cap(be)} the {n} that {a1} {be} {a2}?"


def supplement_records(rng: random.Random, name: str, n: int) -> list[dict]:
    """`hypernym` (row, contrast) and `subject_aux_inversion` (row, ambiguous, template), each
    with pair_ID, sentence_good, sentence_bad, as the real supplement files carry."""
    if name == "hypernym":
        return [
            {"pair_ID": i, "row": row, "contrast": c, "sentence_good": g, "sentence_bad": b}
            for i, (row, c, g, b) in enumerate(_unique(rng, n, _hypernym_item))
        ]
    return [
        {
            "pair_ID": i,
            "row": 0,
            "ambiguous": False,
            "template": f"1_RC_unambig_{num}",
            "sentence_good": g,
            "sentence_bad": b,
        }
        for i, (num, g, b) in enumerate(_unique(rng, n, _aux_item))
    ]


def _ewok_physical(rng: random.Random) -> dict:
    s, b = _size_pair(rng)
    ctx, form = rng.choice(SIZE_CONTEXTS), rng.choice(["bigger", "smaller"])
    diff = rng.choice(["variable swap", "concept swap"])
    swapped_form = form if diff == "variable swap" else {"bigger": "smaller", "smaller": "bigger"}[form]
    other = _size_target(b, s, swapped_form)
    return {
        "Domain": "physical-relations",
        "ConceptA": "bigger",
        "ConceptB": "smaller",
        "ContextType": "direct",
        "ContextDiff": "variable swap",
        "TargetDiff": diff,
        "Context1": ctx.format(s=s, b=b),
        "Context2": ctx.format(s=b, b=s),
        "Target1": _size_target(s, b, form),
        "Target2": other,
    }


def _ewok_social(rng: random.Random) -> dict:
    concept = rng.choice(SOCIAL)
    (a, b), ctx, role = rng.sample(list(NAMES), 2), rng.choice(concept[2]), rng.randrange(2)
    diff = rng.choice(["variable swap", "concept swap"])
    if diff == "variable swap":
        other = _social_target(concept, b, a, role)
    else:
        other = f"{a} is {b}'s {concept[1]}." if role == 0 else f"{b} is {a}'s {concept[0]}."
    return {
        "Domain": "social-relations",
        "ConceptA": concept[0],
        "ConceptB": concept[1],
        "ContextType": "direct",
        "ContextDiff": "variable swap",
        "TargetDiff": diff,
        "Context1": ctx.format(a=a, b=b),
        "Context2": ctx.format(a=b, b=a),
        "Target1": _social_target(concept, a, b, role),
        "Target2": other,
    }


EWOK_DOMAINS = {"physical-relations": _ewok_physical, "social-relations": _ewok_social}
# file -> (objects, whether "Move the contents of Box a to Box b." operations occur)
ENTITY_FILES = {
    "regular": (THINGS, False),
    "ambiref": (AMBIREF_OBJECTS, False),
    "move_contents": (THINGS, True),
}


def _entity_item(rng: random.Random, objects: list[str], contents: bool, numops: int) -> dict:
    for _ in range(2000):
        n_ops = 0 if numops == 0 and rng.random() < 0.5 else rng.randint(max(1, 2 * numops), 7)
        text, boxes, touched = box_puzzle(rng, objects, n_ops, contents)
        hits = [q for q in range(N_BOXES) if touched[q] == numops]
        if hits:
            q = rng.choice(hits)
            prefix, options = f"{text} Box {q} contains ", _box_options(rng, boxes, q, objects)
            if max(len((prefix + o).split()) for o in options) <= MAX_ENTITY_WORDS:
                return {"numops": numops, "input_prefix": prefix, "options": options}
    raise AssertionError(f"no box touched by exactly {numops} operations within {MAX_ENTITY_WORDS} words")


def entity_records(rng: random.Random, name: str, n: int) -> list[dict]:
    """Records like the real files: sample_id, numops (operations touching the queried box,
    0..3), input_prefix, options (options[0] correct), example_id."""
    objects, contents = ENTITY_FILES[name]
    items = [_entity_item(rng, objects, contents, i * 4 // n) for i in range(n)]
    return [{"sample_id": i, **it, "example_id": i} for i, it in enumerate(items)]


def wug_records(rng: random.Random, n: int) -> list[dict]:
    """Novel -able / -ish adjectives; the first sentence is the rule's (preferred) noun and
    `ratio` is the simulated share of 11 raters preferring it."""
    recs = []
    for i, stem in enumerate(WUG_EVAL_STEMS[:n]):
        adj = stem + ("able" if i % 2 == 0 else "ish")
        bad = adj + ("ness" if adj.endswith("able") else "ity")
        pair = [f"{WUG_PROMPT} {adj}. {w}" for w in (nominalize(adj), bad)]
        recs.append({"sentences": "\t".join(pair), "ratio": rng.randint(6, 11) / 11})
    rng.shuffle(recs)
    return recs


# ------------------------------------------------------------ reading / eye tracking ---------
READING_COLUMNS = [
    "",
    "item",
    "word",
    "word2",
    "sentence",
    "context_length",
    "sent_id",
    "item_id",
    "list",
    "Subtlex_log10",
    "length",
    "RTfirstfix",
    "RTfirstpass",
    "RTgopast",
    "RTrightbound",
    "self_paced_reading_time",
    "ELAN",
    "LAN",
    "N400",
    "P600",
    "EPNP",
    "PNP",
    "prev_word",
    "prev_item",
    "prev_length",
]


PUNCTUATION = ".,?!:"  # stripped from a word's ends before it is counted


def _norm(word: str) -> str:
    return word.lower().strip(PUNCTUATION)


def bigram_counts(docs: list[list[str]]) -> tuple[Counter, Counter]:
    """Unigram and within-line bigram counts of normalised words: the grammar's own
    frequency and predictability, estimated on the training text."""
    every, bi = [], Counter()
    for doc in docs:
        for line in doc:
            words = [w.strip(PUNCTUATION) for w in line.lower().split()]  # _norm, a line at a time
            every += words
            bi.update(zip(words, words[1:]))
    return Counter(every), bi


def _surprisal_bits(uni: Counter, bi: Counter, prev: str, word: str) -> float:
    """Add-0.1 smoothed bigram surprisal -log2 P(word | prev) (bits)."""
    return -math.log2((bi[prev, word] + 0.1) / (uni[prev] + 0.1 * (len(uni) + 1)))


def _zscores(xs: list[float]) -> list[float]:
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)) or 1.0
    return [(x - mean) / sd for x in xs]


def _reading_measures(
    rng: random.Random, length: int, freq_z: float, surp_z: float, prev_z: float
) -> list[float]:
    """Simulated RTs (ms) and ERP amplitudes: length and frequency effects plus a surprisal
    effect that a baseline of frequency/length/context length cannot explain."""
    g = rng.gauss
    first_fix = max(60.0, 200 + 6 * length - 10 * freq_z + 18 * surp_z + g(0, 25))
    first_pass = first_fix + max(0.0, 4 * length + 10 * surp_z + g(0, 20))
    go_past = first_pass + max(0.0, 30 * surp_z + g(0, 40))
    right_bound = first_pass + max(0.0, 12 * surp_z + g(0, 15))
    spr = 300 + 3 * length - 8 * freq_z + 15 * surp_z + 10 * prev_z + g(0, 30)
    erps = [g(0, 1), g(0, 1), 0.8 * surp_z + g(0, 1), 0.2 * surp_z + g(0, 1), g(0, 1), g(0, 1)]
    return [round(x, 3) for x in [first_fix, first_pass, go_past, right_bound, spr] + erps]


def reading_rows(rng: random.Random, n_sentences: int, uni: Counter, bi: Counter) -> list[list]:
    """Rows of reading_data.csv: one per non-initial word of each sentence, in order. As in the
    real file, `item` is the words before `word` (its context) and `sent_id` the sentence."""

    def first_sentence(r: random.Random) -> str:
        return r.choice([agreement_sentence, world_sentence])(r).split(". ")[0].rstrip(".") + "."

    sents = _unique(rng, n_sentences, first_sentence)
    words = [(s_id, pos, s.split()) for s_id, s in enumerate(sents) for pos in range(1, len(s.split()))]
    surp = [_surprisal_bits(uni, bi, _norm(w[pos - 1]), _norm(w[pos])) for _, pos, w in words]
    surp_z, freq_z = _zscores(surp), _zscores([math.log10(uni[_norm(w[pos])] + 1) for _, pos, w in words])
    rows = []
    for k, (s_id, pos, w) in enumerate(words):
        prev_z = surp_z[k - 1] if pos > 1 else 0.0
        prev = [w[pos - 1], " ".join(w[: pos - 1]), len(w[pos - 1])] if pos > 1 else ["", "", -1]
        rows.append(
            [
                k,
                " ".join(w[:pos]),
                w[pos],
                _norm(w[pos]).upper(),
                " ".join(w),
                pos,
                s_id,
                k,
                1,
                round(math.log10(uni[_norm(w[pos])] + 1), 4),
                len(w[pos]),
                *_reading_measures(rng, len(w[pos]), freq_z[k], surp_z[k], prev_z),
                *prev,
            ]
        )
    return rows


def render_csv(rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(READING_COLUMNS)
    writer.writerows(rows)
    return buf.getvalue()
