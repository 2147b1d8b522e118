"""Stage 1 of the toy build: a tiny reasoning LM pretrained on text traces.

A Qwen2-shaped causal LM with a word-level tokenizer over the task's vocabulary learns, from
fresh synthetic samples at every step, to answer questions about a scene given in words::

    <|im_start|>user scene : redcircle empty ... how many red circles are there ?<|im_end|>
    <|im_start|>assistant <think> redcircle : 2 . </think> \\boxed{2} <|im_end|>

Choice: the loss covers the assistant turn only (the trace, the answer and ``<|im_end|>``);
the scene words are random and predicting them teaches nothing the RL stages use.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen2ForCausalLM, set_seed

from r1v2.config import option
from r1v2.data.synthetic import SynthSample, iter_samples, vocabulary
from r1v2.model.tokenizer import load_tokenizer
from r1v2.toy.common import (
    LM_STREAM,
    check_at_least_one,
    completion_text,
    cosine_schedule,
    text_user_turn,
)
from r1v2.toy.tiny import tiny_llm
from r1v2.train.progress import StepProgress

IGNORE = -100  # label of a position the loss skips


def encode_example(tokenizer, user: str, completion: str) -> tuple[list[int], int]:
    """Token ids of ``prompt + completion + <|im_end|>`` and the prompt's length in tokens.

    The prompt is the chat template's rendering of the user turn with the generation prompt
    (ending in ``<think>``), exactly as :class:`r1v2.model.policy.Policy` renders it.
    """
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    p = tokenizer(prompt, add_special_tokens=False).input_ids
    c = tokenizer(f"{completion} {tokenizer.eos_token}", add_special_tokens=False).input_ids
    return p + c, len(p)


def collate(examples: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask``/``labels``, each ``[B, T]``.

    ``labels`` equal ``input_ids`` on the completion tokens and :data:`IGNORE` on the prompt
    and the padding.
    """
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # [B, T]
    attention = torch.zeros((len(examples), width), dtype=torch.long)  # [B, T]
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)  # [B, T]
    for row, (ids, prompt_len) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def lm_samples(seed: int, step: int, batch_size: int, levels: Sequence[int]) -> list[SynthSample]:
    """The fresh samples of training step ``step`` (a stream of its own, see ``LM_STREAM``)."""
    return list(iter_samples(batch_size, seed + LM_STREAM, levels=levels, start=step * batch_size))


@dataclass
class LMConfig:
    """Stage 1 (``lm.*`` of ``r1v2 toy build``): the text-only reasoning LM."""

    steps: int = option(2000, "LM pretraining steps (fresh samples every step)")
    batch_size: int = option(32, "LM pretraining sequences per step")
    lr: float = option(3e-3, "LM peak learning rate (warm-up, then cosine decay to a tenth)")
    hidden_size: int = option(96, "LM hidden size")
    layers: int = option(2, "LM decoder layers")
    heads: int = option(4, "LM attention heads")

    def validate(self, prefix: str = "") -> None:
        check_at_least_one(self, ("steps", "batch_size", "hidden_size", "layers", "heads"), prefix)


def train_lm(
    out_dir: str | Path,
    cfg: LMConfig,
    *,
    seed: int,
    levels: Sequence[int],
    progress: bool,
) -> dict[str, Any]:
    """Pretrain the LM for ``cfg.steps`` AdamW steps on questions of ``levels`` and save it
    (with its tokenizer) to ``out_dir``. Deterministic in ``seed`` (same machine, same threads).

    Returns ``{"steps", "seconds", "final_loss", "parameters"}``.
    """
    cfg.validate()
    set_seed(seed)
    out = Path(out_dir)
    tiny_llm(
        vocabulary(),
        out,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.layers,
        num_heads=cfg.heads,
        seed=seed,
    )
    tokenizer = load_tokenizer(out)
    model = Qwen2ForCausalLM.from_pretrained(out, dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98)
    )
    scheduler = cosine_schedule(optimizer, cfg.steps)
    start, ema = time.perf_counter(), None
    with StepProgress(cfg.steps, label="LM", enabled=progress, keys=None) as bar:
        for step in range(cfg.steps):
            examples = [
                encode_example(tokenizer, text_user_turn(s), completion_text(s))
                for s in lm_samples(seed, step, cfg.batch_size, levels)
            ]
            batch = collate(examples, tokenizer.pad_token_id)
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
            bar.update(step + 1, {"loss": ema})
    model.eval().save_pretrained(out)
    return {
        "steps": cfg.steps,
        "seconds": round(time.perf_counter() - start, 1),
        "final_loss": round(float(ema if ema is not None else float("nan")), 4),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
