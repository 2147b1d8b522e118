"""What one vision-language family does differently, behind one small interface.

A :class:`Family` knows, for the models of its ``model_types``:

- what its processor returns: which tensors go with the images (``image_keys``, each with
  its rows per prompt: one per image, one per prompt, or per patch) and which are per-token
  (``token_keys``, ``[P, Tp]`` like ``input_ids``); whether the processor takes one list of
  images per prompt (``nested_images``);
- how its image features are computed from those tensors (:meth:`image_features`: the
  features of every image-token slot, flat in slot order, as the model's own forward merges
  them; Qwen3-VL's deepstack features beside them);
- the prompts' position ids (:meth:`positions`: None for 1-D positions counted from the
  attention mask; Qwen's 3-D M-RoPE positions from transformers' own ``get_rope_index``);
- its parts for ``trainable`` (:meth:`parts`: ``vision``, ``adapter``, ``llm``, disjoint);
- whether ``generate`` can prefill its prompts from embeddings (``own_prefill``: False for
  Gemma 3, whose ``generate`` refuses ``inputs_embeds``, and Qwen3-VL, whose deepstack
  features reach the LLM only through its own forward).

The policy (:mod:`r1v2.model.policy`) calls these and nothing family-specific of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

# The units an image-aligned processor output counts its rows in (dim 0).
PER_IMAGE, PER_PROMPT, PER_PATCH = "image", "prompt", "patch"

Part = nn.Module | nn.Parameter


@dataclasses.dataclass
class ImageFeatures:
    """The image features of a batch, in image-slot order (row ``k`` fills the ``k``-th
    image-token position of the batch, prompts in order).

    ``embeds`` ``[F, H]``; ``deepstack``: Qwen3-VL's per-layer features ``[F, H]`` added to
    the LLM's hidden states at the same slots in its first layers (None for other families).
    """

    embeds: torch.Tensor  # [F, H]
    deepstack: list[torch.Tensor] | None = None  # each [F, H]


class Family:
    """A vision-language family; the defaults fit LLaVA-style models (``vision_tower``,
    ``multi_modal_projector``, ``language_model``, one ``pixel_values`` row per image)."""

    name = "base"  # as users know it, for tables and errors
    model_types: tuple[str, ...] = ()
    nested_images = True
    image_keys: dict[str, str] = {"pixel_values": PER_IMAGE}
    token_keys: tuple[str, ...] = ()
    forward_token_keys: tuple[str, ...] = ()  # token_keys the model's forward takes as they are
    own_prefill = False
    vision_module = "vision_tower"  # attribute names on the inner ``model.model``
    adapter_modules: tuple[str, ...] = ("multi_modal_projector",)
    llm_module = "language_model"

    # ---- processor outputs --------------------------------------------------------------

    def vision_rows(
        self, vision: dict[str, torch.Tensor], images: Sequence[int], slots: Sequence[int]
    ) -> dict[str, list[int]]:
        """Rows (dim 0) of each image tensor in ``vision`` that belong to each prompt, given
        the prompts' image counts ``images`` and image-token counts ``slots``."""
        units = {PER_IMAGE: list(images), PER_PROMPT: [1] * len(images)}
        return {key: units[self.image_keys[key]] for key in vision}

    # ---- the model ----------------------------------------------------------------------

    def image_features(
        self, model: nn.Module, vision: dict[str, torch.Tensor], images: Sequence[int]
    ) -> ImageFeatures:
        """Features of every image slot of the prompts whose image tensors are ``vision``
        (``images``: their image counts, prompts with none included)."""
        out = model.get_image_features(**vision, return_dict=True)
        return ImageFeatures(flat(out.pooler_output))

    def positions(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        tokens: dict[str, torch.Tensor],
        vision: dict[str, torch.Tensor],
    ) -> torch.Tensor | None:
        """Position ids of left-padded prompts ``[P, Tp]``: None means 1-D positions
        counting real tokens from 0 (the policy computes them from the mask)."""
        return None

    def parts(self, model: nn.Module) -> dict[str, list[Part]]:
        """``vision``, ``adapter`` and ``llm`` (LM head included): disjoint, so that each
        parameter is counted and unfrozen with one part."""
        inner = model.model
        adapter = [getattr(inner, name) for name in self.adapter_modules]
        return {
            "vision": [getattr(inner, self.vision_module)],
            "adapter": adapter,
            "llm": [getattr(inner, self.llm_module), model.get_output_embeddings()],
        }

    def deepstack_target(self, model: nn.Module) -> nn.Module | None:
        """The module whose forward takes ``visual_pos_masks`` / ``deepstack_visual_embeds``
        (Qwen3-VL's language model), or None."""
        return None


def flat(features: Any) -> torch.Tensor:
    """``[F, H]`` from a ``[I, S, H]`` tensor or a sequence of ``[S_i, H]`` tensors."""
    if isinstance(features, torch.Tensor):
        return features.reshape(-1, features.shape[-1])
    return torch.cat([f.reshape(-1, f.shape[-1]) for f in features], dim=0)


def children_except(module: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The direct children of ``module`` not named in ``names`` (a vision encoder without
    the merger it holds)."""
    return [child for name, child in module.named_children() if name not in names]
