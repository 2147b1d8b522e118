"""``r1v2 export``: a training checkpoint (trainable weights only) -> a full transformers checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from r1v2.config import option
from r1v2.errors import R1V2Error


@dataclass
class ExportConfig:
    """``r1v2 export``: merge a checkpoint's trained weights into its base model and save it."""

    checkpoint: str = option(
        help="checkpoint folder (OUTPUT_DIR/checkpoint-N) or a run's OUTPUT_DIR (newest)"
    )
    out: str = option(help="folder to write the transformers checkpoint to")
    base_model: str | None = option(None, "base model folder (default: the one the run trained)")


def export(checkpoint: str | Path, out: str | Path, base_model: str | Path | None = None) -> Path:
    """Load the base model, apply the checkpoint's trainable weights, save model + processor."""
    from r1v2.model.policy import Policy
    from r1v2.train.checkpoint import latest_checkpoint, load_checkpoint

    path = Path(checkpoint)
    if not (path / "meta.json").is_file():
        newest = latest_checkpoint(path)
        if newest is None:
            raise R1V2Error(f"{path}: no checkpoint here (no meta.json, no checkpoint-* folder)")
        path = newest
    meta = json.loads((path / "meta.json").read_text())
    base = Path(base_model or meta.get("model", ""))
    if not (base / "config.json").is_file():
        raise R1V2Error(f"{base}/config.json: base model not found (set base_model=...)")
    policy = Policy.from_pretrained(base)
    load_checkpoint(path, policy.model)
    out = Path(out)
    policy.model.save_pretrained(out)
    policy.processor.save_pretrained(out)
    print(f"exported {path} (base {base}) to {out}")
    return out


def run(cfg: ExportConfig) -> int:
    export(cfg.checkpoint, cfg.out, cfg.base_model)
    return 0
