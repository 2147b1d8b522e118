"""The vision-language families r1v2 trains, one small module each (:mod:`.base` says what a
family knows). :func:`family_of` picks a model's family by its config's ``model_type``.

    family_of(model)      # -> QWEN2_5_VL for a Qwen2_5_VLForConditionalGeneration
"""

from __future__ import annotations

from torch import nn

from r1v2.errors import R1V2Error
from r1v2.model.families.base import Family, ImageFeatures
from r1v2.model.families.gemma3 import GEMMA3
from r1v2.model.families.idefics3 import IDEFICS3
from r1v2.model.families.internvl import INTERNVL
from r1v2.model.families.llava import LLAVA, LLAVA_ONEVISION
from r1v2.model.families.qwen_vl import QWEN2_5_VL, QWEN2_VL, QWEN3_VL
from r1v2.model.families.text import TEXT

FAMILIES: tuple[Family, ...] = (
    QWEN2_5_VL,
    QWEN3_VL,
    QWEN2_VL,
    INTERNVL,
    LLAVA,
    LLAVA_ONEVISION,
    IDEFICS3,
    GEMMA3,
)
BY_MODEL_TYPE = {t: family for family in FAMILIES for t in family.model_types}

__all__ = [
    "FAMILIES",
    "TEXT",
    "Family",
    "ImageFeatures",
    "family_of",
    "family_of_config",
    "supported",
]


def supported() -> str:
    """The supported families, for messages: ``Qwen2.5-VL (qwen2_5_vl), ...``."""
    return ", ".join(f"{f.name} ({', '.join(f.model_types)})" for f in FAMILIES)


def family_of(model: nn.Module, *, vision: bool = True) -> Family:
    """The family of a vision-language ``model`` (by ``config.model_type``), or
    :data:`TEXT` for a text-only one (``vision=False``). An unknown vision-language model
    raises an R1V2Error naming its class and the supported families."""
    if not vision:
        return TEXT
    return family_of_config(model.config, type(model).__name__)


def family_of_config(config, name: str | None = None) -> Family:
    """:func:`family_of` from a vision-language checkpoint's config (before loading it);
    ``name`` its class (default: the config's ``architectures``)."""
    model_type = getattr(config, "model_type", None)
    if model_type in BY_MODEL_TYPE:
        return BY_MODEL_TYPE[model_type]
    name = name or " ".join(getattr(config, "architectures", None) or [type(config).__name__])
    raise R1V2Error(
        f"{name} (model_type {model_type!r}) is a vision-language model r1v2 does not "
        f"support yet; supported: {supported()}"
    )
