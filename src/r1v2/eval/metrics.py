"""Evaluation metrics: Pass@1 over sampled runs, unbiased pass@k, POPE, hallucination rate.

Scores arrive as a table ``scores[sample][run]`` of floats in [0, 1] or None. None means
"could not be scored" (an unparsable reference the judge did not decide): every item stays in
the denominator and such an entry counts as wrong (RECIPE §6: "over every item: an unscorable
response counts as wrong"), and it is counted separately (``n_unscored``). Leaving it out
would report 1 right of 3 as 100%.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

Scores = Sequence[Sequence[float | None]]  # [n_samples][n_runs]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for fewer than two values)."""
    if not values:
        return float("nan"), float("nan")
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var)


def _value(score: float | None) -> float:
    """A score as it counts in a mean: None (could not be scored) is wrong."""
    return 0.0 if score is None else score


def per_run_accuracy(scores: Scores, n_runs: int) -> list[float]:
    """Mean score of each run over every sample (None counts 0): a list of length n_runs.

    Samples that have no entry for a run are left out of that run; a run no sample has gives
    NaN.
    """
    out = []
    for r in range(n_runs):
        vals = [_value(row[r]) for row in scores if r < len(row)]
        out.append(sum(vals) / len(vals) if vals else float("nan"))
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Computed as the product 1 - prod_{i=n-c+1}^{n} (1 - k / i), which never forms the large
    binomials (the estimator of Chen et al., 2021).
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(scores: Scores, k: int) -> float:
    """pass@k averaged over samples; a run counts as correct when its score is >= 0.5.

    Each sample uses its own n (its runs; an unscored run is a wrong one); samples with fewer
    than k runs are left out. NaN when none is left.
    """
    vals = []
    for row in scores:
        if len(row) >= k:
            vals.append(pass_at_k(len(row), sum(_value(s) >= 0.5 for s in row), k))
    return sum(vals) / len(vals) if vals else float("nan")


def k_values(n_runs: int) -> list[int]:
    """The k reported for pass@k: powers of two below n_runs, and n_runs itself."""
    ks, k = [], 1
    while k < n_runs:
        ks.append(k)
        k *= 2
    return [*ks, n_runs] if n_runs >= 1 else []


def pass_summary(scores: Scores, n_runs: int) -> dict:
    """Pass@1 (mean and std over runs), pass@k, and counts for one set of samples
    (``n_unscored``: entries that could not be scored, counted as wrong)."""
    runs = per_run_accuracy(scores, n_runs)
    finite = [r for r in runs if not math.isnan(r)]
    m, s = mean_std(finite)
    return {
        "pass@1": m,
        "pass@1_std": s,
        "pass@1_runs": runs,
        "pass@k": {str(k): mean_pass_at_k(scores, k) for k in k_values(n_runs)},
        "n_samples": len(scores),
        "n_runs": n_runs,
        "n_unscored": sum(1 for row in scores for v in row if v is None),
    }


def by_category(scores: Scores, categories: Sequence[str | None], n_runs: int) -> dict[str, dict]:
    """Pass@1 mean/std over runs and the sample count per category (samples without one skipped)."""
    groups: dict[str, list[int]] = {}
    for i, cat in enumerate(categories):
        if cat is not None:
            groups.setdefault(cat, []).append(i)
    out = {}
    for cat in sorted(groups):
        rows = [scores[i] for i in groups[cat]]
        runs = [r for r in per_run_accuracy(rows, n_runs) if not math.isnan(r)]
        m, s = mean_std(runs)
        out[cat] = {"pass@1": m, "pass@1_std": s, "n_samples": len(rows)}
    return out


def pope_metrics(predictions: Sequence[str | None], labels: Sequence[str]) -> dict[str, float]:
    """POPE metrics for one run: "yes" is the positive class.

    predictions: "yes", "no" or None (no answer found); labels: "yes"/"no".
    A missing prediction is wrong: it counts in accuracy's denominator and as a missed positive
    when the label is yes, and it is not a "yes" for the yes-ratio. Precision is 0 when the
    model never says yes.
    """
    if len(predictions) != len(labels):
        raise ValueError("predictions and labels differ in length")
    n = len(labels)
    tp = sum(p == "yes" and y == "yes" for p, y in zip(predictions, labels))
    fp = sum(p == "yes" and y == "no" for p, y in zip(predictions, labels))
    fn = sum(p != "yes" and y == "yes" for p, y in zip(predictions, labels))
    correct = sum(p == y for p, y in zip(predictions, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": correct / n if n else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n if n else float("nan"),
    }


def mean_std_dicts(per_run: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Average a list of per-run metric dicts: ``{name: mean, name + "_std": std}``."""
    out: dict[str, float] = {}
    for key in per_run[0] if per_run else ():
        m, s = mean_std([d[key] for d in per_run])
        out[key] = m
        out[key + "_std"] = s
    return out
