"""Metrics against hand-computed values and naive twins."""

import math
from math import comb

import pytest
from hypothesis import given
from hypothesis import strategies as st

from r1v2.eval.metrics import (
    by_category,
    k_values,
    mean_pass_at_k,
    mean_std,
    pass_at_k,
    pass_summary,
    per_run_accuracy,
    pope_metrics,
)


def test_pass_at_k_hand_values():
    """n=5, c=2:
    pass@1 = 1 - C(3,1)/C(5,1) = 1 - 3/5 = 0.4
    pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    pass@3 = 1 - C(3,3)/C(5,3) = 1 - 1/10 = 0.9
    pass@4 = 1 (n - c = 3 < 4)
    """
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4, abs=1e-12)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-12)
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9, abs=1e-12)
    assert pass_at_k(5, 2, 4) == 1.0
    assert pass_at_k(5, 0, 5) == 0.0 and pass_at_k(5, 5, 1) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


@given(st.integers(1, 60), st.data())
def test_pass_at_k_matches_binomial_twin(n, data):
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    naive = 1.0 - comb(n - c, k) / comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(naive, rel=1e-9, abs=1e-12)


def test_pass_at_k_large_n_stays_finite():
    # C(2000, 1000) overflows a float; the product form does not need it.
    v = pass_at_k(2000, 3, 1000)
    assert 0.87 < v < 0.88  # 1 - (1/2)^3 approximately = 0.875


def test_per_run_and_summary():
    """3 samples x 2 runs; sample 3 could not be scored in either run (None = wrong).
    run 1: (1 + 0 + 0) / 3 = 1/3; run 2: (1 + 1 + 0) / 3 = 2/3.
    mean = 1/2; sample std (ddof=1) = |2/3 - 1/3| / sqrt(2) = 0.2357...
    pass@2: sample 1 (n=2, c=2) -> 1; sample 2 (n=2, c=1) -> 1 - C(1,2)/C(2,2) = 1;
    sample 3 (n=2, c=0) -> 0 -> 2/3.
    pass@1 over samples: (1 + 0.5 + 0) / 3 = 1/2.
    """
    scores = [[1.0, 1.0], [0.0, 1.0], [None, None]]
    assert per_run_accuracy(scores, 2) == pytest.approx([1 / 3, 2 / 3])
    s = pass_summary(scores, 2)
    assert s["pass@1"] == pytest.approx(1 / 2)
    assert s["pass@1_std"] == pytest.approx((1 / 3) / math.sqrt(2))
    assert s["pass@k"] == {"1": pytest.approx(1 / 2), "2": pytest.approx(2 / 3)}
    assert (s["n_samples"], s["n_runs"], s["n_unscored"]) == (3, 2, 2)


def test_unscored_counts_as_wrong():
    """1 right of 3, the other 2 unscorable: Pass@1 is 1/3, not 1/1 = 100%."""
    s = pass_summary([[1.0], [None], [None]], 1)
    assert s["pass@1"] == pytest.approx(1 / 3)
    assert s["pass@k"] == {"1": pytest.approx(1 / 3)}
    assert s["n_unscored"] == 2
    out = by_category([[1.0], [None], [0.0]], ["a", "a", "b"], 1)
    assert out["a"] == {"pass@1": 0.5, "pass@1_std": 0.0, "n_samples": 2}


def test_mean_std_edge_cases():
    assert mean_std([0.5]) == (0.5, 0.0)
    m, s = mean_std([])
    assert math.isnan(m) and math.isnan(s)
    assert mean_std([0.2, 0.4, 0.9]) == pytest.approx((0.5, math.sqrt((0.09 + 0.01 + 0.16) / 2)))


def test_k_values():
    assert k_values(1) == [1]
    assert k_values(5) == [1, 2, 4, 5]
    assert k_values(8) == [1, 2, 4, 8]


def test_mean_pass_at_k_threshold():
    # Partial scores count as correct from 0.5 up: [0.5, 0.4] -> c=1 of n=2.
    assert mean_pass_at_k([[0.5, 0.4]], 1) == pytest.approx(0.5)


def test_by_category():
    """cat a: samples 1, 3 -> run means (1+0)/2=0.5, (1+1)/2=1 -> mean 0.75, std 0.5/sqrt2.
    cat b: sample 2 -> 0, 0. Sample 4 has no category and is left out."""
    scores = [[1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    out = by_category(scores, ["a", "b", "a", None], 2)
    assert list(out) == ["a", "b"]
    assert out["a"]["pass@1"] == pytest.approx(0.75)
    assert out["a"]["pass@1_std"] == pytest.approx(0.5 / math.sqrt(2))
    assert out["b"] == {"pass@1": 0.0, "pass@1_std": 0.0, "n_samples": 1}


def test_pope_metrics_by_hand():
    """labels   yes yes yes no  no  no
    preds    yes no  None yes no no
    tp=1 fp=1 fn=2 (no and None on yes labels) correct=3
    accuracy 3/6, precision 1/2, recall 1/3, F1 = 2*(1/2)(1/3)/(5/6) = 0.4, yes-ratio 2/6.
    """
    m = pope_metrics(
        ["yes", "no", None, "yes", "no", "no"], ["yes", "yes", "yes", "no", "no", "no"]
    )
    assert m == pytest.approx(
        {"accuracy": 0.5, "precision": 0.5, "recall": 1 / 3, "f1": 0.4, "yes_ratio": 1 / 3}
    )


def test_pope_never_yes():
    m = pope_metrics(["no", "no"], ["yes", "no"])
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0 and m["accuracy"] == 0.5
