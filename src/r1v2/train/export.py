"""``r1v2 export``: a training checkpoint (trainable weights only) -> a full transformers checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from r1v2.config import option
from r1v2.errors import R1V2Error
from r1v2.fsutil import check_output_dir, replace_dir

WEIGHTS = "trainable.safetensors"  # the checkpoint's file of trained weights (train.checkpoint)


@dataclass
class ExportConfig:
    """``r1v2 export``: merge a checkpoint's trained weights into its base model and save it."""

    checkpoint: str = option(
        help="checkpoint folder (OUTPUT_DIR/checkpoint-N) or a run's OUTPUT_DIR (newest)"
    )
    out: str = option(
        help="folder to write the transformers checkpoint to; may not be, lie inside or hold "
        "the base model, the checkpoint or its run folder"
    )
    base_model: str | None = option(None, "base model folder (default: the one the run trained)")
    overwrite: bool = option(
        False, "replace the output folder if it is not empty (only once the export is written)"
    )


def export(
    checkpoint: str | Path,
    out: str | Path,
    base_model: str | Path | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Load the base model, apply the checkpoint's trainable weights, save model + processor.

    ``checkpoint`` is a checkpoint folder or a run folder (its newest checkpoint is used).
    ``out`` is refused if it is, lies inside or holds the base model, the checkpoint or the run
    folder; an existing non-empty ``out`` is replaced only with ``overwrite``, and only once the
    export is completely written (:func:`r1v2.fsutil.replace_dir`). Returns ``out``.
    """
    from r1v2.model.policy import Policy
    from r1v2.train.checkpoint import list_checkpoints

    path = _find_checkpoint(Path(checkpoint))
    meta = _read_meta(path / "meta.json")
    base = _base_model(path, meta, base_model)
    inputs = {"base model": base, "checkpoint": path}
    real = path.resolve()
    if real in list_checkpoints(real.parent):  # a checkpoint-N in a run's OUTPUT_DIR
        inputs["run folder"] = real.parent
    if meta["model"] is not None:
        inputs["run's base model"] = Path(meta["model"])
    out = check_output_dir(out, overwrite=overwrite, inputs=inputs)
    weights = _read_weights(path / WEIGHTS)
    try:
        policy = Policy.from_pretrained(base)
    except (OSError, ValueError) as e:
        raise R1V2Error(f"{base}: cannot load the base model: {e}") from e
    _apply(weights, policy.model, path / WEIGHTS)
    with replace_dir(out, overwrite=overwrite) as tmp:
        policy.model.save_pretrained(tmp)
        policy.processor.save_pretrained(tmp)
    print(f"exported {path} (base {base}) to {out}")
    return out


def _find_checkpoint(path: Path) -> Path:
    from r1v2.train.checkpoint import latest_checkpoint

    if (path / "meta.json").is_file():
        return path
    if not path.is_dir():
        raise R1V2Error(f"{path}: checkpoint folder not found")
    newest = latest_checkpoint(path)
    if newest is None:
        raise R1V2Error(f"{path}: no checkpoint here (no meta.json, no checkpoint-* folder)")
    return newest


def _read_meta(file: Path) -> dict:
    """meta.json as a dict with a ``"model"`` key (None when the run did not record one)."""
    from r1v2.train.checkpoint import read_meta

    meta = read_meta(file)
    model = meta.get("model")
    if model is not None and not isinstance(model, str):
        raise R1V2Error(f"{file}: field 'model' must be a path string, got {model!r}")
    return {**meta, "model": model}


def _base_model(path: Path, meta: dict, base_model: str | Path | None) -> Path:
    if base_model is None and not meta["model"]:
        raise R1V2Error(f"{path / 'meta.json'}: no 'model' field (set base_model=...)")
    base = Path(base_model or meta["model"])
    if not (base / "config.json").is_file():
        raise R1V2Error(f"{base / 'config.json'}: base model not found (set base_model=...)")
    return base


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not file.is_file():
        raise R1V2Error(f"{file}: file not found (the checkpoint is incomplete)")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise R1V2Error(
            f"{file}: cannot read the trained weights (damaged or truncated: {e})"
        ) from e


def _apply(weights: dict[str, torch.Tensor], model: torch.nn.Module, file: Path) -> None:
    """Copy ``weights`` into ``model``'s parameters of the same names (cast to their dtype)."""
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise R1V2Error(f"{file}: parameters not in the base model: {', '.join(unknown[:5])}")
    wrong = [n for n, w in weights.items() if w.shape != params[n].shape]
    if wrong:
        n = wrong[0]
        raise R1V2Error(
            f"{file}: '{n}' has shape {tuple(weights[n].shape)}, the base model's "
            f"{tuple(params[n].shape)} (is base_model the model this run trained?)"
        )
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def run(cfg: ExportConfig) -> int:
    export(cfg.checkpoint, cfg.out, cfg.base_model, overwrite=cfg.overwrite)
    return 0
