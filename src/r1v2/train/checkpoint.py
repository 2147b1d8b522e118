"""Training checkpoints: atomic writes, the last K kept, everything needed to resume exactly.

Layout of one checkpoint (``OUTPUT_DIR/checkpoint-00000120/``)::

    trainable.safetensors   the trainable parameters (names as in model.named_parameters())
    trainer_state.pt        optimizer, scheduler, data position, buffer, running stats, ...
    rng-rank{R}.pt          Python / NumPy / torch (and CUDA) RNG states of each process
    meta.json               step, base model path, r1v2 version; written last

A checkpoint is written into a hidden temporary folder and renamed into place, so a folder
named ``checkpoint-*`` is always complete; a run killed mid-write leaves only a temporary
folder, which the next save removes.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from r1v2 import __version__
from r1v2.errors import R1V2Error
from r1v2.train.sharding import full_tensor

_NAME = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _NAME.match(p.name)) and (p / "meta.json").is_file()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require grad, detached and contiguous on the CPU; sharded (FSDP)
    parameters gathered whole, so every process must call it."""
    return {
        name: full_tensor(p.detach()).to("cpu").contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    trainer_state: dict[str, Any],
    meta: dict[str, Any] | None = None,
    keep_last: int = 2,
    rank: int = 0,
    world_size: int = 1,
    barrier=None,
) -> Path:
    """Write checkpoint ``step`` atomically and prune all but the newest ``keep_last``.

    With several processes every rank writes its RNG state; rank 0 writes the rest and renames.
    ``barrier`` (e.g. ``accelerator.wait_for_everyone``) orders those steps when given.
    """
    root = Path(output_dir)
    final = root / f"checkpoint-{step:08d}"
    tmp = root / f".tmp-checkpoint-{step:08d}"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    if barrier is not None:
        barrier()
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    weights = trainable_state(model)  # on every rank: gathering sharded weights is collective
    if rank == 0:
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(trainer_state, tmp / "trainer_state.pt")
    if barrier is not None:
        barrier()
    if rank == 0:
        info = {"step": step, "world_size": world_size, "r1v2_version": __version__, **(meta or {})}
        (tmp / "meta.json").write_text(json.dumps(info, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old)
        for stale in root.glob(".tmp-checkpoint-*"):
            shutil.rmtree(stale, ignore_errors=True)
    if barrier is not None:
        barrier()
    return final


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, *, rank: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load trainable weights into ``model`` and this rank's RNG state.

    Returns ``(trainer_state, meta)``; the caller restores optimizer, scheduler and the rest.
    """
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise R1V2Error(f"{path}: not a complete checkpoint (meta.json missing)")
    meta = json.loads(meta_file.read_text())
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise R1V2Error(f"{path}/trainable.safetensors: parameters not in the model: {unknown[:5]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    rng_file = path / f"rng-rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    trainer_state = torch.load(path / "trainer_state.pt", weights_only=False)
    return trainer_state, meta
