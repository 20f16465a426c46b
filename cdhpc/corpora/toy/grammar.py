"""The toy grammar's grammaticality checker: agreement, reflexive and predicate violations of a
sentence (the toy eval sets' minimal pairs are checked with it). Pure."""

from __future__ import annotations

from cdhpc.corpora.toy.lexicon import (
    DET_NUMBER,
    NAMES,
    NOMINAL_ADJS,
    NOUNS,
    PLURAL_TO_SG,
    PREPS,
    REFLEXIVE,
    STORY_ADJS,
    VERBS,
)

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
    errs = (
        [] if want in (None, number) else [f"determiner '{toks[i]}' ({want}) with {number} noun '{toks[j]}'"]
    )
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
