"""Training checkpoints: atomic writes, the last K kept, everything needed to resume exactly.

Layout of one checkpoint (``OUTPUT_DIR/checkpoint-00000120/``)::

    trainable.safetensors   the trainable parameters (names as in model.named_parameters())
    trainer_state.pt        optimizer, scheduler, data position, buffer, running stats, ...
    rng-rank{R}.pt          Python / NumPy / torch (and CUDA) RNG states of each process
    meta.json               step, base model path, r1v2 version; written last

A checkpoint is written into a hidden temporary folder, every file fsynced, meta.json last
(the completion marker), then renamed into place and the parent folder fsynced; a run killed
mid-write leaves only a temporary folder, which the next save removes. A write that fails
(disk full) removes the temporary folder and stops the run with an :class:`R1V2Error`; the
earlier checkpoints are untouched.

A checkpoint damaged afterwards (a truncated copy, a lost file) is caught by
:func:`check_checkpoint`, which reads every file; :func:`newest_intact_checkpoint` is what
``resume=auto`` continues: the newest checkpoint that passes it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
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


def read_meta(file: Path) -> dict[str, Any]:
    """A checkpoint's meta.json as a dict; an R1V2Error naming the file if it cannot be."""
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise R1V2Error(f"{file}: cannot read the checkpoint's meta.json: {e}") from e
    except json.JSONDecodeError as e:
        raise R1V2Error(f"{file}: invalid JSON at line {e.lineno}: {e.msg}") from e
    if not isinstance(meta, dict):
        raise R1V2Error(f"{file}: expected a JSON object, got {type(meta).__name__}")
    return meta


def check_checkpoint(path: str | Path) -> dict[str, Any]:
    """Raise an R1V2Error naming the first file of checkpoint ``path`` that is missing or
    cannot be read; return its meta. Reads meta.json, the safetensors header (which must
    cover the whole file: a truncated file fails), trainer_state.pt (unpickled, tensors
    memory-mapped) and the RNG file of every process the run had."""
    path = Path(path)
    if not (path / "meta.json").is_file():
        raise R1V2Error(f"{path}: not a complete checkpoint (meta.json missing)")
    meta = read_meta(path / "meta.json")
    if not isinstance(meta.get("step"), int):
        raise R1V2Error(f"{path / 'meta.json'}: no integer 'step' field")
    ranks = meta.get("world_size", 1)
    files = ["trainable.safetensors", "trainer_state.pt"]
    files += [f"rng-rank{r}.pt" for r in range(ranks if isinstance(ranks, int) else 1)]
    for name in files:
        file = path / name
        if not file.is_file():
            raise R1V2Error(f"{file}: missing (the checkpoint is incomplete)")
        if file.stat().st_size == 0:
            raise R1V2Error(f"{file}: empty file (damaged checkpoint)")
        try:
            if name.endswith(".safetensors"):
                with safe_open(str(file), "pt") as f:
                    f.keys()
            else:
                torch.load(file, map_location="cpu", mmap=True, weights_only=False)
        except Exception as e:  # any failure to read it: torn, truncated, not this format
            cause = (str(e).splitlines() or [""])[0][:200]
            raise R1V2Error(
                f"{file}: cannot be read (damaged or truncated: {type(e).__name__}: {cause})"
            ) from e
    return meta


def newest_intact_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[str]]:
    """``(the newest checkpoint that passes check_checkpoint or None, one line on each newer
    checkpoint-* folder that does not)``; a folder without meta.json counts as broken."""
    root = Path(output_dir)
    found = (
        sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)))
        if root.is_dir()
        else []
    )
    broken = []
    for _, ckpt in reversed(found):
        try:
            check_checkpoint(ckpt)
        except R1V2Error as e:
            broken.append(str(e))
            continue
        return ckpt, broken
    return None, broken


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
    """Write checkpoint ``step`` atomically and prune all but the newest ``keep_last`` up to
    ``step``; a failed write raises an R1V2Error naming the checkpoint and the cause.

    With several processes every rank writes its RNG state; rank 0 writes the rest and renames.
    ``barrier`` (e.g. ``accelerator.wait_for_everyone``) orders those steps when given.
    """
    root = Path(output_dir)
    final = root / f"checkpoint-{step:08d}"
    tmp = root / f".tmp-checkpoint-{step:08d}"
    with _write_errors(final, tmp, rank):
        if rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
    if barrier is not None:
        barrier()
    with _write_errors(final, tmp, rank):
        torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
        _fsync(tmp / f"rng-rank{rank}.pt")
    weights = trainable_state(model)  # on every rank: gathering sharded weights is collective
    if rank == 0:
        with _write_errors(final, tmp, rank):
            save_file(weights, str(tmp / "trainable.safetensors"))
            torch.save(trainer_state, tmp / "trainer_state.pt")
            for name in ("trainable.safetensors", "trainer_state.pt"):
                _fsync(tmp / name)
    if barrier is not None:
        barrier()
    if rank == 0:
        info = {"step": step, "world_size": world_size, "r1v2_version": __version__, **(meta or {})}
        with _write_errors(final, tmp, rank):
            (tmp / "meta.json").write_text(json.dumps(info, indent=2))  # the completion marker
            _fsync(tmp / "meta.json")
            _fsync(tmp)
            if final.exists():
                _remove(final)
            os.replace(tmp, final)
            _fsync(root)
        # newer ones (left by a timeline this run resumed before) never push this one out
        done = [c for c in list_checkpoints(root) if int(_NAME.match(c.name)[1]) <= step]
        for old in done[:-keep_last] if keep_last > 0 else []:
            _remove(old)
        for stale in root.glob(".tmp-checkpoint-*"):
            shutil.rmtree(stale, ignore_errors=True)
    if barrier is not None:
        barrier()
    return final


@contextmanager
def _write_errors(final: Path, tmp: Path, rank: int) -> Iterator[None]:
    """A failed write (disk full, no permission; torch.save reports it as a RuntimeError,
    safetensors as a SafetensorError) as an R1V2Error naming the checkpoint and the cause,
    after removing the temporary folder. The earlier checkpoints are untouched.
    With several processes the others are not told (they wait at the next barrier)."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as e:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise R1V2Error(
            f"{final}: cannot write the checkpoint ({e}); stopping. Last complete checkpoint: "
            f"{latest_checkpoint(final.parent) or 'none'}"
        ) from e


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') writes to the disk."""
    if os.name == "nt" and path.is_dir():
        return  # Windows cannot open a folder to fsync it
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(ckpt: Path) -> None:
    """Delete a checkpoint folder, its completion marker first: a removal cut short leaves a
    folder without meta.json, never a complete-looking one with files missing."""
    (ckpt / "meta.json").unlink(missing_ok=True)
    shutil.rmtree(ckpt)


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
    meta = read_meta(meta_file)
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
