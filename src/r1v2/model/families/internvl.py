"""InternVL (``InternVLForConditionalGeneration``), the family ``r1v2 assemble`` builds: one
``pixel_values`` row per image tile, a fixed number of image tokens per tile."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from r1v2.model.families.base import PER_IMAGE, Family


class InternVL(Family):
    name = "InternVL"
    model_types = ("internvl",)
    nested_images = False  # one flat list of images; the processor splits them by prompt
    image_keys = {"pixel_values": PER_IMAGE}

    def vision_rows(
        self, vision: dict[str, torch.Tensor], images: Sequence[int], slots: Sequence[int]
    ) -> dict[str, list[int]]:
        """Tiles per prompt: every tile brings the same number of image tokens."""
        tiles = vision["pixel_values"].shape[0]
        per_tile = sum(slots) // tiles if tiles else 1
        return {"pixel_values": [n // per_tile for n in slots]}


INTERNVL = InternVL()
