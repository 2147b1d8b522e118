"""The format reward: reasoning, ``</think>``, exactly one boxed answer."""

from __future__ import annotations

import pytest

from r1v2.rewards import format_reward

CASES = [
    ("i see 3 red circles . 3 + 1 = 4 . </think> \\boxed{4}", 1.0),
    ("reasoning</think>\n\nThe answer is \\boxed{4}.", 1.0),  # text around the box is fine
    ("<think> reasoning </think> \\boxed{4}", 1.0),  # a leading <think> is tolerated
    ("  <think>\nreasoning </think> \\boxed{4}", 1.0),
    ("draft \\boxed{3} wait </think> \\boxed{4}", 1.0),  # boxed drafts inside the reasoning
    ("reasoning </think> \\boxed{\\frac{1}{2}}", 1.0),  # nested braces
    ("reasoning </think> \\boxed{\\boxed{4}}", 1.0),  # one top-level box
    ("reasoning </think> \\boxed{4} or \\boxed{5}", 0.0),  # two answers
    ("reasoning </think> 4", 0.0),  # no box
    ("reasoning \\boxed{4}", 0.0),  # no </think>
    ("   </think> \\boxed{4}", 0.0),  # no reasoning
    ("<think> </think> \\boxed{4}", 0.0),
    ("a </think> b </think> \\boxed{4}", 0.0),  # two </think>
    ("a <think> b </think> \\boxed{4}", 0.0),  # a second reasoning block opened
    ("<think> <think> a </think> \\boxed{4}", 0.0),
    ("reasoning </think> \\boxed{4", 0.0),  # unbalanced
    ("reasoning </think> \\boxed{4} and \\boxed{5", 0.0),
    ("", 0.0),
]


@pytest.mark.parametrize("completion,expected", CASES)
def test_format_cases(completion, expected):
    assert format_reward(completion) == expected
