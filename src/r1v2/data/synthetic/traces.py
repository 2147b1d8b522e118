"""Reference reasoning traces: what a model should think before answering, in checkable words.

A trace is ``<think> COUNTS ARITHMETIC [OPTION] </think> \\boxed{ANSWER}``:

- one count per group of the question, in the question's order, each written kind first and
  number second. A colour+shape group is one kind of cell word and is counted directly; a
  colour or shape group is counted as the sum of its three kinds (each written as its cell
  word), then its total is stated::

      redcircle : 3 .
      redcircle : 1 , redsquare : 0 , redtriangle : 2 . 1 + 0 + 2 = 3 . red objects : 3 .
      bluesquare : 0 .

- the arithmetic, one binary operation per sentence: ``3 + 1 = 4 .``, ``4 - 2 = 2 .``, or for
  ``compare`` ``3 is more than 1 .`` / ``1 is not more than 3 .``;
- for multiple choice, the option holding the value: ``4 is option C .`` / ``yes is option A .``;
- the answer as one word: ``\\boxed{4}`` or ``\\boxed{C}``.

Why this shape: a tiny word-level LM counts one kind of cell word far better than a mixed
group, and far better when the kind is written *before* its number (the number is then
predicted right after the token that says what to count, a one-hop lookup over the scene
words; number first, the model must also recall which kind comes next). Measured with
Qwen2-shaped LMs (loss on the trace, batch 32, AdamW 3e-3 with cosine decay, fresh samples
every step; greedy accuracy on 600 fresh samples, levels 1-3 in equal shares, a quarter
multiple choice), hidden 96, 3 layers, 2000 steps: number first (``i see 1 redcircle , ...``)
60.8%, kind first 79.7% and 83.7% (peak learning rates 3e-3 and 5e-3); kind first after 1000 steps 75.7%, with 2
layers after 2000 steps 84.5%. Earlier, with number first at hidden 192, 4 layers: stating only
the group counts 46.7%, the per-kind breakdown 63.2%, listing matching cells by index 33.2%.

Every perceptual statement is a ``G : N`` count that
:mod:`r1v2.data.synthetic.checker` reads, so a trace's claims can be checked against the scene.
Numbers are written as digits ``0``..``16`` everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from r1v2.data.synthetic.questions import LETTERS, Question
from r1v2.data.synthetic.scene import (
    COLOURS,
    EMPTY,
    GRID,
    SHAPES,
    Group,
    Scene,
    cell_word,
    scene_text,
)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def boxed(answer: str) -> str:
    """The answer as one word: ``\\boxed{4}`` (no spaces, so a whitespace tokenizer keeps it whole)."""
    return "\\boxed{" + answer + "}"


def kinds(group: Group) -> list[Group]:
    """The single kinds (colour and shape) that make up ``group``, colours then shapes in order."""
    return [
        Group(colour, shape)
        for colour in COLOURS
        for shape in SHAPES
        if group.matches((colour, shape))
    ]


def count_sentence(scene: Scene, group: Group) -> tuple[str, int]:
    """The trace's count of ``group`` and the count.

    ``redcircle : 2 .`` for one kind (its cell word); for a colour or shape group the count of
    each of its kinds, their sum, then the total:
    ``redcircle : 1 , redsquare : 0 , redtriangle : 2 . 1 + 0 + 2 = 3 . red objects : 3 .``
    """
    n = group.count(scene)
    parts = kinds(group)
    ns = [k.count(scene) for k in parts]
    items = " , ".join(f"{cell_word((k.colour, k.shape))} : {m}" for m, k in zip(ns, parts))
    if len(parts) == 1:
        return f"{items} .", n
    return f"{items} . {' + '.join(map(str, ns))} = {n} . {group.phrase(n)} : {n} .", n


def _arithmetic(qtype: str, c: list[int]) -> str:
    """The computation from the counts ``c``, one binary operation per sentence."""
    if qtype == "count":
        return ""
    if qtype == "sum":
        return f"{c[0]} + {c[1]} = {c[0] + c[1]} ."
    if qtype == "diff":
        return f"{c[0]} - {c[1]} = {c[0] - c[1]} ."
    if qtype == "compare":
        return f"{c[0]} is {'' if c[0] > c[1] else 'not '}more than {c[1]} ."
    s = c[0] + c[1]
    if qtype == "sum3":
        return f"{c[0]} + {c[1]} = {s} . {s} + {c[2]} = {s + c[2]} ."
    if qtype == "addsub":
        return f"{c[0]} + {c[1]} = {s} . {s} - {c[2]} = {s - c[2]} ."
    t = s + c[2]
    if qtype == "sum4":
        return f"{c[0]} + {c[1]} = {s} . {s} + {c[2]} = {t} . {t} + {c[3]} = {t + c[3]} ."
    if qtype == "addsub4":
        return f"{c[0]} + {c[1]} = {s} . {s} + {c[2]} = {t} . {t} - {c[3]} = {t - c[3]} ."
    raise ValueError(f"unknown question type {qtype!r}")


def reference_trace(scene: Scene | Sequence[Any] | dict[str, Any], question: Question) -> str:
    """The reference response ``<think> ... </think> \\boxed{ANSWER}`` (single spaces between words).

    A policy's completion starts after the chat prompt's ``<think>``; the completion form of
    this trace is ``reference_trace(...).removeprefix("<think> ")``. ``scene`` may be any form
    :meth:`Scene.from_any` reads.
    """
    scene = Scene.from_any(scene)
    parts = [THINK_OPEN]
    counts = []
    for group in question.groups:
        sentence, n = count_sentence(scene, group)
        parts.append(sentence)
        counts.append(n)
    arithmetic = _arithmetic(question.qtype, counts)
    if arithmetic:
        parts.append(arithmetic)
    value = question.value(scene)
    answer = question.answer(scene)
    if question.options:
        parts.append(f"{value} is option {answer} .")
    parts += [THINK_CLOSE, boxed(answer)]
    return " ".join(parts)


def lm_text(scene: Scene | Sequence[Any] | dict[str, Any], question: Question) -> str:
    """One text-pretraining example: ``scene : ... <question> <think> ... </think> \\boxed{..}``."""
    return f"{scene_text(scene)} {question.text} {reference_trace(scene, question)}"


def vocabulary(grid: int = GRID) -> list[str]:
    """Every word that can appear in scene texts, questions, options, traces and answers.

    Words are separated by single spaces everywhere, so splitting on whitespace gives exactly
    these tokens. Numbers run from 0 to the number of cells (16 at the default 4x4 grid: no
    count or sum exceeds it). Boxed answers are single words: ``\\boxed{0}``..
    ``\\boxed{16}`` and ``\\boxed{A}``..``\\boxed{D}``. ``A.``..``D.`` cover the option lines
    that the policy's prompt adds for multiple choice. The order is fixed, so a word-level
    tokenizer built from it has stable token ids.
    """
    numbers = [str(i) for i in range(grid * grid + 1)]
    words = [
        "scene",
        ":",
        EMPTY,
        *(c + s for c in COLOURS for s in SHAPES),
        *COLOURS,
        *SHAPES,
        *(s + "s" for s in SHAPES),
        "object",
        "objects",
        "how",
        "many",
        "are",
        "there",
        "?",
        "and",
        "in",
        "total",
        "more",
        "than",
        "what",
        "is",
        "plus",
        "minus",
        ",",
        "options",
        *LETTERS,
        "yes",
        "no",
        THINK_OPEN,
        THINK_CLOSE,
        ".",
        "i",
        "see",
        "+",
        "-",
        "=",
        "not",
        "option",
        *numbers,
        *(boxed(n) for n in numbers),
        *(boxed(letter) for letter in LETTERS),
        # r1v2.model.policy.format_question lists a sample's choices as "A. 2" lines
        *(f"{letter}." for letter in LETTERS),
    ]
    return list(dict.fromkeys(words))
