"""The model dtypes and devices a config may name, and the one map from dtype names to torch.

Config fields use the ``Literal`` types (:data:`Dtype`, :data:`DtypeOrAuto`, :data:`Device`),
so a bad value is refused while the config is read, with the valid ones listed. Code turns a
name into a ``torch.dtype`` with :data:`DTYPES` or :func:`torch_dtype`. Importing this module
does not import torch (configs are read before any model is loaded); :data:`DTYPES` is built
on first use.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Literal, get_args

from r1v2.errors import R1V2Error

if TYPE_CHECKING:
    import torch

Dtype = Literal["float32", "bfloat16", "float16"]
"""A model dtype by name; each is the name of a ``torch`` dtype."""

DtypeOrAuto = Literal["auto", Dtype]
"""A model dtype by name, or ``"auto"``: the dtype the checkpoint stores."""

Device = Literal["auto", "cpu", "cuda"]
"""``"auto"`` is CUDA when available, the CPU otherwise."""

DTYPE_NAMES: tuple[str, ...] = get_args(Dtype)


@functools.cache
def _dtype_map() -> dict[str, torch.dtype]:
    import torch

    return {name: getattr(torch, name) for name in DTYPE_NAMES}


def __getattr__(name: str) -> Any:
    # DTYPES ({"float32": torch.float32, ...}) is built at its first use, so that configs can
    # name dtypes without importing torch (PEP 562).
    if name == "DTYPES":
        return _dtype_map()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    DTYPES: dict[str, torch.dtype]


def torch_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``dtype`` itself when it is a ``torch.dtype``, else the dtype it names (:data:`Dtype`).

    Raises R1V2Error naming the value and the valid names for anything else.
    """
    if isinstance(dtype, str):
        if dtype not in DTYPE_NAMES:
            raise R1V2Error(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_NAMES)}")
        return _dtype_map()[dtype]
    import torch

    if not isinstance(dtype, torch.dtype):
        raise R1V2Error(f"cannot use {type(dtype).__name__} {dtype!r} as a dtype")
    return dtype
