"""The hallucination guard (RECIPE section 5): stop or roll back a run whose probe
hallucination rate rises.

Pure logic, no I/O: a trainer feeds every probe result to :meth:`HallucinationGuard.update`
(the probe at step 0 first: its rate is the stage's starting rate) and acts on the returned
:class:`GuardDecision`:

- ``decision.is_best``: this probe is the best so far by ``best_metric``; with
  ``action="rollback"`` keep a copy of the weights as they are now (the trainer decides where);
- ``decision.fired``: the rate stayed above ``start + tolerance`` for ``patience`` probes in
  a row; ``decision.action`` is ``"stop"`` (end the run with the weights it has) or
  ``"rollback"`` (restore the weights of ``decision.best_step``, then end the run).

Once fired, the guard stays fired (``fired`` in its state), so a run resumed from a
checkpoint written after that ends again at once; set ``action=off`` to continue it. A probe
without a finite ``hallucination_rate`` neither extends nor breaks the streak. Ties for the
best keep the earlier probe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from r1v2.config import option
from r1v2.errors import R1V2Error

Action = Literal["stop", "rollback", "off"]
BestMetric = Literal["probe_accuracy", "hallucination_rate"]
HIGHER_IS_BETTER = {"probe_accuracy": True, "hallucination_rate": False}
RATE = "hallucination_rate"


@dataclass
class GuardConfig:
    """The hallucination guard's settings; trainer configs nest it (``guard.action=rollback``)."""

    # `| Literal[False]`: YAML 1.1 reads a bare `off` (in a file or in guard.action=off) as
    # false; validate() turns it back into "off".
    action: Action | Literal[False] = option(
        "stop",
        "when the probe hallucination rate stays above start + tolerance for `patience` probes: "
        "stop (keep the current weights), rollback (restore the best probe's weights, then "
        "stop) or off; needs probe_data",
    )
    tolerance: float = option(
        0.1,
        "allowed rise of the hallucination rate over the step-0 probe, absolute (0.1 = 10 "
        "points; to be measured on the toy VLM: 64 probe samples have a std of ~0.06)",
    )
    patience: int = option(2, "probes in a row above start + tolerance before the guard acts")
    best_metric: BestMetric = option(
        "probe_accuracy",
        "what makes a probe the best one to roll back to: highest probe_accuracy or lowest "
        "hallucination_rate",
    )

    def validate(self) -> None:
        if self.action is False:
            self.action = "off"
        if self.tolerance < 0:
            raise R1V2Error("config field 'guard.tolerance' must be >= 0")
        if self.patience < 1:
            raise R1V2Error("config field 'guard.patience' must be >= 1")


@dataclass(frozen=True)
class GuardDecision:
    """The guard's verdict on one probe (see the module docstring)."""

    action: Literal["continue", "stop", "rollback"]
    is_best: bool
    best_step: int | None
    streak: int
    message: str = ""

    @property
    def fired(self) -> bool:
        return self.action != "continue"


class HallucinationGuard:
    """Watches the probe hallucination rate against the stage's starting rate.

    Args:
        tolerance: allowed absolute rise over the starting rate.
        patience: probes in a row above ``start + tolerance`` before it fires.
        action: ``"stop"``, ``"rollback"`` or ``"off"`` (never fires; still tracks the best).
        best_metric: ``"probe_accuracy"`` (higher is better) or ``"hallucination_rate"``
            (lower is better).
    """

    def __init__(
        self,
        tolerance: float = 0.1,
        patience: int = 2,
        action: Action = "stop",
        best_metric: BestMetric = "probe_accuracy",
    ) -> None:
        if action not in ("stop", "rollback", "off"):
            raise ValueError(f"action must be 'stop', 'rollback' or 'off', got {action!r}")
        if best_metric not in HIGHER_IS_BETTER:
            raise ValueError(f"best_metric must be one of {sorted(HIGHER_IS_BETTER)}")
        GuardConfig(action, tolerance, patience, best_metric).validate()
        self.tolerance, self.patience = tolerance, patience
        self.action, self.best_metric = action, best_metric
        self.start_rate: float | None = None
        self.streak = 0
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.fired_at: int | None = None
        self.message = ""

    @classmethod
    def from_config(cls, cfg: GuardConfig) -> HallucinationGuard:
        cfg.validate()
        return cls(cfg.tolerance, cfg.patience, cfg.action, cfg.best_metric)

    @property
    def fired(self) -> bool:
        return self.fired_at is not None

    @property
    def limit(self) -> float | None:
        """The rate above which a probe counts toward the streak (None before the first probe)."""
        return None if self.start_rate is None else self.start_rate + self.tolerance

    def update(self, step: int, probe: Mapping[str, float]) -> GuardDecision:
        """Feed one probe result (``hallucination_rate`` and ``best_metric``) taken at ``step``."""
        is_best = self._track_best(step, probe.get(self.best_metric))
        rate = probe.get(RATE)
        if rate is not None and math.isfinite(rate):
            if self.start_rate is None:
                self.start_rate = float(rate)
            elif rate > self.start_rate + self.tolerance:
                self.streak += 1
            else:
                self.streak = 0
        fire = self.action != "off" and not self.fired and self.streak >= self.patience
        if fire:
            self.fired_at = step
            self.message = self._describe(step, float(rate))
        action = self.action if fire else "continue"
        return GuardDecision(
            action, is_best, self.best_step, self.streak, self.message if fire else ""
        )

    def _track_best(self, step: int, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        higher = HIGHER_IS_BETTER[self.best_metric]
        better = self.best_value is None or (
            value > self.best_value if higher else value < self.best_value
        )
        if better:
            self.best_value, self.best_step = float(value), step
        return better

    def _describe(self, step: int, rate: float) -> str:
        what = {"stop": "stopped", "rollback": "rolled back"}[self.action]
        text = (
            f"hallucination guard {what} the run at step {step}: the probe hallucination rate "
            f"{rate:.3f} stayed above start {self.start_rate:.3f} + tolerance "
            f"{self.tolerance:g} for {self.streak} probes"
        )
        if self.action == "rollback":
            text += (
                f"; weights restored to step {self.best_step} (best {self.best_metric} "
                f"{self.best_value:.3f})"
            )
        return text

    def state_dict(self) -> dict[str, Any]:
        return {
            "start_rate": self.start_rate,
            "streak": self.streak,
            "best_value": self.best_value,
            "best_step": self.best_step,
            "fired_at": self.fired_at,
            "message": self.message,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.start_rate = state["start_rate"]
        self.streak = int(state["streak"])
        self.best_value, self.best_step = state["best_value"], state["best_step"]
        self.fired_at, self.message = state["fired_at"], state["message"]
