"""Transcripts: the normalisation both sides of a word error rate go through, and the rate itself.

:func:`normalise_words` lower-cases, spells out whole numbers (``"press 1"`` and ``"press one"``
are the same words), turns ``*`` / ``#`` into "star" / "pound" (as telephone prompts say them),
drops notes in square or angle brackets (``"at [@]"`` -> ``"at"``) and every other punctuation mark except the
apostrophe inside a word. :func:`word_errors` counts substitutions, deletions and insertions by
Levenshtein alignment.
"""

from __future__ import annotations

import re

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SYMBOLS = {"*": " star ", "#": " pound ", "&": " and ", "%": " percent ", "+": " plus "}
_BRACKETS = re.compile(r"\[[^\]]*\]|<[^>]*>")
_NUMBER = re.compile(r"\d+")
_NOT_WORD = re.compile(r"[^\w' ]+")


def number_words(n: int) -> str:
    """``n`` (0 <= n < 10**9) in English words: ``1205`` -> ``"one thousand two hundred five"``."""
    if not 0 <= n < 10**9:
        raise ValueError(f"number_words handles 0 .. 999,999,999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, word in ((10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            head, rest = divmod(n, size)
            return f"{number_words(head)} {word}" + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError("unreachable")


def normalise_words(text: str) -> list[str]:
    """The words of ``text`` as a word error rate compares them (see the module docstring)."""
    text = _BRACKETS.sub(" ", text.lower())
    for symbol, spoken in _SYMBOLS.items():
        text = text.replace(symbol, spoken)
    text = _NUMBER.sub(lambda m: f" {number_words(int(m.group()))} " if len(m.group()) <= 9 else " ", text)
    text = _NOT_WORD.sub(" ", text.replace("_", " "))
    return [w.strip("'") for w in text.split() if w.strip("'")]


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance between two word lists (substitutions + deletions + insertions)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, start=1):
        current = [i]
        for j, hyp in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1]


def word_error_rate(references: list[str], hypotheses: list[str]) -> dict:
    """Corpus WER of paired transcripts (both normalised): ``{"wer", "errors", "words", "utterances"}``."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    errors = words = 0
    for ref, hyp in zip(references, hypotheses):
        r, h = normalise_words(ref), normalise_words(hyp)
        errors += word_errors(r, h)
        words += len(r)
    return {"wer": errors / words if words else float("nan"), "errors": errors, "words": words,
            "utterances": len(references)}
