"""What a reward model takes and gives, without importing torch.

A reward model scores (question, images, completion) triples with unbounded real numbers;
:class:`r1v2.rewards.hybrid.HybridReward` maps them to [0, 1] before adding them up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class RMInput:
    """One thing to score: the user's question, the assistant's completion, the images.

    ``images`` holds PIL images, paths, or encoded image bytes, in the order the question
    refers to them; they are placed before the question text in the user turn.
    """

    question: str
    completion: str
    images: tuple[Any | str | Path | bytes, ...] = ()


@runtime_checkable
class RewardModel(Protocol):
    """Anything with ``score(samples) -> list[float]``, one unbounded score per sample."""

    def score(self, samples: Sequence[RMInput]) -> list[float]: ...
