"""Sharding the models of a multi-process run with torch FSDP2 (``r1v2 grpo sharding=fsdp``).

Every decoder or vision-encoder layer (a module whose class name ends in ``DecoderLayer``,
``EncoderLayer`` or ``VisionLayer``) becomes one FSDP unit; the rest of the model (embeddings,
adapter, norms, LM head, vision embeddings) is one more unit held by a root. Each process keeps
1/K of every unit's parameters, gradients and optimizer state, and gathers a unit only while
it runs.

FSDP2 gathers a unit's parameters in that unit's ``forward``, and the root must run first. The
policy uses its model in other ways too: it embeds the prompt and merges the image features
itself, then calls ``generate`` or the language model on those embeddings. So the root here is
a thin module whose ``forward(fn, *args)`` calls ``fn(*args)``: every use of the model runs
inside one root forward (``root_call(fn, ...)``), where the root unit's parameters are gathered and
each layer gathers its own as it is called. Generation must then step in lock-step on every
process (``Policy.synced_gpus``): a process whose sequences have all ended keeps running
forwards until every process is done. Every sharded layer gathers with a collective, so all
processes must make the same calls: a step where one process has images and another has
text-only prompts would hang (the toy task and single-modality pools are fine).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

LAYER_SUFFIXES = ("DecoderLayer", "EncoderLayer", "VisionLayer")

RootCall = Callable[..., Any]  # root_call(fn, *args, **kwargs) -> fn(*args, **kwargs)


def direct(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The root call of an unsharded model: calls ``fn`` as it is."""
    return fn(*args, **kwargs)


class _Root(torch.nn.Module):
    """The FSDP root around a model; its forward runs any function of the caller's."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


def layer_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that become FSDP units of their own, outermost first."""
    return [m for m in model.modules() if type(m).__name__.endswith(LAYER_SUFFIXES)]


def shard_model(model: torch.nn.Module, device_type: str) -> RootCall:
    """Shard ``model`` in place over all processes of the default process group; returns
    its root call: ``root_call(fn, *args)`` calls ``fn(*args)`` with the model usable inside."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    for module in layer_modules(model):
        fully_shard(module, mesh=mesh)
    root = _Root(model)
    fully_shard(root, mesh=mesh)
    return root


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded one (a collective: every process must call it); a plain
    tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
