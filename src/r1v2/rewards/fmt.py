r"""The format reward r_format (RECIPE §3): reasoning, ``</think>``, then one boxed answer.

The generation prompt already ends in ``<think>\n``, so a completion starts inside the
reasoning. ``format_reward`` is 1.0 when all of these hold, else 0.0:

- exactly one ``</think>``, with non-blank reasoning before it;
- ``<think>`` appears at most once, and only as the very first thing in the completion
  (tolerated for templates that leave it to the model; a second reasoning block opened later
  is a format error: our choice, the paper does not say);
- after ``</think>``: exactly one ``\boxed{...}``, its braces balanced. Other text around it
  ("The answer is \boxed{4}.") is allowed; ``\boxed`` drafts inside the reasoning are too.
"""

from __future__ import annotations

from r1v2.rewards.answers import THINK_CLOSE, THINK_OPEN, boxed_contents


def format_reward(completion: str) -> float:
    """1.0 when ``completion`` has the R1 format described in the module docstring, else 0.0."""
    if completion.count(THINK_CLOSE) != 1:
        return 0.0
    reasoning, after = completion.split(THINK_CLOSE)
    body = reasoning.lstrip()
    if body.startswith(THINK_OPEN):
        body = body[len(THINK_OPEN) :]
    if THINK_OPEN in body or not body.strip():
        return 0.0
    boxes = boxed_contents(after)
    if len(boxes) != 1 or boxes[0] is None:
        return 0.0
    return 1.0
