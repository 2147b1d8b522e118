"""Stage 3 of the toy build: warm up the assembled model's adapter on image -> scene words.

Alignment, not reasoning: with the vision encoder and the LLM frozen, the adapter learns to
map each cell's image token onto the LLM's input embedding of that cell's word
(``redcircle``, ``empty``), the word the LM read in that place during text pretraining.

Choice: the objective is the mean squared error between the adapter's output for cell ``k``
and the embedding row of cell word ``k`` (per element, averaged over the batch, the 16 cells
and the hidden size). The number of steps is the knob: a short warm-up leaves image tokens
between words, so the LM misreads some cells (room for RL); a long one makes perception exact.

:func:`alignment_error` measures where any checkpoint's image tokens lie against those words
(the demo reports it per stage).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, set_seed

from r1v2.config import option
from r1v2.data.synthetic import COLOURS, SHAPES, Scene, cell_word, render, sample_scene
from r1v2.model.freeze import set_trainable
from r1v2.toy.common import ALIGN_STREAM, check_at_least_one, cosine_schedule
from r1v2.train.progress import StepProgress


def align_batch(processor, tokenizer, seed: int, step: int, batch_size: int):
    """Pixels ``[B, 3, 64, 64]`` (through the checkpoint's own image processor) and the token
    ids ``[B, 16]`` of each scene's cell words, for fresh random scenes of step ``step``."""
    rng = random.Random(f"{seed + ALIGN_STREAM}:{step}")
    scenes = [sample_scene(rng, rng.choice((1, 2, 3))) for _ in range(batch_size)]
    pixel_values = processor.image_processor(
        [render(s) for s in scenes], return_tensors="pt"
    ).pixel_values  # [B, 3, 64, 64]
    word_ids = torch.tensor([tokenizer.convert_tokens_to_ids(s.words()) for s in scenes])  # [B, 16]
    return pixel_values, word_ids


def align_loss(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error of image tokens ``[B, 16, H]`` onto word embeddings ``[B, 16, H]``."""
    return torch.nn.functional.mse_loss(features, targets)


def cell_words() -> list[str]:
    """Every word a cell can be: each colour-shape pair, then ``empty``."""
    return [cell_word((c, s)) for c in COLOURS for s in SHAPES] + [cell_word(None)]


def alignment_error(model, processor, scenes: list[Scene]) -> dict[str, float]:
    """How far a VLM's image tokens lie from the LLM's input embeddings of the cell words they
    stand for, over ``scenes`` rendered through the checkpoint's image processor.

    For each cell ``k`` with image token ``t_k`` and word ``w_k``, the relative error is
    ``||t_k - e(w_k)|| / ||e(w_k)||``. Returns ``{"cells", "object_error", "empty_error",
    "nearest_word_accuracy"}``: the mean relative error over cells holding a shape and over
    empty cells, and the share of cells whose token lies nearest (L2) to its own word among
    :func:`cell_words` (the word the LM would read if it read the nearest one).
    """
    tokenizer = processor.tokenizer
    words = torch.tensor(tokenizer.convert_tokens_to_ids(cell_words()))  # [W]
    pixel_values = processor.image_processor(
        [render(s) for s in scenes], return_tensors="pt"
    ).pixel_values  # [B, 3, px, px]
    word_ids = torch.tensor([tokenizer.convert_tokens_to_ids(s.words()) for s in scenes])
    with torch.no_grad():
        tokens = model.get_image_features(pixel_values=pixel_values).pooler_output
        tokens = tokens.float().reshape(-1, tokens.shape[-1])  # [B * 16, H]
        table = model.get_input_embeddings().weight.float()
        targets = table[word_ids.reshape(-1)]  # [B * 16, H]
        error = (tokens - targets).norm(dim=-1) / targets.norm(dim=-1)  # [B * 16]
        nearest = words[torch.cdist(tokens, table[words]).argmin(dim=-1)]  # [B * 16]
    empty = word_ids.reshape(-1) == words[-1]
    return {
        "cells": int(word_ids.numel()),
        "object_error": error[~empty].mean().item() if (~empty).any() else float("nan"),
        "empty_error": error[empty].mean().item() if empty.any() else float("nan"),
        "nearest_word_accuracy": (nearest == word_ids.reshape(-1)).float().mean().item(),
    }


@dataclass
class AlignConfig:
    """Stage 3 (``align.*`` of ``r1v2 toy build``): the assembled model's adapter warm-up."""

    steps: int = option(35, "adapter warm-up steps: the knob that sets how well the VLM perceives")
    batch_size: int = option(32, "images per adapter warm-up step")
    lr: float = option(1e-3, "adapter peak learning rate (warm-up, then cosine decay to a tenth)")

    def validate(self, prefix: str = "") -> None:
        check_at_least_one(self, ("steps", "batch_size"), prefix)


def warm_up_adapter(
    vlm_dir: str | Path, cfg: AlignConfig, *, seed: int, progress: bool
) -> dict[str, Any]:
    """Train the adapter of the assembled checkpoint in ``vlm_dir`` for ``cfg.steps`` steps and
    save the model back there. Returns ``{"steps", "seconds", "final_loss", "embedding_scale"}``
    (the last is the mean squared norm per element of the word embeddings, the loss's scale).
    """
    cfg.validate()
    set_seed(seed)
    vlm_dir = Path(vlm_dir)
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(vlm_dir)
    set_trainable(model, "adapter")
    embeddings = model.get_input_embeddings()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    scheduler = cosine_schedule(optimizer, cfg.steps)
    start, last = time.perf_counter(), float("nan")
    with StepProgress(cfg.steps, label="adapter", enabled=progress, keys=None) as bar:
        for step in range(cfg.steps):
            pixel_values, word_ids = align_batch(
                processor, processor.tokenizer, seed, step, cfg.batch_size
            )
            features = model.get_image_features(pixel_values=pixel_values).pooler_output
            with torch.no_grad():
                targets = embeddings(word_ids)  # [B, 16, H]
            loss = align_loss(features, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            last = loss.item()
            bar.update(step + 1, {"mse": last})
    with torch.no_grad():
        scale = embeddings.weight.pow(2).mean().item()
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval().save_pretrained(vlm_dir)
    return {
        "steps": cfg.steps,
        "seconds": round(time.perf_counter() - start, 1),
        "final_loss": round(last, 6),
        "embedding_scale": round(scale, 6),
    }
