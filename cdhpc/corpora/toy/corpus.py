"""The toy corpus: world-knowledge and other phenomena, entity tracking in boxes, and the story,
wiki and puzzle documents of each split. Pure and seeded."""

from __future__ import annotations

import random

from cdhpc.corpora.toy import tasks as toytasks
from cdhpc.corpora.toy.lexicon import (
    ANIMALS,
    HYPERNYMS,
    NAMES,
    NOMINAL_ADJS,
    NOUNS,
    PEOPLE,
    SOURCES,
    STORY_ADJS,
    THINGS,
    TRANSITIVE,
    WUG_PROMPT,
    WUG_TRAIN_STEMS,
    _article,
    _cap,
    _noun_form,
    _reflexive,
    _verb_form,
    _vp,
    agreement_sentence,
    nominalize,
)

# ------------------------------------------------------------ world knowledge + other phenomena --
SIZE_CONTEXTS = [
    "The {s} hid behind the {b}.",
    "The {b} carried the {s} on its back.",
    "The {s} sat in the shadow of the {b}.",
]
SOCIAL = [
    ("boss", "subordinate", ["{a} gives orders to {b}.", "{b} takes orders from {a}."]),
    ("teacher", "student", ["{a} teaches {b}.", "{b} learns from {a}."]),
    ("parent", "child", ["{a} raised {b}.", "{b} was raised by {a}."]),
    ("landlord", "tenant", ["{a} collects rent from {b}.", "{b} pays rent to {a}."]),
]


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


def _box_op(
    rng: random.Random, boxes: list[list[str]], spare: list[str], contents: bool
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


def box_puzzle(
    rng: random.Random, objects: list[str], n_ops: int, contents: bool
) -> tuple[str, list[list[str]], list[int]]:
    """(initial state + operations text, final boxes, operations touching each box)."""
    pool = rng.sample(objects, min(len(objects), 14))
    boxes = [
        [pool.pop() for _ in range(min(len(pool), rng.choice([0, 1, 1, 2, 2, 3])))] for _ in range(N_BOXES)
    ]
    boxed = {o for b in boxes for o in b}
    spare = [o for o in objects if o not in boxed]
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
            cands.append(_describe(target[:k] + [new] + target[k + 1 :]))
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
    lines = [
        " ".join(rng.choices(gens, [5, 2, 1, 1, 1])[0](rng) for _ in range(rng.randint(2, 5)))
        for _ in range(rng.randint(2, 4))
    ]
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
