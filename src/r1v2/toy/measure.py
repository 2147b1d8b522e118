"""Measure the toy models: greedy accuracy and hallucination rate on held-out samples.

The text-only LM reads the scene in words (``scene : redcircle empty ...``); the assembled
VLM sees the rendered image instead. Both answer the same held-out samples (by default those
of ``DIR/data/test``: ``iter_samples(n, seed + 1)``), decoded greedily. Accuracy is
:func:`r1v2.rewards.accuracy_reward` (unscorable counted as wrong); the hallucination rate is
:func:`r1v2.data.synthetic.hallucination_rate` (share of completions with a false claim).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from r1v2.config import option
from r1v2.data.synthetic import SynthSample, iter_samples, render
from r1v2.errors import R1V2Error
from r1v2.eval.greedy import grade, greedy_texts
from r1v2.model.policy import Policy, Prompt
from r1v2.toy.common import question_text, text_user_turn

MAX_NEW_TOKENS = 128  # the longest reference completion is about 100 tokens


def prompts(samples: Sequence[SynthSample], *, from_image: bool) -> list[Prompt]:
    """The user turns: the question after the rendered image, or after the scene in words."""
    if from_image:
        return [Prompt(question_text(s), (render(s.scene),)) for s in samples]
    return [Prompt(text_user_turn(s)) for s in samples]


def evaluate(
    policy: Policy,
    samples: Sequence[SynthSample],
    *,
    from_image: bool,
    batch_size: int = 50,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> dict[str, Any]:
    """Greedy accuracy, hallucination rate and accuracy by level over ``samples``.

    Returns ``{"n", "accuracy", "hallucination_rate", "accuracy_by_level", "completions"}``.
    """
    items = prompts(samples, from_image=from_image)
    texts = greedy_texts(policy, items, max_new_tokens=max_new_tokens, batch_size=batch_size)
    graded = grade(
        texts,
        [s.answer for s in samples],
        [s.question.options for s in samples],
        [s.scene for s in samples],
    )
    correct = [c or 0.0 for c in graded["correct"]]  # toy references always grade
    by_level: dict[int, list[float]] = defaultdict(list)
    for c, s in zip(correct, samples):
        by_level[s.question.level].append(c)
    return {
        "n": len(samples),
        "accuracy": sum(correct) / len(samples),
        "hallucination_rate": graded["hallucination_rate"],
        "accuracy_by_level": {lv: sum(v) / len(v) for lv, v in sorted(by_level.items())},
        "completions": texts,
    }


def measure_build(
    out: str | Path,
    *,
    seed: int = 0,
    n: int = 500,
    levels: Sequence[int] = (1, 2, 3),
    batch_size: int = 50,
) -> dict[str, Any]:
    """Measure ``OUT/lm`` from scene words and ``OUT/vlm`` from images on ``n`` held-out
    samples (``iter_samples(n, seed + 1)``, the samples of ``OUT/data/test``)."""
    out = Path(out)
    for part in ("lm", "vlm"):
        if not (out / part / "config.json").is_file():
            raise R1V2Error(f"{out / part / 'config.json'}: file not found (run `r1v2 toy build`)")
    samples = list(iter_samples(n, seed + 1, levels=levels))
    result: dict[str, Any] = {"n": n, "seed": seed}
    for part, from_image in (("lm", False), ("vlm", True)):
        start = time.perf_counter()
        with torch.inference_mode():
            metrics = evaluate(
                Policy.from_pretrained(out / part),
                samples,
                from_image=from_image,
                batch_size=batch_size,
            )
        metrics["seconds"] = round(time.perf_counter() - start, 1)
        metrics["examples"] = metrics.pop("completions")[:3]
        result[part] = metrics
    return result


@dataclasses.dataclass
class ToyEvalConfig:
    """``r1v2 toy eval``: measure a toy build's LM (scene in words) and VLM (image)."""

    out: str = option("runs/toy", "the toy build's folder (holds lm/ and vlm/)")
    seed: int = option(0, "the build's seed; the held-out samples are those of seed + 1")
    n: int = option(500, "number of held-out samples")
    levels: list[int] = option([1, 2, 3], "question levels of the held-out samples")
    batch_size: int = option(50, "prompts per generate call")

    def validate(self) -> None:
        if self.n < 1 or self.batch_size < 1:
            raise R1V2Error("config fields 'n' and 'batch_size' must be >= 1")


def run_eval(cfg: ToyEvalConfig) -> int:
    """Measure, print a two-line summary and write ``OUT/measure.json``."""
    result = measure_build(
        cfg.out, seed=cfg.seed, n=cfg.n, levels=cfg.levels, batch_size=cfg.batch_size
    )
    for part, what in (("lm", "text LM (scene in words)"), ("vlm", "VLM (image)")):
        m = result[part]
        levels = ", ".join(f"L{lv} {a:.1%}" for lv, a in m["accuracy_by_level"].items())
        print(
            f"{what:<26} accuracy {m['accuracy']:.1%} ({levels}), "
            f"hallucination rate {m['hallucination_rate']:.1%}, n={m['n']}, {m['seconds']} s"
        )
    from r1v2.toy.reward import METRICS_FILE

    rm_metrics = Path(cfg.out) / "rm" / METRICS_FILE
    if rm_metrics.is_file():  # measured on held-out pairs when the reward model was trained
        m = json.loads(rm_metrics.read_text())
        print(
            f"{'reward model (pairs)':<26} accuracy {m['accuracy_hallucinated']:.1%} vs "
            f"hallucinated, {m['accuracy_repetitive']:.1%} vs repetitive, n={m['n_eval']} "
            f"(from {rm_metrics})"
        )
    path = Path(cfg.out) / "measure.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0
