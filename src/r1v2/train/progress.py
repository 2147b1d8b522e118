"""A live progress display for training loops: bar, ETA and the numbers that explain a run."""

from __future__ import annotations

import math
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

KEYS = {
    "reward_mean": "reward",
    "effective_ratio": "eff",
    "kl": "kl",
    "loss": "loss",
    "probe_accuracy": "acc",
    "hallucination_rate": "halluc",
}


def summary(metrics: dict[str, Any]) -> str:
    """``reward 0.512 | eff 0.62 | ...`` for the keys present and finite."""
    parts = []
    for key, label in KEYS.items():
        value = metrics.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            parts.append(f"{label} {value:.3g}")
    return " | ".join(parts)


class StepProgress:
    """``with``-free wrapper around a rich progress bar; disabled displays print nothing."""

    def __init__(self, total: int, *, start: int = 0, enabled: bool = True, label: str = "step"):
        self.enabled = enabled
        self._last: dict[str, Any] = {}
        if not enabled:
            return
        self._progress = Progress(
            TextColumn(f"[bold]{label}" + " {task.completed}/{task.total}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self._task = self._progress.add_task(label, total=total, completed=start, info="")
        self._progress.start()

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        self._last.update({k: v for k, v in metrics.items() if v is not None})
        if self.enabled:
            self._progress.update(self._task, completed=step, info=summary(self._last))

    def close(self) -> None:
        if self.enabled:
            self._progress.stop()
