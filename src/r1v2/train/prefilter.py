"""``r1v2 prefilter``: offline prompt filtering before GRPO (RECIPE section 4).

Roll out k responses per prompt with the initial policy, score them with the hybrid reward,
and keep only prompts whose k rewards are not tied: a prompt the policy always solves
or always fails gives zero advantages to every sample and so no gradient. "Tied" is the
trainer's own rule (:func:`r1v2.algos.grpo.group_advantages` with ``std_floor``): exactly equal
rewards, or a reward std below the floor.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from r1v2.algos.grpo import group_advantages
from r1v2.config import option
from r1v2.errors import R1V2Error
from r1v2.train.grpo import STD_FLOOR
from r1v2.train.stage import ScoredSetup, load_policy, load_pool, make_reward

STATS = ".stats.json"  # beside the filtered pool: <out>.stats.json


@dataclass
class PrefilterConfig(ScoredSetup):
    """``r1v2 prefilter``: drop prompts whose k rollouts all get the same reward.

    The policy, sampling and reward settings are GRPO's own (:class:`ScoredSetup`), so a
    prompt is judged as training would score it."""

    out: str = option("runs/toy/data/filtered/samples.jsonl", "filtered pool to write (JSONL)")
    overwrite: bool = option(False, "replace an existing out file (and its .stats.json)")
    k: int = option(8, "rollouts per prompt (grpo's group_size; TRL: num_generations)")
    prompts_per_generate: int = option(16, "prompts per generate call")
    std_floor: float = option(
        STD_FLOOR, "a prompt whose k rewards have a std below this counts as tied (as in grpo)"
    )
    progress: bool = option(True, "show a progress bar")

    def validate(self) -> None:
        self.generation.validate("generation.")
        if self.k < 2:
            raise R1V2Error("config field 'k' must be >= 2 (equal rewards need at least two)")


def classify(
    totals: list[float | None], accuracy: list[float | None] | None, std_floor: float
) -> str:
    """``kept``, ``all_correct``, ``all_wrong``, ``all_equal`` or ``unscored`` for one prompt:
    kept when GRPO would give its group a non-zero advantage."""
    scored = [r for r in totals if r is not None]
    if len(scored) < 2:
        return "unscored"
    if bool(group_advantages(totals, len(totals), std_floor=std_floor).abs().gt(0).any()):
        return "kept"
    acc = [a for a in (accuracy or []) if a is not None]
    if acc and all(a == 1.0 for a in acc):
        return "all_correct"
    if acc and all(a == 0.0 for a in acc):
        return "all_wrong"
    return "all_equal"


def score_prompts(cfg: PrefilterConfig, pool: list) -> Iterator[tuple[Any, str, float | None]]:
    """``(sample, verdict, accuracy)`` for each prompt of ``pool``, in order: the verdict of
    its ``cfg.k`` rollouts (:func:`classify`) and their mean accuracy term (None when the
    reward has no accuracy term or none of them was scored). Rollouts and rewards are GRPO's
    own (``cfg``'s policy, sampling and reward settings), seeded by ``cfg.seed``."""
    from r1v2.rollout import TransformersEngine
    from r1v2.train.progress import StepProgress

    policy = load_policy(cfg)
    engine = TransformersEngine(policy)
    reward_fn = make_reward(cfg, policy)
    progress = StepProgress(len(pool), enabled=cfg.progress, label="prompts")
    for start in range(0, len(pool), cfg.prompts_per_generate):
        items = pool[start : start + cfg.prompts_per_generate]
        torch.manual_seed(cfg.seed * 1_000_003 + start)
        texts = engine.generate(items, cfg.generation, group_size=cfg.k).texts
        result = reward_fn(texts, [items[i // cfg.k] for i in range(len(texts))])
        acc = result.components.get("accuracy")
        for j, item in enumerate(items):
            rows = slice(j * cfg.k, (j + 1) * cfg.k)
            verdict = classify(result.total[rows], acc[rows] if acc else None, cfg.std_floor)
            scored = [a for a in acc[rows] if a is not None] if acc else []
            yield item, verdict, (sum(scored) / len(scored) if scored else None)
        progress.update(min(start + len(items), len(pool)), {})
    progress.close()


def prefilter(cfg: PrefilterConfig) -> dict:
    """Filter the pool; writes ``cfg.out`` and ``<out>.stats.json``; returns the stats.

    ``out`` is checked before any work: an existing file (or stats file) needs ``overwrite``;
    the pool itself, or a file inside its folder, is refused. Both files are written through a
    temporary name, so an interrupted run leaves no half file."""
    from r1v2.data.loaders import write_jsonl
    from r1v2.fsutil import check_output_file, write_atomic

    check_output_file(
        cfg.out, "out", overwrite=cfg.overwrite, inputs={"data": cfg.data}, sidecars=(STATS,)
    )
    pool = load_pool(cfg.data)
    counts = {"kept": 0, "all_correct": 0, "all_wrong": 0, "all_equal": 0, "unscored": 0}
    kept = []
    for item, verdict, _ in score_prompts(cfg, pool):
        counts[verdict] += 1
        if verdict == "kept":
            kept.append(item)
    if not kept:
        raise R1V2Error(
            f"prefilter kept no prompt of {len(pool)} ({counts}); every prompt's rollouts got "
            "equal rewards: raise k or the sampling temperature, or check the reward"
        )
    out = write_jsonl(kept, cfg.out)
    stats = {
        "prompts": len(pool),
        **counts,
        "kept_fraction": counts["kept"] / len(pool),
        "k": cfg.k,
    }
    write_atomic(Path(str(out) + STATS), json.dumps(stats, indent=2))
    print(f"kept {counts['kept']} of {len(pool)} prompts -> {out}  ({json.dumps(counts)})")
    return stats


def run(cfg: PrefilterConfig) -> int:
    prefilter(cfg)
    return 0
