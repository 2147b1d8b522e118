"""``r1v2 prefilter``: offline prompt filtering before GRPO (RECIPE section 4).

Roll out k responses per prompt with the initial policy, score them with the hybrid reward,
and keep only prompts whose k rewards are not tied: a prompt the policy always solves
or always fails gives zero advantages to every sample and so no gradient. "Tied" is the
trainer's own rule (:func:`r1v2.algos.grpo.group_advantages` with ``std_floor``): exactly equal
rewards, or a reward std below the floor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from r1v2.algos.grpo import group_advantages
from r1v2.config import option
from r1v2.errors import R1V2Error
from r1v2.model.policy import SamplingConfig
from r1v2.rewards.hybrid import HybridRewardConfig
from r1v2.train.grpo import STD_FLOOR


@dataclass
class PrefilterConfig:
    """``r1v2 prefilter``: drop prompts whose k rollouts all get the same reward."""

    model: str = option("runs/toy/vlm", "initial policy checkpoint")
    data: str = option("runs/toy/data/train", "prompt pool: Sample JSONL/parquet file or folder")
    out: str = option("runs/toy/data/filtered/samples.jsonl", "filtered pool to write (JSONL)")
    k: int = option(8, "rollouts per prompt")
    prompts_per_generate: int = option(16, "prompts per generate call")
    seed: int = option(0, "seed of the rollouts")
    device: str = option("auto", "auto (CUDA when available), cpu or cuda")
    std_floor: float = option(
        STD_FLOOR, "a prompt whose k rewards have a std below this counts as tied (as in grpo)"
    )
    generation: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(max_new_tokens=128),
        metadata={"help": "sampling of rollouts"},
    )
    reward: HybridRewardConfig = field(
        default_factory=HybridRewardConfig, metadata={"help": "reward the prompts are judged by"}
    )
    progress: bool = option(True, "show a progress bar")

    def validate(self) -> None:
        self.generation.validate()
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


def prefilter(cfg: PrefilterConfig) -> dict:
    """Filter the pool; writes ``cfg.out`` and ``<out>.stats.json``; returns the stats."""
    from r1v2.data.loaders import load_samples, write_jsonl
    from r1v2.model.policy import Policy, format_question
    from r1v2.rewards.hybrid import HybridReward
    from r1v2.train.progress import StepProgress

    pool = load_samples(cfg.data).samples
    if not pool:
        raise R1V2Error(f"{cfg.data}: no samples")
    policy = Policy.from_pretrained(cfg.model, device=cfg.device)
    reward_fn = HybridReward.from_config(
        cfg.reward,
        question_fn=lambda s: format_question(s.question, s.choices),
        after_think=policy.opens_think,
    )
    counts = {"kept": 0, "all_correct": 0, "all_wrong": 0, "all_equal": 0, "unscored": 0}
    kept = []
    progress = StepProgress(len(pool), enabled=cfg.progress, label="prompts")
    for start in range(0, len(pool), cfg.prompts_per_generate):
        items = pool[start : start + cfg.prompts_per_generate]
        torch.manual_seed(cfg.seed * 1_000_003 + start)
        texts = policy.generate(items, cfg.generation, group_size=cfg.k).texts
        result = reward_fn(texts, [items[i // cfg.k] for i in range(len(texts))])
        for j, item in enumerate(items):
            rows = slice(j * cfg.k, (j + 1) * cfg.k)
            acc = result.components.get("accuracy")
            verdict = classify(result.total[rows], acc[rows] if acc else None, cfg.std_floor)
            counts[verdict] += 1
            if verdict == "kept":
                kept.append(item)
        progress.update(min(start + len(items), len(pool)), {})
    progress.close()
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
    Path(str(out) + ".stats.json").write_text(json.dumps(stats, indent=2))
    print(f"kept {counts['kept']} of {len(pool)} prompts -> {out}  ({json.dumps(counts)})")
    return stats


def run(cfg: PrefilterConfig) -> int:
    prefilter(cfg)
    return 0
