"""What the toy stages share: the chat format of the task, the learning-rate schedule, checks.

The LM is pretrained on exactly the text the policy sees at RL time, so what it learns
transfers: the user turn is the scene (its words here, image tokens after assembly) followed by
the question as :func:`r1v2.model.policy.format_question` writes it, and the assistant turn is
the reference trace after the chat template's ``<think>``, closed by ``<|im_end|>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler
from transformers import get_scheduler

from r1v2.data.synthetic import SynthSample, scene_text
from r1v2.errors import R1V2Error
from r1v2.model.policy import format_question

# Offsets of each stage's stream of synthetic samples from the build seed, so that the LM
# corpus, the vision and adapter data, the RL prompt pool (seed) and the held-out test set
# (seed + 1) never share a stream.
LM_STREAM, VISION_STREAM, ALIGN_STREAM = 100_003, 200_003, 300_003
PAIRS_STREAM = 400_003  # the draws of the offline pairs' hallucinated traces


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


def cosine_schedule(optimizer: torch.optim.Optimizer, steps: int) -> LRScheduler:
    """Linear warm-up over ``max(1, steps // 20)`` steps to the optimizer's learning rate, then
    cosine decay to a tenth of it at the last step (transformers' ``cosine_warmup_with_min_lr``;
    call ``step()`` after each optimizer step)."""
    return get_scheduler(
        "cosine_warmup_with_min_lr",
        optimizer,
        num_warmup_steps=max(1, steps // 20),
        num_training_steps=steps,
        scheduler_specific_kwargs={"min_lr_rate": 0.1},
    )


def check_at_least_one(cfg: Any, names: Sequence[str], prefix: str = "") -> None:
    """R1V2Error naming every field of ``cfg`` in ``names`` below 1 (``prefix`` before each)."""
    bad = [prefix + name for name in names if getattr(cfg, name) < 1]
    if bad:
        raise R1V2Error(f"config field(s) {', '.join(bad)} must be >= 1")
