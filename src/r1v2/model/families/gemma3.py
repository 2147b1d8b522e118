"""Gemma 3: one ``pixel_values`` row per image (SigLIP, average-pooled to a fixed number of
soft tokens), and ``token_type_ids`` ``[P, Tp]`` (1 at image tokens), with which the model
lets the tokens of one image attend to each other both ways. Its ``generate`` refuses
``inputs_embeds``, so the policy prefills the prompts itself (``own_prefill``) and
``generate`` decodes from that cache."""

from __future__ import annotations

from r1v2.model.families.base import Family


class Gemma3(Family):
    name = "Gemma 3"
    model_types = ("gemma3",)
    token_keys = ("token_type_ids",)
    forward_token_keys = ("token_type_ids",)
    own_prefill = True


GEMMA3 = Gemma3()
