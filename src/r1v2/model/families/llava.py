"""LLaVA (1.5 style: one ``pixel_values`` row per image, a CLIP/SigLIP tower, an MLP
projector) and LLaVA-OneVision (any-resolution patches per image, an ``image_newline``
embedding between rows of patches)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from r1v2.model.families.base import PER_IMAGE, Family, ImageFeatures, flat


class Llava(Family):
    name = "LLaVA"
    model_types = ("llava",)


class LlavaOneVision(Family):
    """The processor returns ``pixel_values`` ``[I, patches, C, H, W]``, ``image_sizes``
    ``[I, 2]`` and ``batch_num_images`` (images per prompt that has any): a prompt with one
    image is cut into any-resolution patches, one with several is not. ``batch_num_images``
    is rebuilt from the prompts at hand, so that a subset of prompts keeps its meaning."""

    name = "LLaVA-OneVision"
    model_types = ("llava_onevision",)
    image_keys = {"pixel_values": PER_IMAGE, "image_sizes": PER_IMAGE}
    adapter_modules = ("multi_modal_projector", "image_newline")

    def image_features(self, model, vision, images: Sequence[int]) -> ImageFeatures:
        counts = torch.tensor([n for n in images if n], device=vision["image_sizes"].device)
        out = model.get_image_features(
            pixel_values=vision["pixel_values"],
            image_sizes=vision["image_sizes"],
            batch_num_images=counts,
            return_dict=True,
        )
        return ImageFeatures(flat(out.pooler_output))


LLAVA, LLAVA_ONEVISION = Llava(), LlavaOneVision()
