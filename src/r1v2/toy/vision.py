"""Stage 2 of the toy build: a tiny InternViT-style encoder pretrained to recognise cells.

The encoder (``InternVLVisionModel``, 64 px images, patch 8 -> 8x8 patches) is trained with a
per-cell recognition objective: its patch features (CLS dropped) go through the same pixel
shuffle the assembled model applies (2x2 patches -> one token, row-major cells), and a linear
head classifies each of the 16 tokens as empty or one of the 9 colour+shape kinds. The head is
thrown away; only the encoder is saved, so each cell's token already separates colour and
shape when the adapter first sees it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import InternVLVisionModel, set_seed
from transformers.models.internvl.modeling_internvl import InternVLModel

from r1v2.config import option
from r1v2.data.synthetic import COLOURS, SHAPES, Scene, render, sample_scene
from r1v2.model.assemble import IMAGENET_MEAN, IMAGENET_STD
from r1v2.toy.common import VISION_STREAM, check_at_least_one, cosine_schedule
from r1v2.toy.tiny import tiny_vision
from r1v2.train.progress import StepProgress

IMAGE_SIZE, PATCH_SIZE, DOWNSAMPLE = 64, 8, 0.5
# Class 0 is an empty cell; class 1 + 3 * colour + shape is a colour+shape kind.
N_CLASSES = 1 + len(COLOURS) * len(SHAPES)


def cell_classes(scene: Scene) -> list[int]:
    """The class of each cell in row-major order (0 = empty, 1..9 = colour+shape kinds)."""
    return [
        0 if c is None else 1 + COLOURS.index(c[0]) * len(SHAPES) + SHAPES.index(c[1])
        for c in scene.cells
    ]


def pixels(images: Sequence[Image.Image]) -> torch.Tensor:
    """``[B, 3, H, W]`` float pixels normalised with InternViT's (ImageNet) statistics, as the
    assembled model's processor normalises them (the images are already at the model's size)."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
    arr = (arr - np.array(IMAGENET_MEAN, dtype=np.float32)) / np.array(
        IMAGENET_STD, dtype=np.float32
    )
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # [B, 3, H, W]


def cell_features(encoder: InternVLVisionModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """``[B, 16, 4 * H]``: the encoder's last-layer patch features after pixel shuffle, one
    token per cell in row-major order (what the assembled model feeds its adapter)."""
    feats = encoder(pixel_values=pixel_values).last_hidden_state[:, 1:]  # [B, 64, H], CLS dropped
    b, n, h = feats.shape
    side = int(n**0.5)
    grid = feats.reshape(b, side, side, h)  # [B, 8, 8, H]
    shuffled = InternVLModel.pixel_shuffle(None, grid, scale_factor=DOWNSAMPLE)  # [B, 4, 4, 4H]
    return shuffled.reshape(b, -1, shuffled.shape[-1])  # [B, 16, 4H]


def vision_batch(seed: int, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels ``[B, 3, 64, 64]`` and cell classes ``[B, 16]`` of fresh random scenes of step ``step``."""
    rng = random.Random(f"{seed + VISION_STREAM}:{step}")
    scenes = [sample_scene(rng, rng.choice((1, 2, 3))) for _ in range(batch_size)]
    labels = torch.tensor([cell_classes(s) for s in scenes])  # [B, 16]
    return pixels([render(s) for s in scenes]), labels


@dataclass
class VisionConfig:
    """Stage 2 (``vision.*`` of ``r1v2 toy build``): the vision encoder."""

    steps: int = option(80, "vision pretraining steps (per-cell classification)")
    batch_size: int = option(32, "images per vision pretraining step")
    lr: float = option(2e-3, "vision peak learning rate (warm-up, then cosine decay to a tenth)")
    hidden_size: int = option(96, "vision encoder hidden size")
    layers: int = option(3, "vision encoder layers")
    heads: int = option(4, "vision encoder attention heads")

    def validate(self, prefix: str = "") -> None:
        check_at_least_one(self, ("steps", "batch_size", "hidden_size", "layers", "heads"), prefix)


def train_vision(
    out_dir: str | Path, cfg: VisionConfig, *, seed: int, progress: bool
) -> dict[str, Any]:
    """Pretrain the encoder for ``cfg.steps`` AdamW steps and save it to ``out_dir``.
    Deterministic in ``seed`` (same machine, same threads).

    Returns ``{"steps", "seconds", "final_loss", "cell_accuracy", "parameters"}``, the cell
    accuracy measured on 256 fresh scenes.
    """
    cfg.validate()
    set_seed(seed)
    out = Path(out_dir)
    tiny_vision(
        out,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.layers,
        num_heads=cfg.heads,
        seed=seed,
    )
    encoder = InternVLVisionModel.from_pretrained(out, dtype=torch.float32).train()
    head = torch.nn.Linear(4 * cfg.hidden_size, N_CLASSES)
    params = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    scheduler = cosine_schedule(optimizer, cfg.steps)
    start, ema = time.perf_counter(), None
    with StepProgress(cfg.steps, label="vision", enabled=progress, keys=None) as bar:
        for step in range(cfg.steps):
            x, y = vision_batch(seed, step, cfg.batch_size)
            logits = head(cell_features(encoder, x))  # [B, 16, C]
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
            bar.update(step + 1, {"loss": ema})
    encoder.eval()
    with torch.no_grad():
        x, y = vision_batch(seed, cfg.steps + 1_000_000, 256)  # a step training never reaches
        accuracy = (head(cell_features(encoder, x)).argmax(-1) == y).float().mean().item()
    encoder.save_pretrained(out)
    return {
        "steps": cfg.steps,
        "seconds": round(time.perf_counter() - start, 1),
        "final_loss": round(float(ema if ema is not None else float("nan")), 4),
        "cell_accuracy": round(accuracy, 4),
        "parameters": sum(p.numel() for p in encoder.parameters()),
    }
