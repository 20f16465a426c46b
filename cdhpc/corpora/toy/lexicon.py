"""The toy grammar's lexicon (its hidden world: nouns, verbs, adjectives, names, sizes, roles) and the
phrase and sentence makers built on it (docs/method.md, the toy data). Pure and seeded."""

from __future__ import annotations

import random

# ---------------------------------------------------------------- lexicon (the hidden world) --
# singular plural gender(m/f/n/-) class; animals are listed in ascending size (the world's order).
_NOUNS = """boy boys m person|girl girls f person|man men m person|woman women f person
|king kings m person|queen queens f person|child children - person|teacher teachers - person
|farmer farmers - person|ant ants n animal|mouse mice n animal|frog frogs n animal
|bird birds n animal|rabbit rabbits n animal|cat cats n animal|dog dogs n animal|goat goats n animal
|horse horses n animal|bear bears n animal|elephant elephants n animal|whale whales n animal"""
NOUNS: dict[str, tuple[str, str | None, str]] = {
    f[0]: (f[1], None if f[2] == "-" else f[2], f[3])
    for f in (e.split() for e in _NOUNS.replace("\n", "").split("|"))
}
PLURAL_TO_SG = {pl: sg for sg, (pl, _, _) in NOUNS.items()}
IRREGULAR = ("man", "woman", "child", "mouse")
ANIMALS = [n for n, v in NOUNS.items() if v[2] == "animal"]  # ascending size
PEOPLE = [n for n, v in NOUNS.items() if v[2] == "person"]
HYPERNYMS = {
    "animal": ANIMALS[2:9],
    "fruit": ["apple", "pear", "plum", "cherry"],
    "flower": ["rose", "tulip", "daisy"],
    "toy": ["ball", "kite", "doll"],
}
THINGS = [
    "ball",
    "key",
    "book",
    "cup",
    "hat",
    "map",
    "coin",
    "shoe",
    "kite",
    "doll",
    "bell",
    "lamp",
    "ring",
    "spoon",
    "sock",
    "stone",
    "shell",
    "leaf",
    "apple",
    "pear",
    "plum",
]
NAMES = {
    "Tom": "m",
    "Sam": "m",
    "Ben": "m",
    "Max": "m",
    "Leo": "m",
    "Jack": "m",
    "Anna": "f",
    "Mia": "f",
    "Emma": "f",
    "Zoe": "f",
    "Lucy": "f",
    "Ella": "f",
}
_VERBS = """sleep sleeps slept i|run runs ran i|sing sings sang i|jump jumps jumped i|smile smiles
smiled i|laugh laughs laughed i|play plays played i|swim swims swam i|see sees saw t|like likes
liked t|help helps helped t|watch watches watched t|wash washes washed t|hurt hurts hurt t|love
loves loved t|find finds found t|chase chases chased t"""
VERBS = {f[0]: (f[1], f[2], f[3]) for f in (e.split() for e in _VERBS.replace("\n", " ").split("|"))}
INTRANSITIVE = [v for v, f in VERBS.items() if f[2] == "i"]
TRANSITIVE = [v for v, f in VERBS.items() if f[2] == "t"]
# Verbs whose bare form is not also a past form ("hurt" is both), usable in agreement pairs.
AGREEING_I = [v for v in INTRANSITIVE if VERBS[v][1] != v]
AGREEING_T = [v for v in TRANSITIVE if VERBS[v][1] != v]
PLAIN_ADJS = ["big", "small", "little", "old", "young", "red", "blue", "green"]
NOMINAL_ADJS = [
    "kind",
    "dark",
    "sad",
    "calm",
    "soft",
    "quick",
    "bright",
    "happy",
    "silly",
    "lazy",
    "foolish",
    "selfish",
    "childish",
    "stable",
    "visible",
    "formal",
    "normal",
    "active",
    "brave",
    "wise",
    "warm",
    "strong",
    "curious",
]
STORY_ADJS = PLAIN_ADJS + ["kind", "sad", "calm", "happy", "brave", "wise", "silly", "lazy"]
NOMINAL_EXCEPTIONS = {
    "brave": "bravery",
    "wise": "wisdom",
    "warm": "warmth",
    "strong": "strength",
    "curious": "curiosity",
}
DET_NUMBER = {
    "this": "sg",
    "that": "sg",
    "every": "sg",
    "a": "sg",
    "an": "sg",
    "these": "pl",
    "those": "pl",
    "some": "pl",
    "many": "pl",
    "the": None,
}
DETS = {"sg": ("the", "this", "that", "every", "a"), "pl": ("the", "these", "those", "some", "many")}
PREPS = ("near", "behind", "beside", "with")
REFLEXIVE = {
    "himself": ("sg", "m"),
    "herself": ("sg", "f"),
    "itself": ("sg", "n"),
    "themselves": ("pl", None),
}
SOURCES = {"stories": 0.5, "wiki": 0.3, "puzzles": 0.2}  # share of documents per split
WUG_PROMPT = "Create a noun out of the following adjective:"


def nominalize(adj: str) -> str:
    """The toy language's noun for an adjective: exceptions first, then the productive rule
    (-able -> -ability, -ible -> -ibility, -al/-ive -> +ity, -y -> -iness, else +ness)."""
    if adj in NOMINAL_EXCEPTIONS:
        return NOMINAL_EXCEPTIONS[adj]
    for end, new in (("able", "ability"), ("ible", "ibility"), ("al", "ality"), ("ive", "ivity")):
        if adj.endswith(end):
            return adj[: -len(end)] + new
    return adj[:-1] + "iness" if adj.endswith("y") else adj + "ness"


def _wug_stems() -> tuple[list[str], list[str]]:
    """Seed-independent pseudo-adjective stems: 80 for the corpus, 100 (disjoint) for WUG."""
    syl = [
        "bra",
        "mo",
        "ti",
        "zel",
        "cor",
        "fen",
        "lu",
        "pim",
        "das",
        "gro",
        "vi",
        "nak",
        "sul",
        "tre",
        "bo",
        "kel",
        "ra",
        "spo",
        "min",
        "tav",
    ]
    stems = sorted({a + b for a in syl for b in syl if a != b})
    random.Random("cdhpc-toy-wug").shuffle(stems)
    return stems[:80], stems[80:180]


WUG_TRAIN_STEMS, WUG_EVAL_STEMS = _wug_stems()


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_form(noun: str, number: str) -> str:
    return noun if number == "sg" else NOUNS[noun][0]


def _verb_form(lemma: str, number: str, tense: str = "present") -> str:
    s3, past, _ = VERBS[lemma]
    return past if tense == "past" else (s3 if number == "sg" else lemma)


def _flip(number: str) -> str:
    return "pl" if number == "sg" else "sg"


def _reflexive(number: str, gender: str | None, rng: random.Random) -> str:
    if number == "pl":
        return "themselves"
    if gender is None:  # "the teacher" may be either
        return rng.choice(["himself", "herself"])
    return {"m": "himself", "f": "herself", "n": "itself"}[gender]


def _np(
    rng: random.Random,
    number: str,
    nouns: list[str] | None = None,
    adj_p: float = 0.3,
    det: str | None = None,
) -> tuple[str, str | None]:
    """A determiner phrase agreeing in number; returns (text, gender of the head noun)."""
    noun = rng.choice(nouns or PEOPLE + ANIMALS)
    words = ([rng.choice(STORY_ADJS)] if rng.random() < adj_p else []) + [_noun_form(noun, number)]
    det = det or rng.choice(DETS[number])
    det = _article(words[0]) if det == "a" else det
    return " ".join([det] + words), NOUNS[noun][1]


def _subject(rng: random.Random, number: str, nouns: list[str] | None = None) -> tuple[str, str | None]:
    if number == "sg" and nouns is None and rng.random() < 0.3:
        name = rng.choice(list(NAMES))
        return name, NAMES[name]
    return _np(rng, number, nouns)


def _vp(rng: random.Random, number: str, tense: str = "present") -> str:
    r = rng.random()
    if r < 0.4:
        return _verb_form(rng.choice(INTRANSITIVE), number, tense)
    if r < 0.8:
        return f"{_verb_form(rng.choice(TRANSITIVE), number, tense)} {_np(rng, rng.choice(['sg', 'pl']))[0]}"
    be = {("sg", "present"): "is", ("pl", "present"): "are", ("sg", "past"): "was", ("pl", "past"): "were"}
    return f"{be[number, tense]} {rng.choice(STORY_ADJS)}"


def agreement_parts(
    rng: random.Random, shape: str, number: str, nouns: list[str] | None = None
) -> tuple[str, str, str]:
    """(subject phrase incl. PP/RC distractor, main verb lemma, verb tail) for one agreement
    sentence; the distractor noun always has the opposite number, as in BLiMP."""
    subj = _subject(rng, number, nouns)[0] if shape == "simple" else _np(rng, number, nouns)[0]
    if shape == "pp":
        subj += f" {rng.choice(PREPS)} {_np(rng, _flip(number), adj_p=0.0)[0]}"
    elif shape == "rc":
        inner = _np(rng, _flip(number), adj_p=0.0)[0]
        subj += f" that {inner} {_verb_form(rng.choice(AGREEING_T), _flip(number))}"
    if rng.random() < 0.5:
        return subj, rng.choice(AGREEING_I), ""
    return subj, rng.choice(AGREEING_T), _np(rng, rng.choice(["sg", "pl"]))[0]


def _join(*parts: str) -> str:
    return _cap(" ".join(p for p in parts if p)) + "."


def agreement_sentence(rng: random.Random) -> str:
    """One sentence of the agreement fragment (the language `agreement_violations` checks)."""
    shape = rng.choices(["simple", "pp", "rc", "refl"], [5, 2, 2, 2])[0]
    number = rng.choice(["sg", "pl"])
    if shape == "refl":
        subj, gender = _subject(rng, number)
        tense = rng.choice(["present", "past"])
        return _join(subj, _verb_form(rng.choice(TRANSITIVE), number, tense), _reflexive(number, gender, rng))
    if shape == "simple":
        return _join(_subject(rng, number)[0], _vp(rng, number, rng.choice(["present", "past"])))
    subj, verb, tail = agreement_parts(rng, shape, number)
    return _join(subj, _verb_form(verb, number), tail)
