"""Questions over a scene, by difficulty level (= number of groups to count):

    level 1  count     how many red circles are there ?                         c0
    level 2  sum       how many red circles and blue objects are there in total ?   c0 + c1
             diff      how many more red circles than squares are there ?           c0 - c1
             compare   are there more red circles than squares ?  (choice only)     c0 > c1
    level 3  sum3      how many red circles , squares and green objects are there in total ?
                                                                                    c0 + c1 + c2
             addsub    what is red circles plus squares minus green objects ?       c0 + c1 - c2
    level 4  sum4      how many red circles , squares , green objects and blue triangles are
                       there in total ?                                             c0 + c1 + c2 + c3
             addsub4   what is red circles plus squares plus green objects minus blue triangles ?
                                                                                    c0 + c1 + c2 - c3

Level 4 is not drawn by default: it exists for a GRPO pool harder than the levels that
have reference traces (its traces are still written, one count per group as everywhere).

A group is a colour and shape (``red circles``), a colour (``red objects``) or a shape
(``squares``); the groups of one question are disjoint, so sums never count an object twice.
``diff``, ``addsub`` and ``addsub4`` order their groups so the answer is never negative.

Multiple choice ("choice" kind): the options are appended to the question as
``options : A 2 , B 5 , C 3 , D 4`` and the answer is the letter of the right option. Numeric
questions get 4 distinct options (the answer and 3 distractors within 4 of it, in shuffled
order, so the letter carries no information); ``compare`` always has the options ``yes``, ``no``
(A = yes, B = no) and only appears when multiple choice is asked for.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from r1v2.data.synthetic.scene import COLOURS, SHAPES, Group, Scene

LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
QTYPE_LEVEL: dict[str, int] = {
    "count": 1,
    "sum": 2,
    "diff": 2,
    "compare": 2,
    "sum3": 3,
    "addsub": 3,
    "sum4": 4,
    "addsub4": 4,
}
CHOICE_ONLY = ("compare",)
DISTRACTOR_RADIUS = 4
# Share of groups built around an object present in the scene (the rest are drawn blindly), so
# that most counts are non-zero and zero counts still occur.
ANCHOR_PROB = 0.75


@dataclass(frozen=True)
class Question:
    """A question: its type, the groups it counts (in order) and, for multiple choice, its options."""

    qtype: str
    groups: tuple[Group, ...]
    options: tuple[str, ...] | None = None

    @property
    def level(self) -> int:
        return QTYPE_LEVEL[self.qtype]

    @property
    def kind(self) -> str:
        """The sample kind: ``"choice"`` with options, else ``"math"``."""
        return "choice" if self.options else "math"

    @property
    def text(self) -> str:
        """The question in lower-case words separated by spaces (option letters upper case)."""
        g = [group.phrase() for group in self.groups]
        base = {
            "count": lambda: f"how many {g[0]} are there ?",
            "sum": lambda: f"how many {g[0]} and {g[1]} are there in total ?",
            "diff": lambda: f"how many more {g[0]} than {g[1]} are there ?",
            "compare": lambda: f"are there more {g[0]} than {g[1]} ?",
            "sum3": lambda: f"how many {g[0]} , {g[1]} and {g[2]} are there in total ?",
            "addsub": lambda: f"what is {g[0]} plus {g[1]} minus {g[2]} ?",
            "sum4": lambda: f"how many {g[0]} , {g[1]} , {g[2]} and {g[3]} are there in total ?",
            "addsub4": lambda: f"what is {g[0]} plus {g[1]} plus {g[2]} minus {g[3]} ?",
        }[self.qtype]()
        if not self.options:
            return base
        listed = " , ".join(f"{letter} {opt}" for letter, opt in zip(LETTERS, self.options))
        return f"{base} options : {listed}"

    def value(self, scene: Scene) -> str:
        """The answer before letters: a count as a string (``"4"``), or ``"yes"``/``"no"``."""
        c = [group.count(scene) for group in self.groups]
        if self.qtype == "compare":
            return "yes" if c[0] > c[1] else "no"
        return str(
            {
                "count": lambda: c[0],
                "sum": lambda: c[0] + c[1],
                "diff": lambda: c[0] - c[1],
                "sum3": lambda: c[0] + c[1] + c[2],
                "addsub": lambda: c[0] + c[1] - c[2],
                "sum4": lambda: c[0] + c[1] + c[2] + c[3],
                "addsub4": lambda: c[0] + c[1] + c[2] - c[3],
            }[self.qtype]()
        )

    def answer(self, scene: Scene) -> str:
        """The sample's answer: the value, or the letter of the option equal to it."""
        value = self.value(scene)
        if not self.options:
            return value
        return LETTERS[self.options.index(value)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "qtype": self.qtype,
            "groups": [g.to_dict() for g in self.groups],
            "options": list(self.options) if self.options else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Question:
        options = d.get("options")
        return cls(
            d["qtype"],
            tuple(Group.from_dict(g) for g in d["groups"]),
            tuple(options) if options else None,
        )


def _random_group(rng: random.Random, scene: Scene) -> Group:
    """A colour+shape, colour-only or shape-only group (1/3 each), often anchored on a present object."""
    present = [c for c in scene.cells if c is not None]
    if present and rng.random() < ANCHOR_PROB:
        colour, shape = rng.choice(present)
    else:
        colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
    granularity = rng.randrange(3)
    if granularity == 0:
        return Group(colour, shape)
    if granularity == 1:
        return Group(colour, None)
    return Group(None, shape)


def _disjoint_groups(rng: random.Random, scene: Scene, n: int) -> list[Group]:
    """``n`` pairwise disjoint random groups (redrawn until they are)."""
    while True:
        groups: list[Group] = []
        for _ in range(20 * n):
            g = _random_group(rng, scene)
            if not any(g.overlaps(h) for h in groups):
                groups.append(g)
                if len(groups) == n:
                    return groups


def _numeric_options(rng: random.Random, value: int, cells: int) -> tuple[str, ...]:
    """The answer and 3 distinct distractors in ``[0, cells]`` within ``DISTRACTOR_RADIUS`` of it, shuffled."""
    lo, hi = max(0, value - DISTRACTOR_RADIUS), min(cells, value + DISTRACTOR_RADIUS)
    pool = [v for v in range(lo, hi + 1) if v != value]
    picked = [value, *rng.sample(pool, len(LETTERS) - 1)]
    rng.shuffle(picked)
    return tuple(str(v) for v in picked)


def make_question(
    rng: random.Random, scene: Scene, level: int, *, choice: bool = False
) -> Question:
    """A random question of ``level`` about ``scene`` (multiple choice when ``choice``).

    The type is uniform among the level's types (``compare`` only when ``choice``); groups are
    ordered so that ``diff``, ``addsub`` and ``addsub4`` answers are >= 0 (the subtracted
    group is the smallest).
    """
    qtypes = [
        q for q, lv in QTYPE_LEVEL.items() if lv == level and (choice or q not in CHOICE_ONLY)
    ]
    if not qtypes:
        raise ValueError(f"no question type has level {level}; levels are 1, 2, 3, 4")
    qtype = rng.choice(qtypes)
    groups = _disjoint_groups(rng, scene, level)
    counts = [g.count(scene) for g in groups]
    if qtype == "diff" and counts[0] < counts[1]:
        groups.reverse()
    if qtype in ("addsub", "addsub4"):
        smallest = min(range(len(groups)), key=lambda i: (counts[i], i))
        groups.append(groups.pop(smallest))
    question = Question(qtype, tuple(groups))
    if not choice:
        return question
    if qtype == "compare":
        options: tuple[str, ...] = ("yes", "no")
    else:
        options = _numeric_options(rng, int(question.value(scene)), len(scene.cells))
    return Question(qtype, tuple(groups), options)
