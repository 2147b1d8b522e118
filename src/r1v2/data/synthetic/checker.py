"""The hallucination checker: read what a response says it sees, compare it with the scene.

A response's perceptual claims are read from the whole response text (inside and after
``<think> ... </think>`` alike), case-insensitively. Understood phrasings, where ``N`` is a
number in digits (``3``) or words (``zero``..``twenty``) and ``G`` is a group:

- groups ``G``: ``red circle(s)``, ``redcircle(s)`` (a colour and a shape), ``red object(s)`` /
  ``red shape(s)`` / ``red thing(s)`` (a colour), ``circle(s)`` (a shape), ``object(s)`` /
  ``shape(s)`` / ``thing(s)`` (every object). Singular and plural are read alike.
- counts: ``i see N G``, ``i can see N G``, ``there is/are N G``, ``there's N G``, and the
  tally form ``G : N`` (``redcircle : 2``, ``red objects : 3``): exactly N.
  ``no`` for N means 0; ``a``/``an`` means at least one. A list of counts is read item by item
  (``i see 3 red circles and 2 squares``, commas or ``and``); groups joined without their own
  number share it (``there are 5 red circles and blue squares`` counts both together).
  A count followed by ``more``/``fewer``/``less`` is a comparison, not a claim.
- absence: ``i do not see any G`` / ``i don't see any G`` / ``i cannot see any G``,
  ``there is/are not any G``, ``there isn't/aren't any G``: exactly 0.
- cells (1-based, row-major; cell 1 is top left): ``cell K is/has/holds/contains (a|an|one)
  G`` (the cell holds a member of G) and ``cell K is/has/holds/contains empty|nothing``.

The reference traces state counts only, in the tally form ``G : N`` (``G`` a cell word such as
``redcircle`` or a group such as ``red objects``), so every perceptual statement of a trace is
read here.

Anything else (restating the question, arithmetic, the answer) is not a claim. A claim is a
hallucination when it is false for the scene; a cell index outside the board is false.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from r1v2.data.synthetic.scene import Group, Scene

NUMBER_WORDS: dict[str, int] = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUM = r"\d+|" + "|".join(sorted(NUMBER_WORDS, key=len, reverse=True))
_QUANT = rf"(?:{_NUM}|no|an?)\b"
_COLOUR = r"red|green|blue"
_GROUP = rf"\b(?:(?:{_COLOUR})\s*)?(?:circle|square|triangle|object|shape|thing)s?\b"
_GROUP_RE = re.compile(
    rf"(?:(?P<colour>{_COLOUR})\s*)?(?P<noun>circle|square|triangle|object|shape|thing)", re.I
)
_GROUP_LIST = rf"{_GROUP}(?:\s*(?:,|\band\b|\bor\b)\s*{_GROUP})*"
_SEP = re.compile(r"\s*(?:,\s*and\b|,|\band\b)\s*", re.I)

_LEAD = re.compile(r"\b(?:i\s+(?:can\s+)?see|there\s+(?:is|are)|there's)\s+", re.I)
_NEG_LEAD = re.compile(
    r"\b(?:i\s+(?:do\s+not|don't|cannot|can't|can\s+not)\s+see\s+any"
    r"|there\s+(?:is|are)\s+not\s+any|there\s+(?:isn't|aren't)\s+any)\s+",
    re.I,
)
_ITEM = re.compile(rf"(?P<q>{_QUANT})\s+(?P<g>{_GROUP_LIST})(?!\s*(?:more|fewer|less)\b)", re.I)
_TALLY = re.compile(rf"(?P<g>{_GROUP})\s*:\s*(?P<q>{_NUM})\b", re.I)
_NEG_ITEM = re.compile(rf"(?P<g>{_GROUP_LIST})", re.I)
_CELL = re.compile(
    rf"\bcell\s+(?P<k>{_NUM})\s+(?:is|has|holds|contains)\s+(?:(?:a|an|one)\s+)?"
    rf"(?:(?P<empty>empty|nothing)\b|(?P<g>{_GROUP}))",
    re.I,
)


@dataclass(frozen=True)
class Claim:
    """One perceptual claim of a response and whether the scene bears it out.

    ``text`` is the claim as written, at ``response[start:end]``; ``subject`` is what it is
    about (``"red circles"``, ``"cell 6"``); ``claimed`` and ``truth`` say what the response
    states and what the scene has (``"3"`` vs ``"2"``, ``"at least 1"`` vs ``"0"``,
    ``"red circle"`` vs ``"empty"``).
    """

    text: str
    start: int
    end: int
    subject: str
    claimed: str
    truth: str
    holds: bool


def _number(word: str) -> int:
    word = word.lower()
    return int(word) if word.isdigit() else NUMBER_WORDS[word]


def _groups(text: str) -> list[Group]:
    out = []
    for m in _GROUP_RE.finditer(text):
        noun = m["noun"].lower()
        colour = m["colour"].lower() if m["colour"] else None
        out.append(Group(colour, noun if noun in ("circle", "square", "triangle") else None))
    return out


def _subject(groups: list[Group]) -> str:
    return " and ".join(g.phrase() for g in groups)


def _count_claim(
    response: str, start: int, end: int, groups: list[Group], quant: str, scene: Scene
) -> Claim:
    """A claim on how many objects of the union of ``groups`` the scene holds."""
    true = sum(any(g.matches(c) for g in groups) for c in scene.cells)
    q = quant.lower()
    if q in ("a", "an"):
        claimed, holds = "at least 1", true >= 1
    else:
        n = 0 if q == "no" else _number(q)
        claimed, holds = str(n), true == n
    return Claim(response[start:end], start, end, _subject(groups), claimed, str(true), holds)


def _cell_claim(
    response: str, start: int, end: int, k: int, group: Group | None, scene: Scene
) -> Claim:
    """A claim that cell ``k`` holds a member of ``group`` (``None``: that it is empty)."""
    claimed = "empty" if group is None else group.phrase(1)
    if not 1 <= k <= len(scene.cells):
        truth, holds = "no such cell", False
    else:
        cell = scene.cells[k - 1]
        truth = "empty" if cell is None else f"{cell[0]} {cell[1]}"
        holds = cell is None if group is None else group.matches(cell)
    return Claim(response[start:end], start, end, f"cell {k}", claimed, truth, holds)


def _count_claims(response: str, scene: Scene) -> list[Claim]:
    out = []
    for lead in _LEAD.finditer(response):
        pos = lead.end()
        while (m := _ITEM.match(response, pos)) is not None:
            out.append(_count_claim(response, m.start(), m.end(), _groups(m["g"]), m["q"], scene))
            sep = _SEP.match(response, m.end())
            if sep is None:
                break
            pos = sep.end()
    for m in _TALLY.finditer(response):
        out.append(_count_claim(response, m.start(), m.end(), _groups(m["g"]), m["q"], scene))
    for lead in _NEG_LEAD.finditer(response):
        m = _NEG_ITEM.match(response, lead.end())
        if m is not None:
            out.append(_count_claim(response, lead.start(), m.end(), _groups(m["g"]), "0", scene))
    return out


def _cell_claims(response: str, scene: Scene) -> list[Claim]:
    out = []
    for m in _CELL.finditer(response):
        group = None if m["empty"] else _groups(m["g"])[0]
        out.append(_cell_claim(response, m.start(), m.end(), _number(m["k"]), group, scene))
    return out


def claims(completion: str, scene: Scene | Sequence[Any] | dict[str, Any]) -> list[Claim]:
    """Every perceptual claim of ``completion``, in order of position, each checked on ``scene``.

    ``scene``: a :class:`Scene`, the stored cell list, or a sample's metadata dict.
    """
    scene = Scene.from_any(scene)
    found = _count_claims(completion, scene) + _cell_claims(completion, scene)
    return sorted(found, key=lambda c: (c.start, c.end))


def hallucinations(completion: str, scene: Scene | Sequence[Any] | dict[str, Any]) -> list[Claim]:
    """The claims of ``completion`` that are false for ``scene`` (empty when all hold or none are made)."""
    return [c for c in claims(completion, scene) if not c.holds]


def hallucination_rate(
    completions: Sequence[str], scenes: Sequence[Scene | Sequence[Any] | dict[str, Any]]
) -> float:
    """Share of completions with at least one false claim; NaN for no completions.

    A completion without any claim counts as not hallucinating.
    """
    if len(completions) != len(scenes):
        raise ValueError(f"{len(completions)} completions but {len(scenes)} scenes")
    if not completions:
        return math.nan
    bad = sum(bool(hallucinations(c, s)) for c, s in zip(completions, scenes))
    return bad / len(completions)
