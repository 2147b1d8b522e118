"""The hallucination guard's logic (the trainer's use of it: tests/test_mpo_train.py)."""

from __future__ import annotations

import math

import pytest

from r1v2.config import resolve
from r1v2.errors import R1V2Error
from r1v2.train.guard import GuardConfig, HallucinationGuard


def _feed(guard, rates, accuracies=None, start_step=0):
    accuracies = accuracies or [0.0] * len(rates)
    return [
        guard.update(start_step + i, {"hallucination_rate": r, "probe_accuracy": a})
        for i, (r, a) in enumerate(zip(rates, accuracies))
    ]


def test_stops_after_patience_probes_above_start_plus_tolerance():
    """Start 0.20, tolerance 0.10 -> limit 0.30 (a rate equal to it is not above). Rates
    0.25, 0.35 (1), 0.30 (reset: not above), 0.40 (1), 0.45 (2): fires at the fifth probe
    after the start, step 5."""
    guard = HallucinationGuard(tolerance=0.1, patience=2, action="stop")
    out = _feed(guard, [0.20, 0.25, 0.35, 0.30, 0.40, 0.45])
    assert [d.streak for d in out] == [0, 0, 1, 0, 1, 2]
    assert [d.action for d in out] == ["continue"] * 5 + ["stop"]
    assert guard.start_rate == 0.20 and guard.limit == pytest.approx(0.30)
    assert guard.fired and guard.fired_at == 5
    assert "stopped the run at step 5" in out[-1].message and "0.450" in out[-1].message
    # it fires once; later probes say continue but the guard stays fired
    later = guard.update(6, {"hallucination_rate": 0.9, "probe_accuracy": 0.0})
    assert later.action == "continue" and not later.message and guard.fired


def test_rollback_names_the_best_probe_by_accuracy():
    """Accuracy 0.3, 0.5, 0.5 (a tie keeps the earlier), 0.1: the best is step 1."""
    guard = HallucinationGuard(tolerance=0.05, patience=2, action="rollback")
    out = _feed(guard, [0.2, 0.2, 0.3, 0.3], [0.3, 0.5, 0.5, 0.1])
    assert [d.is_best for d in out] == [True, True, False, False]
    assert out[-1].action == "rollback" and out[-1].best_step == 1
    assert "weights restored to step 1 (best probe_accuracy 0.500)" in out[-1].message


def test_best_by_hallucination_rate_is_the_lowest():
    guard = HallucinationGuard(tolerance=0.5, patience=1, best_metric="hallucination_rate")
    out = _feed(guard, [0.4, 0.3, 0.35, 0.2])
    assert [d.is_best for d in out] == [True, True, False, True] and guard.best_step == 3


def test_off_never_fires_and_nan_rates_are_ignored():
    off = HallucinationGuard(tolerance=0.0, patience=1, action="off")
    assert not any(d.fired for d in _feed(off, [0.1, 0.9, 0.9, 0.9]))
    assert off.streak == 3 and not off.fired
    guard = HallucinationGuard(tolerance=0.1, patience=2)
    out = _feed(guard, [math.nan, 0.2, 0.5, math.nan, 0.5])
    assert guard.start_rate == 0.2  # the first finite rate
    assert [d.streak for d in out] == [0, 0, 1, 1, 2] and out[-1].action == "stop"


def test_state_dict_round_trip_continues_the_same_way():
    rates, accs = [0.2, 0.25, 0.4, 0.1, 0.4, 0.45, 0.5], [0.1, 0.6, 0.2, 0.3, 0.7, 0.2, 0.2]
    whole = HallucinationGuard(tolerance=0.1, patience=2, action="rollback")
    expected = _feed(whole, rates, accs)
    first = HallucinationGuard(tolerance=0.1, patience=2, action="rollback")
    _feed(first, rates[:4], accs[:4])
    resumed = HallucinationGuard(tolerance=0.1, patience=2, action="rollback")
    resumed.load_state_dict(first.state_dict())
    assert _feed(resumed, rates[4:], accs[4:], start_step=4) == expected[4:]
    assert resumed.state_dict() == whole.state_dict()
    assert expected[5].action == "rollback" and expected[5].best_step == 4


def test_config_validation():
    with pytest.raises(R1V2Error, match="guard.patience"):
        HallucinationGuard(patience=0)
    with pytest.raises(ValueError, match="action"):
        HallucinationGuard(action="pause")
    with pytest.raises(R1V2Error, match="guard.tolerance"):
        GuardConfig(tolerance=-0.1).validate()
    cfg = GuardConfig(
        action="rollback", tolerance=0.2, patience=3, best_metric="hallucination_rate"
    )
    guard = HallucinationGuard.from_config(cfg)
    assert (guard.action, guard.tolerance, guard.patience, guard.best_metric) == (
        "rollback",
        0.2,
        3,
        "hallucination_rate",
    )
    # YAML reads a bare `off` as false: it still means off
    assert resolve(GuardConfig, None, ["action=off"]).action == "off"
    assert resolve(GuardConfig, None, ["action=rollback"]).action == "rollback"
    with pytest.raises(R1V2Error, match="action"):
        resolve(GuardConfig, None, ["action=on"])
