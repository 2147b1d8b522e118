"""Which parts of the assembled model train (RECIPE section 1).

The paper found adapter-only training best (adapter-only > LLM+adapter > adapter+vision);
``"adapter"`` is the default here. The LLM can instead train through LoRA (peft).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Literal

import torch
from torch import nn

from r1v2.config import option
from r1v2.errors import R1V2Error
from r1v2.model.families import family_of
from r1v2.model.families.base import Part

Trainable = Literal["adapter", "llm+adapter", "adapter+vision", "all"]
MODES: dict[str, tuple[str, ...]] = {
    "adapter": ("adapter",),
    "llm+adapter": ("llm", "adapter"),
    "adapter+vision": ("adapter", "vision"),
    "all": ("vision", "adapter", "llm"),
}


@dataclasses.dataclass
class LoraSettings:
    """LoRA on the LLM's linear layers (the LLM's own weights stay frozen)."""

    r: int = option(16, "rank of the low-rank update")
    alpha: int = option(32, "scaling numerator: the update is scaled by alpha / r")
    dropout: float = option(0.0, "dropout on the LoRA input")
    target_modules: list[str] = option(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "names of the LLM's linear layers that get a LoRA update",
    )


@dataclasses.dataclass(frozen=True)
class TrainableReport:
    """Trainable and total parameter counts, per part and overall."""

    parts: dict[str, tuple[int, int]]  # part -> (trainable, total)

    @property
    def trainable(self) -> int:
        return sum(t for t, _ in self.parts.values())

    @property
    def total(self) -> int:
        return sum(n for _, n in self.parts.values())

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        per_part = ", ".join(f"{k} {t:,}/{n:,}" for k, (t, n) in self.parts.items())
        return (
            f"trainable parameters: {self.trainable:,} of {self.total:,} "
            f"({100 * self.share:.2f}%): {per_part}"
        )


def model_parts(model: nn.Module) -> dict[str, list[Part]]:
    """The model's parts: ``vision``, ``adapter``, ``llm`` (LM head included), as its family
    (:mod:`r1v2.model.families`) names them: disjoint modules (and bare parameters, such as
    LLaVA-OneVision's ``image_newline``). A plain causal LM is all ``llm``."""
    return family_of(model, vision=hasattr(model, "get_image_features")).parts(model)


def set_trainable(
    model: nn.Module,
    trainable: Trainable | str = "adapter",
    *,
    lora: LoraSettings | None = None,
    verbose: bool = False,
) -> TrainableReport:
    """Freeze every parameter, then unfreeze the parts ``trainable`` names.

    With ``lora``, the LLM part trains through LoRA layers injected in place into the LLM
    (the model keeps its class and its forward/generate); the LLM's own weights stay frozen.
    LoRA needs a mode that trains the LLM (``llm+adapter`` or ``all``). ``all`` means every
    part the model has. A plain causal LM (text-only) has one part, the LLM: ``adapter`` (the
    default) and ``llm+adapter`` train it whole (or its LoRA layers), with a one-line note;
    ``adapter+vision`` is refused. Returns the counts (printed when ``verbose``).
    """
    if trainable not in MODES:
        raise R1V2Error(f"config field 'trainable': {trainable!r} is not one of {', '.join(MODES)}")
    parts = model_parts(model)
    wanted = tuple(parts) if trainable == "all" else MODES[trainable]
    if list(parts) == ["llm"] and trainable in ("adapter", "llm+adapter"):
        how = "its LoRA layers" if lora is not None else "all of it"
        print(
            f"note: trainable={trainable}: a text-only LM has no adapter, so the LLM trains "
            f"({how}); set trainable=all to say so",
            file=sys.stderr,
        )
        wanted = ("llm",)
    missing = [p for p in wanted if p not in parts]
    if missing:
        raise R1V2Error(
            f"config field 'trainable': {trainable!r} needs part(s) {', '.join(missing)}, "
            f"which this model lacks (it has: {', '.join(parts)})"
        )
    if lora is not None and "llm" not in wanted:
        raise R1V2Error(
            f"LoRA trains the LLM, but trainable={trainable!r} keeps it frozen; "
            "use llm+adapter or all"
        )
    if lora is not None:
        for module in parts["llm"][:1]:
            _inject_lora(module, lora)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in wanted:
        for part in parts[name]:
            for param_name, p in _named_parameters(part):
                if lora is None or name != "llm" or "lora_" in param_name:
                    p.requires_grad_(True)
    report = TrainableReport({name: _counts(items) for name, items in parts.items()})
    if verbose:
        print(report)
    return report


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base layer and remove the LoRA layers, in place.

    The merged model computes the same function and saves as an ordinary checkpoint.
    """
    from peft.tuners.lora import LoraLayer

    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, module in targets:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return model


def _inject_lora(module: nn.Module, settings: LoraSettings) -> None:
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:
        raise R1V2Error("LoRA needs the 'peft' package: pip install 'r1v2[peft]'") from e
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
    )
    from peft.tuners.lora import LoraLayer

    if any(isinstance(m, LoraLayer) for m in module.modules()):
        raise R1V2Error("the LLM already has LoRA layers (set_trainable with lora runs once)")
    try:
        inject_adapter_in_model(config, module)
    except ValueError as e:
        raise R1V2Error(f"LoRA target_modules {settings.target_modules}: {e}") from e


def _named_parameters(part: Part) -> list[tuple[str, nn.Parameter]]:
    if isinstance(part, nn.Parameter):
        return [("", part)]
    return list(part.named_parameters())


def _counts(parts: list[Part]) -> tuple[int, int]:
    seen: dict[int, torch.nn.Parameter] = {}
    for part in parts:
        for _, p in _named_parameters(part):
            seen[id(p)] = p  # a tied LM head is counted once
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, sum(p.numel() for p in seen.values())
