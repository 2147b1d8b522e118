"""Rule scorers on the edge cases of the evaluation protocol."""

import pytest

from r1v2.data.schema import Sample
from r1v2.eval.scoring import (
    rule_input,
    score_accuracy,
    score_any_of,
    score_mathvista,
    score_olympiad,
    score_yesno,
    split_top_level,
    yes_no,
)
from r1v2.rewards.answers import fallback_answer


def sample(answer, choices=None, **meta):
    return Sample("x", "q", (), answer, choices, "choice" if choices else "math", meta)


@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        ("<think>half</think> \\boxed{0.5}", "\\frac{1}{2}", 1.0),
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("\\boxed{x = 3}", "3", 1.0),
        ("\\boxed{4}", "3", 0.0),
        ("The answer is 3.", "3", 0.0),  # no boxed answer at all
        ("", "3", 0.0),
        ("\\boxed{50 cm}", "0.5 m", 0.0),  # units are not converted by rules: the judge's job
    ],
)
def test_open_answers(response, answer, expected):
    assert score_accuracy(response, sample(answer)) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("\\boxed{B}", 1.0),
        ("\\boxed{(B)}", 1.0),
        ("\\boxed{5}", 1.0),
        ("\\boxed{\\text{B}}", 1.0),
        ("\\boxed{A}", 0.0),
        ("\\boxed{3}", 0.0),
        ("no letter", 0.0),
    ],
)
def test_multiple_choice_letter_or_option_text(response, expected):
    assert score_accuracy(response, sample("B", ("3", "5", "7"))) == expected


def test_any_of_alternatives():
    s = sample("24/7", answers=["24/7", "3.429"])
    assert score_any_of("\\boxed{3.429}", s) == 1.0
    assert score_any_of("\\boxed{24/7}", s) == 1.0
    assert score_any_of("\\boxed{3.43}", s) == 0.0
    assert score_any_of("\\boxed{B}", sample("B", ("x", "y"))) == 1.0  # multiple choice as usual


def test_mathvista_precision():
    """precision 1: 1.54 rounds to 1.5 (correct), 1.56 to 1.6 (wrong), 1.5 itself correct."""
    s = sample("1.5", precision=1)
    assert score_mathvista("\\boxed{1.54}", s) == 1.0
    assert score_mathvista("\\boxed{1.56}", s) == 0.0
    assert score_mathvista("\\boxed{1.5 cm}", s) == 1.0
    assert score_mathvista("\\boxed{\\frac{3}{2}}", s) == 1.0  # not a plain number: math-verify
    assert score_mathvista("no answer", s) == 0.0
    # Without precision the accuracy rule holds: 1.54 != 1.5.
    assert score_mathvista("\\boxed{1.54}", sample("1.5", precision=None)) == 0.0


def test_olympiad_tolerance_and_several_answers():
    """tolerance 0.1: |2.58 - 2.5| = 0.08 <= 0.101 correct; |2.7 - 2.5| = 0.2 wrong."""
    s = sample("2.5", tolerance=0.1, answers=["2.5"], multiple=False)
    assert score_olympiad("\\boxed{2.58}", s) == 1.0
    assert score_olympiad("\\boxed{2.7}", s) == 0.0
    assert score_olympiad("nothing boxed", s) == 0.0
    m = sample("1, -2", answers=["1", "-2"], multiple=True, tolerance=None)
    assert score_olympiad("\\boxed{-2, 1}", m) == 1.0  # any order
    assert score_olympiad("\\boxed{1, -2, 3}", m) == 0.0  # one answer too many
    assert score_olympiad("\\boxed{1, 1}", m) == 0.0  # one part cannot match both
    assert score_olympiad("\\boxed{\\frac{2}{2}, -2}", m) == 1.0


def test_split_top_level():
    assert split_top_level("(1, 2), 3, \\{4, 5\\}") == ["(1, 2)", "3", "\\{4, 5\\}"]
    assert split_top_level("a") == ["a"]


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("\\boxed{Yes}", "yes"),
        ("<think>is there no dog? yes</think> No, there is none.", "no"),
        ("Yes, there is a dog.", "yes"),
        ("\\boxed{maybe}", None),
        ("I cannot tell.", None),
        ("<think>yes</think>\\boxed{no}", "no"),
    ],
)
def test_yes_no(response, expected):
    assert yes_no(response) == expected


def test_score_yesno():
    s = sample("no")
    assert score_yesno("\\boxed{no}", s) == 1.0
    assert score_yesno("\\boxed{yes}", s) == 0.0
    assert score_yesno("unclear", s) == 0.0


@pytest.mark.parametrize(
    ("response", "n_choices", "expected"),
    [
        ("So the answer is 42.", 0, "42"),
        ("The final answer is $\\frac{1}{2}$. It follows from symmetry.", 0, "$\\frac{1}{2}$"),
        ("Answer: **B**", 4, "B"),
        ("Final answer:\n\n  x = 3\n", 0, "x = 3"),
        ("The correct option is (C) because it fits.", 4, "(C) because it fits"),
        ("answer is 3 and then answer: 5", 0, "5"),  # the last phrase
        ("It can only be the last one.\n\n(D)", 4, "D"),
        ("Comparing both, I pick C.", 4, "C"),
        ("Comparing both, I pick C.", 0, None),  # a letter counts only for multiple choice
        ("Comparing both, I pick F.", 4, None),  # F is past the 4 options
        ("There are 3 red and 4 blue, 7 in all.", 0, "7"),
        ("The total is 1,250 dollars, up 12.5% from -3.", 0, "-3"),
        ("<think>the answer is 9</think> so it is 10", 0, "10"),  # after </think> only
        ("I cannot tell.", 0, None),
        ("The answer is {broken", 0, None),  # unbalanced: not an answer; no number either
    ],
)
def test_fallback_answer(response, n_choices, expected):
    assert fallback_answer(response, n_choices=n_choices) == expected


@pytest.mark.parametrize(
    ("response", "choices", "scorer", "text", "source"),
    [
        ("it is \\boxed{4}", None, "accuracy", "it is \\boxed{4}", "boxed"),
        ("\\boxed{4", None, "accuracy", "\\boxed{4", None),  # broken box: no fallback
        ("The answer is 4.", None, "accuracy", "\\boxed{4}", "fallback"),
        ("So it is B", ("x", "y"), "any_of", "\\boxed{B}", "fallback"),
        ("no idea", None, "accuracy", "no idea", None),
        ("\\boxed{no}", None, "yesno", "\\boxed{no}", "boxed"),
        ("No, there is none.", None, "yesno", "No, there is none.", "fallback"),
        ("I cannot tell.", None, "yesno", "I cannot tell.", None),
    ],
)
def test_rule_input(response, choices, scorer, text, source):
    assert rule_input(response, sample("4", choices), scorer) == (text, source)


def test_unscorable_answers_are_wrong_unscorable_references_none():
    """An answer math-verify cannot parse is wrong (0.0); only a reference it cannot parse, or
    a reference letter outside the options, gives None."""
    assert score_accuracy("\\boxed{@@}", sample("\\frac{1}{2}")) == 0.0
    assert score_accuracy("\\boxed{\\frac{1}{2}}", sample("@@")) is None
    assert score_accuracy("\\boxed{A}", sample("E", ("3", "5"))) is None
    assert score_any_of("\\boxed{@@}", sample("1", answers=["\\frac{1}{", "1"])) == 0.0
    assert score_any_of("\\boxed{1}", sample("1", answers=["\\frac{1}{", "1"])) == 1.0


# Free-form multiple-choice answers as published models write them, with the verdict
# MathVista's official scorer gives (the letter names the option; its own text after it in
# parentheses, after a colon or a dot, changes nothing; another option's text makes it wrong).
LETTER_FORMS = [
    ("Thus, the answer is B (70°).", "B", True),
    ("the answer is A (6cm).", "B", False),
    ("So the answer is B (no).", "B", True),
    ("The answer is B: 70°", "B", True),
    ("Answer: B. 70°", "B", True),
    ("The correct option is (B) 70°.", "B", True),
    ("the answer is B", "B", True),
    ("The answer is (C).", "B", False),
    ("Hence the answer is B (80°).", "B", False),  # B with C's text: no answer
    ("The answer is B (the largest angle).", "B", True),
    ("Answer: 70°", "B", True),  # the option text alone
    ("Answer: 80°", "B", False),
    ("so it is D.", "B", False),
    ("Final answer: b (70°)", "B", True),
]


@pytest.mark.parametrize("response, answer, right", LETTER_FORMS)
def test_letter_forms_agree_with_the_official_verdicts(response, answer, right):
    sample = Sample("q", "Which angle?", (), answer, ("60°", "70°", "80°", "90°"), "choice", {})
    text, _ = rule_input(response, sample, "accuracy")
    assert score_accuracy(text, sample) == float(right)
