"""A tiny TinyBabyLM-shaped corpus and BabyLM 2025 evaluation data, drawn from ONE toy grammar.

The corpus (`corpus/{train,seed,test}/<source>.txt`) and every evaluation file
(`evaluation_data/{full_eval,fast_eval}/...`, the official on-disk layout and record fields) come
from the same lexicon and templates, so a 4x128 LLaMA trained on ~0.6M words can beat chance:
subject-verb agreement (across a PP / an object relative clause), determiner-noun agreement,
reflexives, a fixed hidden world (animal sizes, social roles, hypernyms), entity tracking in boxes,
-ness/-ity nominalisation (productive rule + exceptions, WUG), and story-like documents; the
past tense of nonce verbs, COMPS property inheritance and AoA data come from `cdhpc.corpora.toy.tasks`.

Everything is pure and seeded (`random.Random` streams keyed by seed and purpose); only
`write_toy` and `main` touch the filesystem. Same seed -> byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from cdhpc.corpora.toy import tasks as toytasks

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
HYPERNYMS = {"animal": ANIMALS[2:9], "fruit": ["apple", "pear", "plum", "cherry"],
             "flower": ["rose", "tulip", "daisy"], "toy": ["ball", "kite", "doll"]}
THINGS = ["ball", "key", "book", "cup", "hat", "map", "coin", "shoe", "kite", "doll", "bell",
          "lamp", "ring", "spoon", "sock", "stone", "shell", "leaf", "apple", "pear", "plum"]
NAMES = {"Tom": "m", "Sam": "m", "Ben": "m", "Max": "m", "Leo": "m", "Jack": "m",
         "Anna": "f", "Mia": "f", "Emma": "f", "Zoe": "f", "Lucy": "f", "Ella": "f"}
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
NOMINAL_ADJS = ["kind", "dark", "sad", "calm", "soft", "quick", "bright", "happy", "silly", "lazy",
                "foolish", "selfish", "childish", "stable", "visible", "formal", "normal",
                "active", "brave", "wise", "warm", "strong", "curious"]
STORY_ADJS = PLAIN_ADJS + ["kind", "sad", "calm", "happy", "brave", "wise", "silly", "lazy"]
NOMINAL_EXCEPTIONS = {"brave": "bravery", "wise": "wisdom", "warm": "warmth",
                      "strong": "strength", "curious": "curiosity"}
DET_NUMBER = {"this": "sg", "that": "sg", "every": "sg", "a": "sg", "an": "sg", "these": "pl",
              "those": "pl", "some": "pl", "many": "pl", "the": None}
DETS = {"sg": ("the", "this", "that", "every", "a"), "pl": ("the", "these", "those", "some", "many")}
PREPS = ("near", "behind", "beside", "with")
REFLEXIVE = {"himself": ("sg", "m"), "herself": ("sg", "f"), "itself": ("sg", "n"),
             "themselves": ("pl", None)}
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
    syl = ["bra", "mo", "ti", "zel", "cor", "fen", "lu", "pim", "das", "gro", "vi", "nak", "sul",
           "tre", "bo", "kel", "ra", "spo", "min", "tav"]
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


def _np(rng: random.Random, number: str, nouns: list[str] | None = None, adj_p: float = 0.3,
        det: str | None = None) -> tuple[str, str | None]:
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


def agreement_parts(rng: random.Random, shape: str, number: str, nouns: list[str] | None = None
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


# ------------------------------------------------------------ grammaticality checker --------
_NAMES_LC = {n.lower(): g for n, g in NAMES.items()}
_ADJ_SET = set(STORY_ADJS) | set(NOMINAL_ADJS)
_BE = {"is": "sg", "are": "pl", "was": "sg", "were": "pl"}
_VERB_FORMS: dict[str, tuple[str, str | None]] = {}  # form -> (lemma, number it demands or None)
for _lemma, (_s3, _past, _) in VERBS.items():
    _VERB_FORMS[_past] = (_lemma, None)
    _VERB_FORMS[_s3] = (_lemma, "sg")
    _VERB_FORMS[_lemma] = (_lemma, None if _lemma == _past else "pl")


def _parse_np(toks: list[str], i: int) -> tuple[str, str | None, int, list[str]] | None:
    """(number, gender, next index, determiner-agreement errors) of the DP at i, or None."""
    if i < len(toks) and toks[i] in _NAMES_LC:
        return "sg", _NAMES_LC[toks[i]], i + 1, []
    if i >= len(toks) or toks[i] not in DET_NUMBER:
        return None
    j = i + 1
    while j < len(toks) and toks[j] in _ADJ_SET:
        j += 1
    if j >= len(toks) or (toks[j] not in NOUNS and toks[j] not in PLURAL_TO_SG):
        return None
    number = "sg" if toks[j] in NOUNS else "pl"
    want = DET_NUMBER[toks[i]]
    errs = [] if want in (None, number) else [f"determiner '{toks[i]}' ({want}) with {number} noun '{toks[j]}'"]
    return number, NOUNS[PLURAL_TO_SG.get(toks[j], toks[j])][1], j + 1, errs


def _agree(what: str, form: str, demands: str | None, number: str) -> list[str]:
    return [] if demands in (None, number) else [f"{what} '{form}' is {demands}, its subject is {number}"]


def _reflexive_errors(refl: str, number: str, gender: str | None) -> list[str]:
    r_number, r_gender = REFLEXIVE[refl]
    if r_number != number:
        return [f"reflexive '{refl}' is {r_number}, its antecedent is {number}"]
    if number == "sg" and r_gender != gender and (gender is not None or r_gender == "n"):
        return [f"reflexive '{refl}' does not match the antecedent's gender ({gender or 'm/f'})"]
    return []


def _predicate_errors(toks: list[str], i: int, number: str, gender: str | None) -> list[str] | None:
    if i < len(toks) and toks[i] in _BE:
        ok = i + 2 == len(toks) and toks[i + 1] in _ADJ_SET
        return _agree("verb", toks[i], _BE[toks[i]], number) if ok else None
    verb = _VERB_FORMS.get(toks[i]) if i < len(toks) else None
    if verb is None:
        return None
    errs = _agree("verb", toks[i], verb[1], number)
    transitive = VERBS[verb[0]][2] == "t"
    if i + 1 == len(toks):
        return None if transitive else errs
    if not transitive:
        return None
    if i + 2 == len(toks) and toks[i + 1] in REFLEXIVE:
        return errs + _reflexive_errors(toks[i + 1], number, gender)
    obj = _parse_np(toks, i + 1)
    return errs + obj[3] if obj is not None and obj[2] == len(toks) else None


def agreement_violations(sentence: str) -> list[str] | None:
    """Agreement errors of a sentence of the toy agreement fragment (DP [PP|object RC] VP '.'),
    checked independently of the generator: determiner-noun number, subject-verb number (main and
    relative-clause verb), reflexive number/gender. [] = grammatical; None = outside the fragment."""
    if not sentence.endswith("."):
        return None
    toks = sentence[:-1].lower().split()
    subj = _parse_np(toks, 0)
    if subj is None:
        return None
    number, gender, i, errs = subj
    if i < len(toks) and toks[i] in PREPS:
        pp = _parse_np(toks, i + 1)
        if pp is None:
            return None
        errs, i = errs + pp[3], pp[2]
    elif i < len(toks) and toks[i] == "that":
        inner = _parse_np(toks, i + 1)
        verb = _VERB_FORMS.get(toks[inner[2]]) if inner and inner[2] < len(toks) else None
        if inner is None or verb is None or VERBS[verb[0]][2] != "t":
            return None
        errs = errs + inner[3] + _agree("relative-clause verb", toks[inner[2]], verb[1], inner[0])
        i = inner[2] + 1
    rest = _predicate_errors(toks, i, number, gender)
    return None if rest is None else errs + rest


# ------------------------------------------------------------ world knowledge + other phenomena --
SIZE_CONTEXTS = ["The {s} hid behind the {b}.", "The {b} carried the {s} on its back.",
                 "The {s} sat in the shadow of the {b}."]
SOCIAL = [("boss", "subordinate", ["{a} gives orders to {b}.", "{b} takes orders from {a}."]),
          ("teacher", "student", ["{a} teaches {b}.", "{b} learns from {a}."]),
          ("parent", "child", ["{a} raised {b}.", "{b} was raised by {a}."]),
          ("landlord", "tenant", ["{a} collects rent from {b}.", "{b} pays rent to {a}."])]


def _size_pair(rng: random.Random) -> tuple[str, str]:
    """(smaller, bigger) animal, consistent with the hidden world order."""
    i, j = sorted(rng.sample(range(len(ANIMALS)), 2))
    return ANIMALS[i], ANIMALS[j]


def _size_target(s: str, b: str, form: str) -> str:
    return f"The {b} is bigger than the {s}." if form == "bigger" else f"The {s} is smaller than the {b}."


def _social_target(concept: tuple, a: str, b: str, role: int) -> str:
    """`a` holds role A of the relation to `b`; say it from a's (0) or b's (1) side."""
    return f"{a} is {b}'s {concept[0]}." if role == 0 else f"{b} is {a}'s {concept[1]}."


def _with_article(noun: str) -> str:
    return f"{_article(noun)} {noun}"


def _hypernym_pair(rng: random.Random) -> tuple[str, str, str]:
    """(hyponym, its hypernym, another hypernym)."""
    hyper, other = rng.sample(sorted(HYPERNYMS), 2)
    return rng.choice(HYPERNYMS[hyper]), hyper, other


def world_sentence(rng: random.Random, hero: str | None = None) -> str:
    """A true statement about the hidden world: sizes, hypernyms or social roles."""
    kind = rng.choice(["size", "size_ctx", "hyper", "if_hyper", "social"])
    if kind.startswith("size"):
        s, b = _size_pair(rng)
        fact = _size_target(s, b, rng.choice(["bigger", "smaller"]))
        return f"{rng.choice(SIZE_CONTEXTS).format(s=s, b=b)} {fact}" if kind == "size_ctx" else fact
    if kind == "hyper":
        hypo, hyper, _ = _hypernym_pair(rng)
        return f"{_cap(_with_article(hypo))} is {_with_article(hyper)}."
    if kind == "if_hyper":
        hypo, hyper, _ = _hypernym_pair(rng)
        who = hero or rng.choice(list(NAMES))
        link = rng.choice(["If {w} has {x}, then {w} has {y}.", "{w} has {x}, so {w} has {y}."])
        return link.format(w=who, x=_with_article(hypo), y=_with_article(hyper))
    concept = rng.choice(SOCIAL)
    a, b = rng.sample([hero] + [n for n in NAMES if n != hero] if hero else list(NAMES), 2)
    ctx, target = rng.choice(concept[2]).format(a=a, b=b), _social_target(concept, a, b, rng.randrange(2))
    return rng.choices([f"{ctx} {target}", ctx, target], [6, 2, 2])[0]


def aux_sentence(rng: random.Random) -> str:
    """Declaratives and yes/no questions with a subject relative clause (subject-aux inversion)."""
    number, noun = rng.choice(["sg", "pl"]), rng.choice(PEOPLE + ANIMALS)
    be, (a1, a2) = ("is" if number == "sg" else "are"), rng.sample(STORY_ADJS, 2)
    np = f"the {_noun_form(noun, number)} that {be} {a1}"
    if rng.random() < 0.5:
        return f"{_cap(np)} {be} {a2}."
    pronoun = {"m": "he", "f": "she"}.get(NOUNS[noun][1] or "", "it") if number == "sg" else "they"
    answer = f"Yes, {pronoun} {be}."
    return f"{_cap(be)} {np} {a2}? {answer}"


def nominal_sentence(rng: random.Random, who: str | None = None) -> str:
    adj = rng.choice(NOMINAL_ADJS)
    if who is None:
        return f"The noun for {adj} is {nominalize(adj)}."
    return f"Everyone saw the {nominalize(adj)} of {who}."


def wug_lesson(rng: random.Random) -> str:
    """The WUG prompt, answered by the rule, for a real or a training pseudo adjective."""
    if rng.random() < 0.4:
        adj = rng.choice(NOMINAL_ADJS)
    else:
        adj = rng.choice(WUG_TRAIN_STEMS) + rng.choice(["able", "ish"])
    return f"{WUG_PROMPT} {adj}. {nominalize(adj)}"


# ------------------------------------------------------------ entity tracking (boxes) --------
N_BOXES = 5
MAX_ENTITY_WORDS = 90  # prefix + option: the tiny presets have 128 positions, and an item that does
# not fit is an error under the official scoring (nothing extrapolates past the model's context)
AMBIREF_OBJECTS = [f"{a} {n}" for a in ("big", "small", "red", "blue", "green", "yellow") for n in THINGS]


def _describe(items: list[str]) -> str:
    return " and ".join(f"the {o}" for o in sorted(items)) if items else "nothing"


def _box_op(rng: random.Random, boxes: list[list[str]], spare: list[str], contents: bool
            ) -> tuple[str, set[int]] | None:
    """Apply one random operation in place; returns (its sentence, the boxes it touched)."""
    kind = rng.choice(["put", "remove", "move"] + (["contents"] if contents else []))
    full = [i for i, b in enumerate(boxes) if b]
    if kind == "put":
        if not spare:
            return None
        items, b = rng.sample(spare, rng.randint(1, min(2, len(spare)))), rng.randrange(N_BOXES)
        boxes[b] += items
        spare[:] = [o for o in spare if o not in items]
        return f"Put {_describe(items)} into Box {b}.", {b}
    if not full:
        return None
    a = rng.choice(full)
    items = boxes[a][:] if kind == "contents" else rng.sample(boxes[a], rng.randint(1, min(3, len(boxes[a]))))
    boxes[a] = [o for o in boxes[a] if o not in items]
    if kind == "remove":
        spare += items
        return f"Remove {_describe(items)} from Box {a}.", {a}
    b = rng.choice([i for i in range(N_BOXES) if i != a])
    boxes[b] += items
    what = f"the contents of Box {a}" if kind == "contents" else f"{_describe(items)} from Box {a}"
    return f"Move {what} to Box {b}.", {a, b}


def box_puzzle(rng: random.Random, objects: list[str], n_ops: int, contents: bool
               ) -> tuple[str, list[list[str]], list[int]]:
    """(initial state + operations text, final boxes, operations touching each box)."""
    pool = rng.sample(objects, min(len(objects), 14))
    boxes = [[pool.pop() for _ in range(min(len(pool), rng.choice([0, 1, 1, 2, 2, 3])))]
             for _ in range(N_BOXES)]
    spare = [o for o in objects if not any(o in b for b in boxes)]
    text = ", ".join(f"Box {i} contains {_describe(b)}" for i, b in enumerate(boxes)) + "."
    touched, done = [0] * N_BOXES, 0
    for _ in range(n_ops * 3):  # an operation can be impossible (nothing to remove); retry
        if done == n_ops:
            break
        op = _box_op(rng, boxes, spare, contents)
        if op is not None:
            text, done = text + " " + op[0], done + 1
            for b in op[1]:
                touched[b] += 1
    return text, boxes, touched


def _box_options(rng: random.Random, boxes: list[list[str]], q: int, objects: list[str]) -> list[str]:
    """Five distinct answers: the true contents of box q first, then other boxes and near misses."""
    target = boxes[q]
    if target:
        cands = [_describe(b) for i, b in enumerate(boxes) if i != q and b]
        for _ in range(8):
            k, new = rng.randrange(len(target)), rng.choice([o for o in objects if o not in target])
            cands.append(_describe(target[:k] + [new] + target[k + 1:]))
    else:
        cands = [f"the {o}" for b in boxes for o in b]
    rng.shuffle(cands)
    cands += [f"the {o}" for o in rng.sample(objects, 8)]
    options = [_describe(target)]
    for c in cands:
        if c not in options and len(options) < 5:
            options.append(c)
    return [o + "." for o in options]


# ------------------------------------------------------------ corpus documents --------------
def _hero(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(list(NAMES))
    kind = rng.choice(["boy", "man", "king"] if NAMES[name] == "m" else ["girl", "woman", "queen"])
    return name, f"Once upon a time, there was {_with_article(rng.choice(STORY_ADJS))} {kind} named {name}."


def _story_sentence(rng: random.Random, hero: str) -> str:
    kinds = ["agree", "refl", "world", "nominal", "hero", "aux", "past", "property"]
    kind = rng.choices(kinds, [7, 2, 4, 1, 1, 1, 1, 1])[0]
    if kind == "agree":
        return agreement_sentence(rng)
    if kind == "refl":
        verb = _verb_form(rng.choice(TRANSITIVE), "sg", rng.choice(["present", "past"]))
        return f"{hero} {verb} {_reflexive('sg', NAMES[hero], rng)}."
    if kind == "world":
        return world_sentence(rng, hero)
    if kind == "nominal":
        return nominal_sentence(rng, hero)
    if kind == "past":
        return toytasks.past_sentence(rng, hero)
    if kind == "property":
        return toytasks.property_sentence(rng, hero)
    return f"{hero} {_vp(rng, 'sg', 'past')}." if kind == "hero" else aux_sentence(rng)


def story_doc(rng: random.Random) -> list[str]:
    """A TinyStories-like document: 2-4 paragraphs (lines) about one named character."""
    hero, opening = _hero(rng)
    lines = []
    for p in range(rng.randint(2, 4)):
        sents = [opening] if p == 0 else []
        sents += [_story_sentence(rng, hero) for _ in range(rng.randint(3, 6))]
        lines.append(" ".join(sents))
    if rng.random() < 0.5:
        lines[-1] += " The end."
    return lines


def wiki_doc(rng: random.Random) -> list[str]:
    """An encyclopedia-like document of facts, plus, sometimes, a block of lessons (nominalisation,
    past tense, property inheritance)."""
    gens = [world_sentence, agreement_sentence, aux_sentence, nominal_sentence, toytasks.property_sentence]
    lines = [" ".join(rng.choices(gens, [5, 2, 1, 1, 1])[0](rng) for _ in range(rng.randint(2, 5)))
             for _ in range(rng.randint(2, 4))]
    if rng.random() < 0.35:
        lessons = [wug_lesson, toytasks.past_lesson, toytasks.comps_lesson]
        lines += [rng.choices(lessons, [2, 1, 1])[0](rng) for _ in range(rng.randint(3, 6))]
    return lines


def puzzle_doc(rng: random.Random) -> list[str]:
    """1-3 box puzzles, one per line, each answered for 2-3 boxes (the entity-tracking format)."""
    lines = []
    for _ in range(rng.randint(1, 3)):
        style = rng.choice(["regular", "ambiref", "move_contents"])
        objects = AMBIREF_OBJECTS if style == "ambiref" else THINGS
        text, boxes, _ = box_puzzle(rng, objects, rng.randint(0, 7), style == "move_contents")
        queried = rng.sample(range(N_BOXES), rng.randint(2, 3))
        answers = [f"Box {q} contains {_describe(boxes[q])}." for q in queried]
        lines.append(" ".join([text] + answers))
    return lines


DOC_MAKERS = {"stories": story_doc, "wiki": wiki_doc, "puzzles": puzzle_doc}


def _n_words(lines: list[str]) -> int:
    return sum(len(line.split()) for line in lines)


def _bounded_doc(make, rng: random.Random, lo: int, hi: int) -> list[str]:
    """A document of lo..hi words: trailing lines are dropped, short documents redrawn."""
    for _ in range(100):
        lines = make(rng)
        while _n_words(lines) > hi and len(lines) > 1:
            lines.pop()
        if lo <= _n_words(lines) <= hi:
            return lines
    raise AssertionError(f"{make.__name__} cannot make a {lo}-{hi} word document")


def corpus_split(seed: int, split: str, n_docs: int) -> dict[str, list[list[str]]]:
    """Documents (lists of lines) per source; seed-split documents are 20-200 words (prompts)."""
    counts = {src: int(n_docs * share) for src, share in SOURCES.items()}
    counts["stories"] += n_docs - sum(counts.values())
    docs = {}
    for src, n in counts.items():
        rng = random.Random(f"cdhpc-toy:{seed}:{split}:{src}")
        make = DOC_MAKERS[src]
        docs[src] = [_bounded_doc(make, rng, 20, 200) if split == "seed" else make(rng) for _ in range(n)]
    return docs


def render_docs(docs: list[list[str]]) -> str:
    """The prepared-corpus text: lines of a document, documents separated by one empty line."""
    return "\n\n".join("\n".join(d) for d in docs) + "\n" if docs else ""


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
    "irregular_plural_subject_verb_agreement_1": ("subject_verb_agreement", _sva_pair("simple", list(IRREGULAR))),
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
        recs.append({"sentence_good": good, "sentence_bad": bad, "field": "morphology",
                     "linguistics_term": term, "UID": uid, "simple_LM_method": True,
                     "one_prefix_method": one_word, "two_prefix_method": False,
                     "lexically_identical": False, "pairID": str(i)})
    return recs


def _hypernym_item(rng: random.Random) -> tuple:
    hypo, hyper, other = _hypernym_pair(rng)
    who = rng.choice(list(NAMES))
    link = rng.choice(["If {w} has {x}, then {w} has {y}.", "{w} has {x}, so {w} has {y}."])
    contrast = rng.choice(["hypernym_and_base/converse", "hypernym_and_base/other"])
    good = link.format(w=who, x=_with_article(hypo), y=_with_article(hyper))
    bad = (link.format(w=who, x=_with_article(hyper), y=_with_article(hypo)) if contrast.endswith("converse")
           else link.format(w=who, x=_with_article(hypo), y=_with_article(other)))
    return sorted(HYPERNYMS).index(hyper), contrast, good, bad


def _aux_item(rng: random.Random) -> tuple:
    number, noun = rng.choice(["sg", "pl"]), rng.choice(PEOPLE + ANIMALS)
    be, (a1, a2), n = ("is" if number == "sg" else "are"), rng.sample(STORY_ADJS, 2), _noun_form(noun, number)
    return number, f"{_cap(be)} the {n} that {be} {a1} {a2}?", f"{_cap(be)} the {n} that {a1} {be} {a2}?"


def supplement_records(rng: random.Random, name: str, n: int) -> list[dict]:
    """`hypernym` (row, contrast) and `subject_aux_inversion` (row, ambiguous, template), each
    with pair_ID, sentence_good, sentence_bad, as the real supplement files carry."""
    if name == "hypernym":
        return [{"pair_ID": i, "row": row, "contrast": c, "sentence_good": g, "sentence_bad": b}
                for i, (row, c, g, b) in enumerate(_unique(rng, n, _hypernym_item))]
    return [{"pair_ID": i, "row": 0, "ambiguous": False, "template": f"1_RC_unambig_{num}",
             "sentence_good": g, "sentence_bad": b} for i, (num, g, b) in enumerate(_unique(rng, n, _aux_item))]


def _ewok_physical(rng: random.Random) -> dict:
    s, b = _size_pair(rng)
    ctx, form = rng.choice(SIZE_CONTEXTS), rng.choice(["bigger", "smaller"])
    diff = rng.choice(["variable swap", "concept swap"])
    swapped_form = form if diff == "variable swap" else {"bigger": "smaller", "smaller": "bigger"}[form]
    other = _size_target(b, s, swapped_form)
    return {"Domain": "physical-relations", "ConceptA": "bigger", "ConceptB": "smaller",
            "ContextType": "direct", "ContextDiff": "variable swap", "TargetDiff": diff,
            "Context1": ctx.format(s=s, b=b), "Context2": ctx.format(s=b, b=s),
            "Target1": _size_target(s, b, form), "Target2": other}


def _ewok_social(rng: random.Random) -> dict:
    concept = rng.choice(SOCIAL)
    (a, b), ctx, role = rng.sample(list(NAMES), 2), rng.choice(concept[2]), rng.randrange(2)
    diff = rng.choice(["variable swap", "concept swap"])
    if diff == "variable swap":
        other = _social_target(concept, b, a, role)
    else:
        other = f"{a} is {b}'s {concept[1]}." if role == 0 else f"{b} is {a}'s {concept[0]}."
    return {"Domain": "social-relations", "ConceptA": concept[0], "ConceptB": concept[1],
            "ContextType": "direct", "ContextDiff": "variable swap", "TargetDiff": diff,
            "Context1": ctx.format(a=a, b=b), "Context2": ctx.format(a=b, b=a),
            "Target1": _social_target(concept, a, b, role), "Target2": other}


EWOK_DOMAINS = {"physical-relations": _ewok_physical, "social-relations": _ewok_social}
# file -> (objects, whether "Move the contents of Box a to Box b." operations occur)
ENTITY_FILES = {"regular": (THINGS, False), "ambiref": (AMBIREF_OBJECTS, False),
                "move_contents": (THINGS, True)}


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
READING_COLUMNS = ["", "item", "word", "word2", "sentence", "context_length", "sent_id", "item_id",
                   "list", "Subtlex_log10", "length", "RTfirstfix", "RTfirstpass", "RTgopast",
                   "RTrightbound", "self_paced_reading_time", "ELAN", "LAN", "N400", "P600",
                   "EPNP", "PNP", "prev_word", "prev_item", "prev_length"]


def _norm(word: str) -> str:
    return word.lower().strip(".,?!:")


def bigram_counts(docs: list[list[str]]) -> tuple[Counter, Counter]:
    """Unigram and within-line bigram counts of normalised words: the grammar's own
    frequency and predictability, estimated on the training text."""
    uni, bi = Counter(), Counter()
    for doc in docs:
        for line in doc:
            words = [_norm(w) for w in line.split()]
            uni.update(words)
            bi.update(zip(words, words[1:]))
    return uni, bi


def _surprisal_bits(uni: Counter, bi: Counter, prev: str, word: str) -> float:
    """Add-0.1 smoothed bigram surprisal -log2 P(word | prev) (bits)."""
    return -math.log2((bi[prev, word] + 0.1) / (uni[prev] + 0.1 * (len(uni) + 1)))


def _zscores(xs: list[float]) -> list[float]:
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)) or 1.0
    return [(x - mean) / sd for x in xs]


def _reading_measures(rng: random.Random, length: int, freq_z: float, surp_z: float,
                      prev_z: float) -> list[float]:
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
        rows.append([k, " ".join(w[:pos]), w[pos], _norm(w[pos]).upper(), " ".join(w), pos, s_id, k, 1,
                     round(math.log10(uni[_norm(w[pos])] + 1), 4), len(w[pos]),
                     *_reading_measures(rng, len(w[pos]), freq_z[k], surp_z[k], prev_z), *prev])
    return rows


def render_csv(rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(READING_COLUMNS)
    writer.writerows(rows)
    return buf.getvalue()


# ------------------------------------------------------------ assembling and writing ----------
# task -> (full_eval folder, fast_eval folder or None: no fast version); fast sets are every other
# item of the full set.
EVAL_DIRS = {"blimp": ("blimp_filtered", "blimp_fast"),
             "supplement": ("supplement_filtered", "supplement_fast"),
             "ewok": ("ewok_filtered", "ewok_fast"),
             "entity": ("entity_tracking", "entity_tracking_fast"),
             "wug": ("wug_adj_nominalization", "wug_adj_nominalization"),
             "reading": ("reading", "reading"),
             "wug_past": ("wug_past_tense", "wug_past_tense"),
             "comps": ("comps", None),
             "aoa": ("aoa", None)}
SUPPLEMENT_FILES = ("hypernym", "subject_aux_inversion")
AOA_LEXICON = sorted(set(NOUNS) | set(THINGS) | set(VERBS) | set(STORY_ADJS) | set(NOMINAL_ADJS)
                     | set(HYPERNYMS) | {w for words in HYPERNYMS.values() for w in words})


def aoa_docs(seed: int) -> list[list[str]]:
    """Held-out documents (their own RNG streams) the AoA contexts are drawn from."""
    return [doc for docs in corpus_split(seed, "aoa", 300).values() for doc in docs]


def eval_sets(seed: int, uni: Counter, bi: Counter) -> list[tuple[str, str, list]]:
    """(task, file name, full records) for every evaluation file; one RNG stream per file."""
    def rng(name: str) -> random.Random:
        return random.Random(f"cdhpc-toy:{seed}:eval:{name}")
    out = [("blimp", f"{u}.jsonl", blimp_records(rng(u), u, 100)) for u in BLIMP_UIDS]
    out += [("supplement", f"{n}.jsonl", supplement_records(rng(n), n, 100)) for n in SUPPLEMENT_FILES]
    out += [("ewok", f"{d}.jsonl", _unique(rng(d), 100, make)) for d, make in EWOK_DOMAINS.items()]
    out += [("entity", f"{n}.jsonl", entity_records(rng(n), n, 120)) for n in ENTITY_FILES]
    out += [("wug", "wug_adj_nominalization.jsonl", wug_records(rng("wug"), 100))]
    out += [("reading", "reading_data.csv", reading_rows(rng("reading"), 40, uni, bi))]
    out += [("wug_past", "wug_past_tense.jsonl", toytasks.wug_past_records(rng("wug_past"), 100))]
    out += [("comps", f"{n}.jsonl", toytasks.comps_records(rng(n), n, 80)) for n in toytasks.COMPS_FILES]
    words, human = toytasks.aoa_sets(rng("aoa"), aoa_docs(seed), uni, AOA_LEXICON)
    return out + [("aoa", "cdi_childes.json", words), ("aoa", "cdi_human.csv", human)]


def _render_eval(task: str, name: str, records: list, fast: bool) -> tuple[str, int]:
    if task == "aoa":
        return toytasks.render_aoa(name, records)
    if task == "reading":
        rows = [r for r in records if r[6] % 2 == 0] if fast else records
        return render_csv([[i] + r[1:] for i, r in enumerate(rows)]), len(rows)
    recs = records[::2] if fast else records
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), len(recs)


def build_toy(seed: int, train_docs: int, seed_docs: int, test_docs: int) -> tuple[dict[str, str], dict]:
    """All files as {relative path: text} plus their counts (pure: nothing is written)."""
    files: dict[str, str] = {}
    counts: dict = {"corpus": {}, "eval": {}}
    train_text: list[list[str]] = []
    for split, n in (("train", train_docs), ("seed", seed_docs), ("test", test_docs)):
        counts["corpus"][split] = {}
        for src, docs in corpus_split(seed, split, n).items():
            files[f"corpus/{split}/{src}.txt"] = render_docs(docs)
            counts["corpus"][split][src] = {"docs": len(docs), "words": sum(map(_n_words, docs))}
            train_text += docs if split == "train" else []
    for task, name, records in eval_sets(seed, *bigram_counts(train_text)):
        full_dir, fast_dir = EVAL_DIRS[task]
        folders = [(f"full_eval/{full_dir}", False)] + ([(f"fast_eval/{fast_dir}", True)] if fast_dir else [])
        for folder, fast in folders:
            rel = f"evaluation_data/{folder}/{name}"
            files[rel], counts["eval"][rel] = _render_eval(task, name, records, fast)
    return files, counts


def _check_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty directory; toydata only writes a "
                              "fresh tree (remove it or pass another path)")


def write_toy(out: Path, seed: int = 0, *, train_docs: int = 6000, seed_docs: int = 300,
              test_docs: int = 300) -> dict:
    """Writes out/corpus/... and out/evaluation_data/...; returns counts (docs/words per split and
    source, items per eval file). Deterministic: same seed -> byte-identical files. Atomic enough:
    write into a temp dir next to `out` and rename it into place at the end.

    Defaults give ~0.7M train words (words = whitespace-separated tokens) in ~2-3 s."""
    out = Path(out)
    _check_target(out)
    for key, value in (("train_docs", train_docs), ("seed_docs", seed_docs), ("test_docs", test_docs)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"write_toy: {key}={value!r}; allowed: an integer >= 1")
    files, counts = build_toy(seed, train_docs, seed_docs, test_docs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            with open(tmp / rel, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
        _check_target(out)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def main(argv: list[str] | None = None) -> int:
    """`python -m cdhpc.toydata OUT [--seed N] [--train-docs N] [--seed-docs N] [--test-docs N]`."""
    parser = argparse.ArgumentParser(prog="python -m cdhpc.toydata", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="output directory (must not exist, or be empty)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-docs", type=int, default=6000)
    parser.add_argument("--seed-docs", type=int, default=300)
    parser.add_argument("--test-docs", type=int, default=300)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        counts = write_toy(args.out, args.seed, train_docs=args.train_docs, seed_docs=args.seed_docs,
                           test_docs=args.test_docs)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, by_src in counts["corpus"].items():
        words, docs = sum(c["words"] for c in by_src.values()), sum(c["docs"] for c in by_src.values())
        print(f"corpus/{split}: {docs} docs, {words} words ({', '.join(by_src)})")
    print(f"evaluation_data: {len(counts['eval'])} files, {sum(counts['eval'].values())} items/rows")
    print(f"wrote {args.out} (seed {args.seed}) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
