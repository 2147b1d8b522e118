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
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen2ForCausalLM

from r1v2.data.synthetic import SynthSample, iter_samples, vocabulary
from r1v2.model.tokenizer import load_tokenizer
from r1v2.toy.common import (
    LM_STREAM,
    completion_text,
    cosine_lr,
    seed_everything,
    stage_progress,
    text_user_turn,
)
from r1v2.toy.tiny import tiny_llm

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


def train_lm(
    out_dir: str | Path,
    *,
    seed: int = 0,
    steps: int = 1500,
    batch_size: int = 32,
    lr: float = 2e-3,
    hidden_size: int = 192,
    num_layers: int = 4,
    num_heads: int = 4,
    levels: Sequence[int] = (1, 2, 3),
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain the LM for ``steps`` AdamW steps and save it (with tokenizer) to ``out_dir``.

    Returns ``{"steps", "seconds", "final_loss", "parameters"}``.
    """
    seed_everything(seed)
    out = Path(out_dir)
    tiny_llm(
        vocabulary(),
        out,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        seed=seed,
    )
    tokenizer = load_tokenizer(out)
    model = Qwen2ForCausalLM.from_pretrained(out, dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    start, ema = time.perf_counter(), None
    with stage_progress("LM", steps, progress) as bar:
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, steps, lr, warmup=max(1, steps // 20))
            examples = [
                encode_example(tokenizer, text_user_turn(s), completion_text(s))
                for s in lm_samples(seed, step, batch_size, levels)
            ]
            batch = collate(examples, tokenizer.pad_token_id)
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
            bar.update(step + 1, loss=ema)
    model.eval().save_pretrained(out)
    return {
        "steps": steps,
        "seconds": round(time.perf_counter() - start, 1),
        "final_loss": round(float(ema if ema is not None else float("nan")), 4),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
