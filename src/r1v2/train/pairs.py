"""Preference pairs for iterative MPO (RECIPE section 2), as pure functions of strings and scores.

For each prompt the trainer samples ``n`` candidate responses, scores each with the reward
model and checks each against the rule constraints; :func:`select_pair` then picks at most one
(chosen, rejected) pair. The rules (:func:`rule_checks`):

- ``accuracy``: the final answer is correct (:func:`r1v2.rewards.accuracy_reward`, with
  ``after_think`` when the prompt opened a think block); an unscorable reference fails;
- ``format``: :func:`r1v2.rewards.format_reward` is 1;
- ``repetition``: the response does not repeat its reasoning (:func:`is_repetitive`).

The repetition rule (our choice; the paper names the constraint without defining it): a
*tandem repeat* is a span of at least ``min_span`` whitespace-separated words written
``min_copies`` or more times in a row. The words of every copy after the first are the
response's repeated words; the response is repetitive when they are more than ``max_share``
of its words. Consecutive copies, not any recurrence: faithful reasoning legitimately
repeats phrases far apart (``redsquare : 0 ,``), and even a sentence twice in a row
(``3 + 0 = 3 . 3 + 0 = 3 .`` is a correct trace); a model stuck in a loop writes the
same passage again and again. Measured on the synthetic task (5000 samples, seed 1):
with the defaults (4 words, 3 copies, 5%) every reference trace has share 0 (2 copies
would flag 24 of them), and every response of :func:`r1v2.toy.reward.repetitive_response`
(a sentence or two repeated 3-5 times) has share >= 0.10.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from r1v2.config import option
from r1v2.errors import R1V2Error

Rule = Literal["accuracy", "format", "repetition"]
RULES: tuple[str, ...] = ("accuracy", "format", "repetition")


@dataclass
class RepeatConfig:
    """The repetition rule (see the module docstring)."""

    min_span: int = option(
        4,
        "shortest repeated span, in words (the toy's shortest reasoning sentence is 4 words, "
        "'redcircle : 3 .')",
    )
    min_copies: int = option(
        3,
        "copies in a row that make a repeat (2 would flag correct toy traces that state one "
        "sum twice; the toy's repetitive responses repeat a section 3-5 times)",
    )
    max_share: float = option(
        0.05,
        "a response is repetitive when more than this share of its words lies in the repeated "
        "copies (toy: reference traces 0, repetitive responses >= 0.10; real models: to be "
        "measured)",
    )

    def validate(self) -> None:
        if self.min_span < 1:
            raise R1V2Error("config field 'repeat.min_span' must be >= 1")
        if self.min_copies < 2:
            raise R1V2Error("config field 'repeat.min_copies' must be >= 2")
        if not 0.0 <= self.max_share < 1.0:
            raise R1V2Error("config field 'repeat.max_share' must be in [0, 1)")


def repeated_share(text: str, min_span: int = 4, min_copies: int = 3) -> float:
    """Share of the words of ``text`` that lie in a tandem repeat's copies after the first.

    A tandem repeat: ``words[i : i + p]`` written ``min_copies`` or more times in a row, with
    period ``p >= min_span`` words. For each period, positions with ``words[j] == words[j + p]``
    form runs; a run of length ``L`` makes ``words[i : i + L + p]`` periodic, i.e.
    ``(L + p) // p`` copies, and marks ``words[i + p : i + L + p]``. 0.0 for an empty text.

    Example: ``"a b c d . a b c d . a b c d . end"`` (16 words, a 5-word span three times in
    a row) -> 10 / 16 = 0.625.
    """
    words = text.split()
    n = len(words)
    if n == 0:
        return 0.0
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    ids = np.fromiter((vocab[w] for w in words), dtype=np.int64, count=n)  # [n]
    marked = np.zeros(n, dtype=bool)  # [n]
    for period in range(min_span, n // min_copies + 1):
        same = np.concatenate([[False], ids[:-period] == ids[period:], [False]])  # [n - p + 2]
        edges = np.diff(same.astype(np.int8))  # [n - p + 1]
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        for start, end in zip(starts, ends):
            if end - start >= (min_copies - 1) * period:
                marked[start + period : end + period] = True
    return float(marked.mean())


def is_repetitive(text: str, repeat: RepeatConfig | None = None) -> bool:
    """True when more than ``repeat.max_share`` of the words are repeated copies
    (:func:`repeated_share`)."""
    repeat = repeat or RepeatConfig()
    share = repeated_share(text, repeat.min_span, repeat.min_copies)
    return share > repeat.max_share


def rule_checks(
    text: str,
    answer: str | None,
    choices: Sequence[str] | None = None,
    *,
    after_think: bool = True,
    rules: Sequence[str] = RULES,
    repeat: RepeatConfig | None = None,
) -> dict[str, bool]:
    """``{rule: passed}`` for each rule named in ``rules`` (see the module docstring).

    ``accuracy`` passes only on 1.0: a wrong answer (0.0) and an unscorable reference (None)
    both fail, since neither shows the chosen response is right. ``answer=None`` (no reference
    at all) fails it too.
    """
    from r1v2.rewards import accuracy_reward, format_reward

    out: dict[str, bool] = {}
    for rule in rules:
        if rule == "accuracy":
            score = None
            if answer is not None:
                score = accuracy_reward(text, answer, choices=choices, after_think=after_think)
            out[rule] = score == 1.0
        elif rule == "format":
            out[rule] = format_reward(text) == 1.0
        elif rule == "repetition":
            out[rule] = not is_repetitive(text, repeat)
        else:
            raise ValueError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
    return out


@dataclass(frozen=True)
class PairDecision:
    """What :func:`select_pair` decided for one prompt.

    ``chosen``/``rejected`` are candidate indices (None when there is none); ``gap`` is
    ``score[chosen] - score[rejected]`` (NaN without both); ``kept`` says whether the pair is
    used; ``reason`` is ``"kept"``, ``"no_valid_chosen"``, ``"no_rejected"`` or
    ``"below_threshold"``.
    """

    chosen: int | None
    rejected: int | None
    gap: float
    kept: bool
    reason: str

    @property
    def built(self) -> bool:
        """A (chosen, rejected) pair was formed, kept or not."""
        return self.chosen is not None and self.rejected is not None


def select_pair(
    scores: Sequence[float | None], passes: Sequence[bool], threshold: float
) -> PairDecision:
    """At most one preference pair among one prompt's candidates.

    - chosen: the highest-scoring candidate that passes every rule (``passes[i]``);
    - rejected: the lowest-scoring candidate other than the chosen one, whether it passes the
      rules or not;
    - kept only when ``score[chosen] - score[rejected] >= threshold``.

    Ties go to the lower candidate index, for chosen and rejected alike. A candidate whose
    score is None or not finite (the reward model failed) takes neither role. A prompt with
    no passing candidate, or no second scored candidate, gives no pair; so does one whose
    chosen response is itself the lowest-scoring (the gap is then negative). Example: scores
    ``[1, 5, 3, 5]``, passes ``[T, F, T, T]``, threshold 2 -> chosen 3 (5; candidate 1 fails),
    rejected 0 (1), gap 4, kept.
    """
    if len(scores) != len(passes):
        raise ValueError(f"{len(scores)} scores but {len(passes)} rule verdicts")
    usable = [s is not None and math.isfinite(s) for s in scores]
    valid = [i for i in range(len(scores)) if usable[i] and passes[i]]
    if not valid:
        return PairDecision(None, None, math.nan, False, "no_valid_chosen")
    chosen = min(valid, key=lambda i: (-scores[i], i))
    others = [i for i in range(len(scores)) if usable[i] and i != chosen]
    if not others:
        return PairDecision(chosen, None, math.nan, False, "no_rejected")
    rejected = min(others, key=lambda i: (scores[i], i))
    gap = float(scores[chosen]) - float(scores[rejected])
    kept = gap >= threshold
    return PairDecision(chosen, rejected, gap, kept, "kept" if kept else "below_threshold")
