"""A plain causal LM: text-only prompts, one part (``llm``: the whole model)."""

from __future__ import annotations

from torch import nn

from r1v2.model.families.base import Family, Part


class TextLM(Family):
    name = "causal LM (text only)"
    image_keys: dict[str, str] = {}

    def parts(self, model: nn.Module) -> dict[str, list[Part]]:
        return {"llm": [model]}


TEXT = TextLM()
