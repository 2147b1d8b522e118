"""What the toy stages share: the chat format of the task, seeding, and a progress bar.

The LM is pretrained on exactly the text the policy sees at RL time, so what it learns
transfers: the user turn is the scene (its words here, image tokens after assembly) followed by
the question as :func:`r1v2.model.policy.format_question` writes it, and the assistant turn is
the reference trace after the chat template's ``<think>``, closed by ``<|im_end|>``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from r1v2.data.synthetic import SynthSample, scene_text
from r1v2.model.policy import format_question

# Offsets of each stage's stream of synthetic samples from the build seed, so that the LM
# corpus, the vision and adapter data, the RL prompt pool (seed) and the held-out test set
# (seed + 1) never share a stream.
LM_STREAM, VISION_STREAM, ALIGN_STREAM = 100_003, 200_003, 300_003


def question_text(sample: SynthSample) -> str:
    """The question as the policy's user turn holds it (options listed twice for choice items,
    once in the question's words and once as ``A. 2`` lines, as ``format_question`` adds them)."""
    return format_question(sample.question.text, sample.question.options)


def text_user_turn(sample: SynthSample) -> str:
    """The text-only LM's user turn: ``scene : redcircle empty ... how many ... ?``."""
    return f"{scene_text(sample.scene)} {question_text(sample)}"


def completion_text(sample: SynthSample) -> str:
    """The reference completion after the prompt's ``<think>``: ``redcircle : 2 . </think> \\boxed{N}``."""
    return sample.trace.removeprefix("<think> ")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``peak / 10``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + float(np.cos(np.pi * min(t, 1.0)))))


class StageProgress:
    """A rich progress bar for one stage (``label``, ``total`` steps, the latest numbers)."""

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            self._bar = Progress(
                TextColumn(f"[bold]{label:<12}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self._task = self._bar.add_task(label, total=total, info="")
            self._bar.start()

    def update(self, step: int, **numbers: float) -> None:
        if self.enabled:
            info = " ".join(f"{k} {v:.4g}" for k, v in numbers.items())
            self._bar.update(self._task, completed=step, info=info)

    def close(self) -> None:
        if self.enabled:
            self._bar.stop()


@contextmanager
def stage_progress(label: str, total: int, enabled: bool = True) -> Iterator[StageProgress]:
    bar = StageProgress(label, total, enabled)
    try:
        yield bar
    finally:
        bar.close()
