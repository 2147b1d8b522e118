"""The KL reference policy pi_ref of GRPO, held as a copy of the trainable parameters only.

pi_ref is the policy at the start of the stage (RECIPE section 3). Only the trainable
parameters ever move away from it, so pi_ref is the current model with its trainable
parameters set back to their starting values. A :class:`Reference` keeps those values
(detached clones) and, inside ``active()``, puts them into the model in place::

    reference = Reference(policy.model)            # after set_trainable, before training
    ...
    with reference.active():                       # runs under torch.no_grad
        ref_logps = policy.logprobs(prompts, ids, mask, prompt_index=index)

With adapter-only training (the default) it holds a copy of the adapter instead of a second
copy of the whole model (``copy.deepcopy(policy.model)``).

How the values are swapped (a choice): in place with ``copy_`` under ``torch.no_grad``, one
parameter at a time through a temporary of that parameter's size (``tmp = p.clone();
p.copy_(ref); ref.copy_(tmp)``), so inside ``active()`` the snapshot holds the current
values and on exit the same exchange puts everything back. Copies within one dtype are bit
exact. Parameter objects, their storage and their ``.grad`` are never replaced, so AdamW's
state (keyed by parameter), tied weights and views into parameters stay valid. Not a swap of
``.data``: FSDP2 all-gathers from its own sharded storage, which a ``.data`` swap does not
reach. Not a backup copy of the current values: that would hold a second copy of the
trainable part while active, as large as the saving for ``llm+adapter``; the exchange needs
only the largest single parameter as scratch.

FSDP2 (``r1v2.train.sharding``): build the Reference after sharding, from the sharded model,
and pass the runner ``shard_model`` returned as ``root``. The snapshot then holds each
process's shards (DTensors, cloned as they are). FSDP2 keeps the root unit's parameters
gathered after a forward without gradients, and a gathered copy would not see the swap, so
``active()`` reshards ``root`` and every FSDP module of the model before each exchange.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch

from r1v2.errors import R1V2Error
from r1v2.train.sharding import full_tensor


class Reference:
    """The frozen starting policy pi_ref, held as a copy of the trainable parameters only.

    Args:
        model: the policy's model, with its trainable parameters chosen (``requires_grad``).
            The snapshot is taken now: detached clones of every parameter that requires grad,
            named as in ``model.named_parameters()`` (plain tensors, or FSDP2 DTensor shards).
        root: with FSDP2, the sharded root around ``model`` (the runner of
            :func:`r1v2.train.sharding.shard_model`); None otherwise.
    """

    def __init__(self, model: torch.nn.Module, *, root: torch.nn.Module | None = None):
        self._fsdp_modules = _fsdp_modules(model, root)
        _reshard(self._fsdp_modules)  # the registered parameters are then the sharded ones
        self._names: list[str] = []
        self._params: list[torch.nn.Parameter] = []
        self._values: list[torch.Tensor] = []
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    self._names.append(name)
                    self._params.append(p)
                    self._values.append(p.detach().clone())
        self._active = False

    @property
    def names(self) -> list[str]:
        """Names of the parameters held, as in ``model.named_parameters()``."""
        return list(self._names)

    @property
    def nbytes(self) -> int:
        """Bytes this process holds for the snapshot (its own shards under FSDP2)."""
        return sum(_local(v).numel() * v.element_size() for v in self._values)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Inside, the model's trainable parameters hold the reference values, bit for bit, and
        the body runs under ``torch.no_grad``; on exit, normal or by an exception, the current
        values are back, bit for bit. Does not nest."""
        if self._active:
            raise R1V2Error("Reference.active() is already entered (it does not nest)")
        _reshard(self._fsdp_modules)
        self._exchange()
        self._active = True
        try:
            with torch.no_grad():
                yield
        finally:
            _reshard(self._fsdp_modules)
            self._exchange()
            self._active = False

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{name: whole tensor on the CPU}``, copies (under FSDP2 every process must call it:
        the shards are gathered)."""
        held = self._params if self._active else self._values  # where the reference values are
        with torch.no_grad():
            return {
                name: full_tensor(v.detach()).to("cpu", copy=True)
                for name, v in zip(self._names, held)
            }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Set the reference values from :meth:`state_dict`'s output (whole tensors; under FSDP2
        each process copies its own shards). Names, shapes and dtypes must match."""
        if self._active:
            raise R1V2Error("Reference.load_state_dict() inside active()")
        missing = [n for n in self._names if n not in state]
        unexpected = [n for n in state if n not in set(self._names)]
        if missing or unexpected:
            raise R1V2Error(
                f"reference state does not match the trainable parameters: missing {missing}, "
                f"unexpected {unexpected}"
            )
        for name, value in zip(self._names, self._values):
            given = state[name]
            if given.shape != value.shape or given.dtype != value.dtype:
                raise R1V2Error(
                    f"reference state '{name}': {given.dtype} {tuple(given.shape)}, expected "
                    f"{value.dtype} {tuple(value.shape)}"
                )
        with torch.no_grad():
            for name, value in zip(self._names, self._values):
                given = state[name].to(_local(value).device)
                if hasattr(value, "device_mesh"):  # DTensor: this process's part, no comms
                    from torch.distributed.tensor import distribute_tensor

                    given = distribute_tensor(
                        given, value.device_mesh, value.placements, src_data_rank=None
                    )
                value.copy_(given)

    def _exchange(self) -> None:
        """Exchange the values of every parameter and its snapshot in place (its own inverse).

        Only ``clone`` allocates, before anything of that parameter is written; if it fails,
        the parameters already exchanged are exchanged back and the error propagates.
        """
        done = 0
        try:
            with torch.no_grad():
                for p, v in zip(self._params, self._values):
                    tmp = p.detach().clone()
                    p.copy_(v)
                    v.copy_(tmp)
                    del tmp
                    done += 1
        except BaseException:
            with torch.no_grad():
                for p, v in zip(self._params[:done], self._values[:done]):
                    tmp = p.detach().clone()
                    p.copy_(v)
                    v.copy_(tmp)
            raise


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard; a plain tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def _fsdp_modules(model: torch.nn.Module, root: torch.nn.Module | None) -> list[torch.nn.Module]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch built without distributed
        return []
    modules = ([root] if root is not None else []) + list(model.modules())
    return [m for m in modules if isinstance(m, FSDPModule)]


def _reshard(modules: list[torch.nn.Module]) -> None:
    for m in modules:
        m.reshard()
