"""Metric logging: ``metrics.jsonl`` always, TensorBoard when installed, W&B when configured."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from r1v2.fsutil import write_atomic


def _clean(value: Any) -> Any:
    """JSON-safe scalars: tensors become floats, NaN/inf become None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _step_of(line: str) -> int | None:
    """The step of one metrics line; None for a blank or torn line (a kill or a full disk
    mid-write), which a resumed run drops."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    step = row.get("step") if isinstance(row, dict) else None
    return step if isinstance(step, int) else None


class MetricsLogger:
    """Appends one JSON object per step to ``output_dir/metrics.jsonl`` (flushed each time).

    On resume the file is truncated to the steps before the resumed one (a torn last line
    dropped), so a resumed run's log reads like an uninterrupted one. A fresh run
    (``resume_step=0``) refuses a folder whose ``metrics.jsonl`` holds rows of an earlier run
    (the trainers' ``prepare_output`` refuses, or with overwrite=true empties, such a folder
    before any work; this is the last line of defence).
    """

    def __init__(
        self,
        output_dir: str | Path,
        *,
        resume_step: int = 0,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        run_config: dict[str, Any] | None = None,
    ):
        self.path = Path(output_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step == 0 and self.path.is_file() and self.path.read_text().strip():
            from r1v2.errors import R1V2Error

            raise R1V2Error(
                f"{self.path} holds the metrics of an earlier run: a new run will not "
                "overwrite them (use another output_dir, or overwrite=true to replace the run)"
            )
        if self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if _step_of(line) is not None and _step_of(line) <= resume_step
            ]
            # through a temporary file: a kill here leaves the whole log, not a cut one
            write_atomic(self.path, "".join(line + "\n" for line in kept))
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self._tb = None
        self._wandb = None
        if wandb_project:
            import wandb

            self._wandb = wandb.init(project=wandb_project, config=run_config or {})

    def log(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                if self._tb is not None:
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(record, step=step)
        return record

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | Path, numbers: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (``path`` is the file or the run folder holding it); a
    missing file, a bad line or a field of ``numbers`` that holds something other than a
    number (or null) is an error naming the file, line and field."""
    from r1v2.errors import R1V2Error

    path = Path(path)
    file = path / METRICS_FILE if path.is_dir() else path
    if not file.is_file():
        raise R1V2Error(f"{file}: file not found (not a training run's metrics)")
    rows = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise R1V2Error(f"{file}:{number}: malformed JSON ({e})") from e
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise R1V2Error(f"{file}:{number}: field 'step': expected an integer step")
        for key in numbers:
            value = row.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
                raise R1V2Error(f"{file}:{number}: field '{key}': expected a number, got {value!r}")
        rows.append(row)
    return rows
