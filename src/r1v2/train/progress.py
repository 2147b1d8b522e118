"""The project's one live progress display: bars with done/total, elapsed time, time left and
the numbers that explain a run (training loops, the toy build's stages, ``r1v2 eval``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

KEYS = {
    "reward_mean": "reward",
    "effective_ratio": "eff",
    "kl": "kl",
    "loss": "loss",
    "probe_accuracy": "acc",
    "hallucination_rate": "halluc",
}


def summary(metrics: Mapping[str, Any], keys: Mapping[str, str] | None = KEYS) -> str:
    """``reward 0.512 | eff 0.62 | ...``: the finite numbers of ``metrics`` named in ``keys``
    (metric -> label, in that order), or all of them under their own names when ``keys`` is None."""
    shown = keys if keys is not None else {k: k for k in metrics}
    parts = []
    for key, label in shown.items():
        value = metrics.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            parts.append(f"{label} {value:.3g}")
    return " | ".join(parts)


class StepProgress:
    """A rich progress display of one or more bars; a disabled one prints nothing.

    ``StepProgress(total, label=...)`` starts with one bar; :meth:`add` adds more (``r1v2 eval``
    shows one per benchmark). :meth:`update` sets a bar's position and shows the latest value
    of each metric named in ``keys`` (values are kept across updates, so numbers measured now
    and then stay on screen); :meth:`advance` moves a bar on. ``stderr=True`` draws on stderr.
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        total: int | None = None,
        *,
        start: int = 0,
        enabled: bool = True,
        label: str = "step",
        keys: Mapping[str, str] | None = KEYS,
        stderr: bool = False,
    ):
        self.enabled = enabled
        self.keys = keys
        self._last: dict[int, dict[str, Any]] = {}
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                TextColumn("{task.completed}/{task.total}"),
                BarColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(stderr=True) if stderr else None,
            )
            self._progress.start()
        self._first = self.add(label, total, start=start) if total is not None else None

    def add(self, label: str, total: int, *, start: int = 0) -> int:
        """A further bar; returns its id for :meth:`update` and :meth:`advance`."""
        if self.enabled:
            task = int(self._progress.add_task(label, total=total, completed=start, info=""))
        else:
            task = len(self._last)
        self._last[task] = {}
        return task

    def update(
        self, step: int, metrics: Mapping[str, Any] | None = None, *, task: int | None = None
    ) -> None:
        """Set bar ``task`` (default: the first) to ``step`` done, with ``metrics`` shown."""
        task = self._first if task is None else task
        last = self._last[task]
        last.update({k: v for k, v in (metrics or {}).items() if v is not None})
        if self.enabled:
            self._progress.update(task, completed=step, info=summary(last, self.keys))

    def advance(self, k: int = 1, *, task: int | None = None) -> None:
        """Move bar ``task`` (default: the first) on by ``k``."""
        if self.enabled:
            self._progress.advance(self._first if task is None else task, k)

    def close(self) -> None:
        if self.enabled:
            self._progress.stop()

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
