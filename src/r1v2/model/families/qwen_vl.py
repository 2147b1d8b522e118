"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: flattened patches with a ``[t, h, w]`` grid per image,
3-D multimodal rotary positions (M-RoPE), and, for Qwen3-VL, deepstack features.

The processor returns ``pixel_values`` ``[sum_i t_i h_i w_i, D]`` (the patches of every image,
image after image), ``image_grid_thw`` ``[I, 3]`` and ``mm_token_type_ids`` ``[P, Tp]`` (1 at
image tokens). Positions come from the model's own ``get_rope_index``; a completion token
``k`` then sits at ``max(prompt positions) + 1 + k`` on all three axes, as ``generate`` and
the model's forward place it. The vision encoder's ``merger`` (and Qwen3-VL's
``deepstack_merger_list``) is the adapter.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from r1v2.model.families.base import (
    PER_IMAGE,
    PER_PATCH,
    Family,
    ImageFeatures,
    Part,
    children_except,
    flat,
)


class QwenVL(Family):
    name = "Qwen2-VL"
    model_types = ("qwen2_vl",)
    image_keys = {"pixel_values": PER_PATCH, "image_grid_thw": PER_IMAGE}
    token_keys = ("mm_token_type_ids",)
    adapter_modules = ("merger",)

    def vision_rows(
        self, vision: dict[str, torch.Tensor], images: Sequence[int], slots: Sequence[int]
    ) -> dict[str, list[int]]:
        """Rows per prompt: one grid per image, ``t * h * w`` patches per image."""
        grids = vision["image_grid_thw"]  # [I, 3]
        patches = grids.prod(dim=-1).tolist()  # [I]
        out_patches, start = [], 0
        for n in images:
            out_patches.append(int(sum(patches[start : start + n])))
            start += n
        return {"pixel_values": out_patches, "image_grid_thw": list(images)}

    def image_features(self, model, vision, images) -> ImageFeatures:
        out = model.get_image_features(
            pixel_values=vision["pixel_values"],
            image_grid_thw=vision["image_grid_thw"],
            return_dict=True,
        )
        deepstack = getattr(out, "deepstack_features", None)
        return ImageFeatures(
            flat(out.pooler_output), [flat(f) for f in deepstack] if deepstack else None
        )

    def positions(self, model, input_ids, attention_mask, tokens, vision):
        """``[3, P, Tp]`` from transformers' ``get_rope_index`` (padding at 0)."""
        if "image_grid_thw" not in vision:
            return None
        rope_index = inner(model).get_rope_index
        kwargs = {
            "image_grid_thw": vision["image_grid_thw"],
            "attention_mask": attention_mask.long(),
        }
        if "mm_token_type_ids" in inspect.signature(rope_index).parameters:
            kwargs["mm_token_type_ids"] = tokens["mm_token_type_ids"]
        positions, _ = rope_index(input_ids, **kwargs)
        return positions  # [3, P, Tp]

    def parts(self, model: nn.Module) -> dict[str, list[Part]]:
        visual = inner(model).visual
        return {
            "vision": children_except(visual, self.adapter_modules),
            "adapter": [getattr(visual, n) for n in self.adapter_modules],
            "llm": [inner(model).language_model, model.get_output_embeddings()],
        }


class Qwen25VL(QwenVL):
    name = "Qwen2.5-VL"
    model_types = ("qwen2_5_vl",)


class Qwen3VL(QwenVL):
    name = "Qwen3-VL"
    model_types = ("qwen3_vl",)
    adapter_modules = ("merger", "deepstack_merger_list")
    own_prefill = True  # deepstack features reach the LLM only through r1v2's own prefill

    def deepstack_target(self, model: nn.Module) -> nn.Module | None:
        return inner(model).language_model


def inner(model: nn.Module) -> nn.Module:
    """The ``...Model`` inside a ``...ForConditionalGeneration``."""
    return model.model


QWEN2_VL, QWEN2_5_VL, QWEN3_VL = QwenVL(), Qwen25VL(), Qwen3VL()
