"""Toy data for three more BabyLM 2025 zero-shot tasks, from the toy world of `cdhpc.toydata`.

- wug_past_tense: past tense of nonce verbs. The toy language forms the past by analogy with the
  real verbs that rhyme (sing/sang, ring/rang -> spling/splang) where such a gang outnumbers the
  regular verbs of that rhyme, else by "-ed" (jump/jumped -> blump/blumped).
- COMPS (Misra et al. 2023): properties of concepts ("A dog can bark.") and their inheritance to
  nonce words ("A wug is a dog. Therefore, a wug can bark."), with and without a distractor.
- AoA (Chang & Bergen 2022): contexts of lexicon words from generated documents, and simulated
  child production curves whose midpoint comes earlier for words frequent in the training corpus.

Leaf module: pure functions of seeded `random.Random` streams and of what `toydata` passes in
(documents, counts, the lexicon), so `toydata` imports it without a cycle. The verb and concept
tables restate toydata's words (tests check they agree); nonce words are seed-independent.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
from collections import Counter


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _with_article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


# ------------------------------------------------------------ past tense (wug_past_tense) ------
PAST_PROMPT = "Create the past tense of the following verb:"
# lemma past object-noun ("-": none). The first 17 are toydata.VERBS (same past forms); the rest
# exist only for the past tense: they make rhyme gangs, irregular (ing->ang, ink->ank, eep->ept,
# ind->ound) and regular (ump, ash, alk, ock, elp), with a few regular verbs inside the gangs.
_PAST = """sleep slept -|run ran -|sing sang -|jump jumped -|smile smiled -|laugh laughed -
|play played -|swim swam -|see saw dog|like liked cat|help helped man|watch watched bird|wash washed cup
|hurt hurt -|love loved dog|find found key|chase chased cat|ring rang bell|spring sprang -
|drink drank water|sink sank -|shrink shrank -|stink stank -|wink winked -|keep kept coin|weep wept -
|sweep swept floor|creep crept -|peep peeped -|beep beeped -|grind ground corn|bind bound book
|bump bumped ball|dump dumped stone|pump pumped water|crash crashed -|flash flashed -
|splash splashed -|walk walked -|talk talked -|stalk stalked bird|knock knocked -|lock locked door
|rock rocked -|yelp yelped -"""
PAST_VERBS: dict[str, tuple[str, str | None]] = {
    f[0]: (f[1], None if f[2] == "-" else f[2])
    for f in (e.split() for e in _PAST.replace("\n", "").split("|"))
}
IRREGULAR_RHYMES = ("ing", "ink", "eep", "ind")
REGULAR_RHYMES = ("ump", "ash", "alk", "ock", "elp")
# Vowel change of the (dispreferred) analogical form for regular rhymes: blump -> blamp.
_VOWEL_SHIFT = {"u": "a", "a": "u", "o": "a", "e": "o", "i": "a"}
_ONSETS = ("bl br cl cr dr fl fr gl gr pl pr sk sn sp spl st str tr tw zw gw vr shl thr sm kl dw sc").split()
# Onset+rhyme strings that are English words (or toy verbs): never nonce verbs.
_ENGLISH = set(
    """bling bring cling fling sting string blink brink clink drink plink skink stink
bleep creep steep blind grind clump crump flump frump grump plump stump trump brash clash crash
flash plash smash splash stash thrash trash stalk block clock crock flock frock smock stock shlock
blash""".split()
)


def rhyme(verb: str) -> str:
    """The last vowel letters and what follows them: spling -> ing, sleep -> eep."""
    return re.search(r"[aeiou]+[^aeiou]*$", verb)[0]


def regular_past(verb: str) -> str:
    return verb + ("d" if verb.endswith("e") else "ed")


def _is_regular(lemma: str) -> bool:
    return PAST_VERBS[lemma][0] == regular_past(lemma)


def irregular_share(end: str) -> float:
    """Analogical pull of a rhyme: irregular / (irregular + regular + 1) over the real verbs
    ending in it (the +1 is the default rule's own pull); 0 where no irregular verb rhymes."""
    gang = [v for v in PAST_VERBS if rhyme(v) == end]
    n_irr = sum(not _is_regular(v) for v in gang)
    return n_irr / (len(gang) + 1)


def analogical_past(verb: str) -> str:
    """The vowel-change past: the rhyme gang's past rhyme (spling -> splang), or, for a rhyme
    without irregular verbs, a plain vowel shift (blump -> blamp)."""
    r = rhyme(verb)
    onset = verb[: -len(r)]
    gang = [v for v in PAST_VERBS if rhyme(v) == r and not _is_regular(v)]
    if gang:
        past_rhymes = Counter(PAST_VERBS[v][0][len(v) - len(r) :] for v in gang)
        return onset + past_rhymes.most_common(1)[0][0]
    return onset + _VOWEL_SHIFT[r[0]] + r[1:]


def past_candidates(verb: str) -> tuple[str, str, float]:
    """(preferred past, other past, simulated share of people preferring the first): the
    analogical form where the gang's pull exceeds 1/2, else "-ed" (chosen by 90%)."""
    share = irregular_share(rhyme(verb))
    if share > 0.5:
        return analogical_past(verb), regular_past(verb), share
    return regular_past(verb), analogical_past(verb), 0.9


def _nonce_verbs() -> tuple[dict[str, str], list[str]]:
    """Seed-independent nonce verbs: 7 per rhyme for the corpus, each with its one past form
    (analogical with the rhyme's irregular share), and 100 others for the evaluation."""
    rng = random.Random("cdhpc-toy-wugpast")
    train: dict[str, str] = {}
    evals: list[list[str]] = []
    for r in IRREGULAR_RHYMES + REGULAR_RHYMES:
        verbs = [o + r for o in _ONSETS if o + r not in _ENGLISH and o + r not in PAST_VERBS]
        rng.shuffle(verbs)
        for v in verbs[:7]:
            irregular = rng.random() < irregular_share(r)
            train[v] = analogical_past(v) if irregular else regular_past(v)
        evals.append(verbs[7:])
    round_robin = [g[i] for i in range(max(map(len, evals))) for g in evals if i < len(g)]
    return train, round_robin[:100]


PAST_TRAIN_VERBS, PAST_EVAL_VERBS = _nonce_verbs()


def past_lesson(rng: random.Random) -> str:
    """The past-tense prompt answered, for a real verb or a training nonce verb."""
    if rng.random() < 0.4:
        verb = rng.choice(list(PAST_VERBS))
        return f"{PAST_PROMPT} {verb}. {PAST_VERBS[verb][0]}"
    verb = rng.choice(list(PAST_TRAIN_VERBS))
    return f"{PAST_PROMPT} {verb}. {PAST_TRAIN_VERBS[verb]}"


def past_sentence(rng: random.Random, who: str) -> str:
    """A real verb used in the past tense: "Yesterday Anna rang the bell." """
    verb = rng.choice(list(PAST_VERBS))
    past, obj = PAST_VERBS[verb]
    return f"Yesterday {who} {past}{f' the {obj}' if obj else ''}."


def wug_past_records(rng: random.Random, n: int) -> list[dict]:
    """Records like wug_adj_nominalization: the candidates' sentences, tab-separated, the toy
    language's preferred past first, and `ratio` = simulated share of 20 raters preferring it."""
    recs = []
    for verb in PAST_EVAL_VERBS[:n]:
        first, second, share = past_candidates(verb)
        votes = min(20, max(11, round(20 * share + rng.gauss(0, 1.5))))
        pair = [f"{PAST_PROMPT} {verb}. {w}" for w in (first, second)]
        recs.append({"sentences": "\t".join(pair), "ratio": votes / 20})
    rng.shuffle(recs)
    return recs


# ------------------------------------------------------------ COMPS ---------------------------
# concept plural class; every concept is a toydata noun (NOUNS) or thing (THINGS).
_CONCEPTS = """ant ants animal|mouse mice animal|frog frogs animal|bird birds animal
|rabbit rabbits animal|cat cats animal|dog dogs animal|goat goats animal|horse horses animal
|bear bears animal|elephant elephants animal|whale whales animal|king kings person
|queen queens person|farmer farmers person|teacher teachers person|bell bells thing
|lamp lamps thing|key keys thing|book books thing|cup cups thing|ball balls thing|kite kites thing
|apple apples fruit|pear pears fruit"""
CONCEPTS: dict[str, tuple[str, str]] = {
    f[0]: (f[1], f[2]) for f in (e.split() for e in _CONCEPTS.replace("\n", "").split("|"))
}
# property phrase (singular subject): the concepts that have it. Nothing else has it.
_PROPERTIES = """can bark:dog|can purr:cat|can fly:bird kite|can croak:frog|can hop:rabbit frog
|can squeak:mouse|has a trunk:elephant|has feathers:bird|has long ears:rabbit|gives milk:goat
|can be ridden:horse|sleeps all winter:bear|lives in the sea:whale|has six legs:ant
|has fur:cat dog rabbit mouse goat bear horse|can swim:frog whale dog bear|wears a crown:king queen
|works on a farm:farmer|works at a school:teacher|can ring:bell|gives light:lamp|opens a lock:key
|has pages:book|holds water:cup|can bounce:ball|is sweet:apple pear
|can talk:king queen farmer teacher"""
PROPERTIES: dict[str, tuple[str, ...]] = {
    p: tuple(c.split()) for p, c in (e.split(":") for e in _PROPERTIES.replace("\n", "").split("|"))
}
FACTS = [(p, c) for p, cs in PROPERTIES.items() for c in cs]
# file stem -> distraction_type (the official reader's UIDs: base, wugs, wugs_dist_before, ...)
COMPS_FILES = {
    "comps_base": "none",
    "comps_wugs": "none",
    "comps_wugs_dist-before": "before",
    "comps_wugs_dist-in-between": "in-between",
}
COMPS_TRAIN_WUGS = (
    "tib",
    "blap",
    "zorb",
    "gip",
    "wem",
    "frel",
    "kug",
    "vop",
    "muz",
    "sloob",
    "teb",
    "yeck",
    "narf",
    "hif",
    "pov",
    "dorn",
)
COMPS_EVAL_WUGS = (
    "wug",
    "dax",
    "fep",
    "blick",
    "zup",
    "tove",
    "mib",
    "kwim",
    "pilk",
    "lorp",
    "nuz",
    "yorb",
    "jeft",
    "snib",
    "vung",
    "gorm",
)


def _plural_phrase(prop: str) -> str:
    verb, rest = prop.split(" ", 1)
    verb = {"has": "have", "is": "are", "can": "can"}.get(verb, verb.removesuffix("s"))
    return f"{verb} {rest}"


def concept_properties(concept: str) -> set[str]:
    return {p for p, cs in PROPERTIES.items() if concept in cs}


def _similarity(a: str, b: str) -> float:
    """Half taxonomic (same class) and half property overlap (Jaccard)."""
    pa, pb = concept_properties(a), concept_properties(b)
    same = CONCEPTS[a][1] == CONCEPTS[b][1]
    return round(0.5 * same + 0.5 * len(pa & pb) / len(pa | pb), 3)


def _negatives(prop: str, concept: str) -> dict[str, list[str]]:
    """Concepts lacking `prop`, by COMPS negative-sample type: taxonomic (same class), overlap
    (shares another property), random (another class)."""
    lacking = [c for c in CONCEPTS if c not in PROPERTIES[prop]]
    cls, props = CONCEPTS[concept][1], concept_properties(concept)
    out = {
        "taxonomic": [c for c in lacking if CONCEPTS[c][1] == cls],
        "overlap": [c for c in lacking if concept_properties(c) & props],
        "random": [c for c in lacking if CONCEPTS[c][1] != cls],
    }
    return {k: v for k, v in out.items() if v}


def _wug_prefix(wug: str, concept: str, other_wug: str, other: str, distraction: str) -> str:
    """The prefix 'A wug is a dog. Therefore, a wug', with 'A fep is a cat.' before or in between."""
    define = f"{_cap(_with_article(wug))} is {_with_article(concept)}."
    distract = f"{_cap(_with_article(other_wug))} is {_with_article(other)}."
    parts = {"none": [define], "before": [distract, define], "in-between": [define, distract]}
    return " ".join(parts[distraction] + [f"Therefore, {_with_article(wug)}"])


def comps_records(rng: random.Random, name: str, n: int) -> list[dict]:
    """COMPS records: acceptable concept has the property, unacceptable lacks it. Base prefixes
    name the concept; wug prefixes define an eval nonce word as it (the distractor binds another
    nonce word to the other concept, so both prefixes mention both concepts)."""
    options = [(p, c, kind, cands) for p, c in FACTS for kind, cands in _negatives(p, c).items()]
    rng.shuffle(options)
    distraction, recs = COMPS_FILES[name], []
    for i, (prop, good, kind, cands) in enumerate(options[:n]):
        bad = rng.choice(cands)
        rec = {
            "id": i,
            "property": prop,
            "acceptable_concept": good,
            "unacceptable_concept": bad,
            "negative_sample_type": kind,
            "similarity": _similarity(good, bad),
        }
        if name == "comps_base":
            prefixes = (_cap(_with_article(good)), _cap(_with_article(bad)))
        else:
            wug, other = rng.sample(COMPS_EVAL_WUGS, 2)
            prefixes = (
                _wug_prefix(wug, good, other, bad, distraction),
                _wug_prefix(wug, bad, other, good, distraction),
            )
        rec |= {
            "prefix_acceptable": prefixes[0],
            "prefix_unacceptable": prefixes[1],
            "property_phrase": prop + ".",
            "distraction_type": distraction,
        }
        if name != "comps_base":
            rec["nonsense_words"] = [wug] if distraction == "none" else [wug, other]
        recs.append(rec)
    return recs


def property_sentence(rng: random.Random, who: str | None = None) -> str:
    """A fact of the property table: "Dogs can bark." / "A dog can bark." / "Every dog can
    bark.", or in a story "Tom saw a dog. A dog can bark." """
    prop, concept = rng.choice(FACTS)
    sg = f"{_cap(_with_article(concept))} {prop}."
    if who is not None:
        return f"{who} saw {_with_article(concept)}. {sg}"
    return rng.choice(
        [f"{_cap(CONCEPTS[concept][0])} {_plural_phrase(prop)}.", sg, f"Every {concept} {prop}."]
    )


def comps_lesson(rng: random.Random) -> str:
    """Inheritance to a training nonce word: "A tib is a dog. Therefore, a tib can bark.", half
    of the time with a distractor before or in between."""
    prop, concept = rng.choice(FACTS)
    other = rng.choice([c for c in CONCEPTS if c not in PROPERTIES[prop]])
    wug, other_wug = rng.sample(COMPS_TRAIN_WUGS, 2)
    distraction = rng.choice(["none", "none", "before", "in-between"])
    return f"{_wug_prefix(wug, concept, other_wug, other, distraction)} {prop}."


# ------------------------------------------------------------ age of acquisition (AoA) --------
CDI_AGES = tuple(range(16, 31))  # months, the cdi_human.csv columns


def word_contexts(docs: list[list[str]], words: set[str]) -> dict[str, list[str]]:
    """Distinct contexts of each word in documents, in order of first occurrence: the words of a
    sentence before the word (never empty: sentence-initial occurrences are skipped)."""
    seen: dict[str, dict[str, None]] = {w: {} for w in words}
    for doc in docs:
        for line in doc:
            for sentence in re.split(r"(?<=[.?!])\s+", line):
                toks = sentence.split()
                for i in range(1, len(toks)):
                    word = toks[i].rstrip(".,?!:")
                    if word in seen:
                        seen[word].setdefault(" ".join(toks[:i]))
    return {w: list(ctx) for w, ctx in seen.items()}


def _cdi_row(rng: random.Random, word: str, freq_z: float) -> list:
    """Proportions of children producing `word` at each CDI age: a logistic curve whose midpoint
    (the child AoA, months) is earlier for frequent words, plus noise; sometimes one cell empty."""
    midpoint = min(28.0, max(18.0, 23.0 - 2.5 * freq_z + rng.gauss(0, 1.0)))
    slope = rng.uniform(0.55, 0.95)
    row: list = [word] + [
        round(min(1.0, max(0.0, 1 / (1 + math.exp(-slope * (age - midpoint))) + rng.gauss(0, 0.025))), 3)
        for age in CDI_AGES
    ]
    if rng.random() < 0.08:
        row[1 + rng.randrange(len(CDI_AGES))] = None
    return row


def aoa_sets(
    rng: random.Random,
    docs: list[list[str]],
    counts: Counter,
    lexicon: list[str],
    n_words: int = 60,
    n_contexts: int = 8,
) -> tuple[dict, list[list]]:
    """(cdi_childes.json content, cdi_human.csv rows) for `n_words` lexicon words spread evenly
    over training frequency (`counts`: normalised word counts of the training text). Each word
    gets up to `n_contexts` contexts from `docs`; `word_in_context_stats` hold the word's training
    count, its relative frequency and log10 of its frequency per million words."""
    total = sum(counts.values())
    found = word_contexts(docs, {w for w in lexicon if len(w) > 1 and counts[w] > 0})
    ranked = sorted((w for w, ctx in found.items() if ctx), key=lambda w: (counts[w], w))
    k = min(n_words, len(ranked))
    words = sorted(ranked[round(i * (len(ranked) - 1) / max(1, k - 1))] for i in range(k))
    childes = {}
    for w in words:
        stats = {
            "count": counts[w],
            "frequency": round(counts[w] / total, 8),
            "log_freq_per_million": round(math.log10(counts[w] * 1e6 / total), 4),
        }
        picked = sorted(rng.sample(range(len(found[w])), min(n_contexts, len(found[w]))))
        childes[w] = [{"context": found[w][i], "word_in_context_stats": stats} for i in picked]
    logs = [math.log(counts[w]) for w in words]
    mean = sum(logs) / len(logs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / len(logs)) or 1.0
    return childes, [_cdi_row(rng, w, (x - mean) / sd) for w, x in zip(words, logs)]


def render_aoa(name: str, records: dict | list[list]) -> tuple[str, int]:
    """cdi_childes.json (indented JSON) or cdi_human.csv (word,16..30; empty cell = no data),
    and the number of words."""
    if name.endswith(".json"):
        return json.dumps(records, ensure_ascii=False, indent=2) + "\n", len(records)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["word", *map(str, CDI_AGES)])
    writer.writerows([["" if x is None else x for x in row] for row in records])
    return buf.getvalue(), len(records)
