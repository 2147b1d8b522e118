"""Idefics3 and SmolVLM: ``pixel_values`` ``[P, N, C, H, W]`` holds each prompt's image crops
(all-zero crops pad a prompt to the batch's ``N``; the model drops them), with a
``pixel_attention_mask``; a pixel-shuffle ``connector`` is the adapter. SmolVLM's processor
needs ``num2words`` (``pip install 'r1v2[smolvlm]'``)."""

from __future__ import annotations

from r1v2.model.families.base import PER_PROMPT, Family, ImageFeatures, flat


class Idefics3(Family):
    name = "Idefics3 / SmolVLM"
    model_types = ("idefics3", "smolvlm")
    image_keys = {"pixel_values": PER_PROMPT, "pixel_attention_mask": PER_PROMPT}
    vision_module = "vision_model"
    adapter_modules = ("connector",)
    llm_module = "text_model"

    def image_features(self, model, vision, images) -> ImageFeatures:
        out = model.get_image_features(**vision, return_dict=True)
        return ImageFeatures(flat(out.pooler_output))


IDEFICS3 = Idefics3()
