"""One greedy evaluation of a set of samples: accuracy, unscored answers, hallucination rate.

Used by the training probe (``r1v2 grpo probe_data=...``) and by ``r1v2 toy eval``. Answers
are graded by :func:`r1v2.rewards.accuracy_reward` (an unparseable answer is wrong; None only
when the reference cannot be graded, counted apart), and, when every sample carries its scene,
claims about the image are checked by :func:`r1v2.data.synthetic.hallucination_rate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from r1v2.model.policy import SamplingConfig


def greedy_texts(engine, prompts: Sequence[Any], *, max_new_tokens: int, batch_size: int = 32):
    """Greedy completions of ``prompts`` through a rollout engine (or a Policy), in batches."""
    greedy = SamplingConfig(max_new_tokens=max_new_tokens, do_sample=False)
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts += engine.generate(prompts[start : start + batch_size], greedy).texts
    return texts


def grade(
    texts: Sequence[str],
    answers: Sequence[str],
    choices: Sequence[Sequence[str] | None] | None = None,
    scenes: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """``accuracy`` over gradable answers, ``unscored`` (references that cannot be graded),
    ``correct`` (per sample: 1.0, 0.0 or None) and, with ``scenes``, ``hallucination_rate``."""
    from r1v2.rewards import accuracy_reward

    choices = choices or [None] * len(texts)
    correct = [accuracy_reward(t, a, choices=c) for t, a, c in zip(texts, answers, choices)]
    scored = [x for x in correct if x is not None]
    out: dict[str, Any] = {
        "accuracy": sum(scored) / len(scored) if scored else math.nan,
        "unscored": len(correct) - len(scored),
        "correct": correct,
    }
    if scenes is not None:
        from r1v2.data.synthetic import hallucination_rate

        out["hallucination_rate"] = hallucination_rate(list(texts), list(scenes))
    return out


def probe(engine, samples: Sequence[Any], *, max_new_tokens: int) -> dict[str, float]:
    """The training probe on Samples whose metadata holds their scene: ``probe_accuracy``,
    ``probe_unscored`` and ``hallucination_rate`` of greedy answers."""
    texts = greedy_texts(engine, samples, max_new_tokens=max_new_tokens)
    result = grade(
        texts,
        [s.answer for s in samples],
        [s.choices for s in samples],
        [s.metadata["scene"] for s in samples],
    )
    return {
        "probe_accuracy": result["accuracy"],
        "probe_unscored": float(result["unscored"]),
        "hallucination_rate": result["hallucination_rate"],
    }
