"""The hallucination guard replayed over finished demo runs at other tolerances.

The guard (:class:`r1v2.train.guard.HallucinationGuard`) is a pure function of the probe
results a run logs (``hallucination_rate`` and ``probe_accuracy`` in ``metrics.jsonl``), so
the step where it would have fired at another ``tolerance`` or ``patience`` can be read off
a run that it did not stop, without training again. (Where it did fire, the run ended there:
its later probes are missing, and a tighter guard would have fired at the same step or
earlier, which the replay shows too.)

For each demo folder and GRPO arm (``runs/NAME/metrics.jsonl``) this prints the probe's
starting and highest rate and, per tolerance, the step where the guard fires or ``-``.
A tolerance worth setting fires on the arms that raise hallucination (the over-weighted
rule reward, ``grpo_rule``) and not on the main run (``grpo``).

Run (after ``r1v2 demo --arms grpo_nossb --arms grpo_rule`` on some seeds):

    python bench/guard_tolerance.py runs/demo runs/demo-s1 runs/demo-s2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from r1v2.train.guard import HallucinationGuard

ARMS = ("grpo", "grpo_nossb", "grpo_rule")
TOLERANCES = (0.04, 0.06, 0.08, 0.1)


def probes(metrics: Path) -> list[dict]:
    """The rows of a run's log that carry a probe, in step order."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("hallucination_rate") is not None]


def fires_at(rows: list[dict], tolerance: float, patience: int) -> int | None:
    """The step at which a guard of these settings fires on the probes ``rows`` (None: never)."""
    guard = HallucinationGuard(tolerance, patience, action="stop")
    for r in rows:
        if guard.update(r["step"], r).fired:
            return int(r["step"])
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", help="demo folders (OUT of r1v2 demo)")
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--tolerances", type=float, nargs="+", default=list(TOLERANCES))
    args = ap.parse_args(argv)
    header = ["folder", "arm", "probe rate: start -> max (step)"]
    header += [f"fires at (tol {t:g})" for t in args.tolerances]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for folder in args.folders:
        for arm in ARMS:
            metrics = Path(folder) / "runs" / arm / "metrics.jsonl"
            if not metrics.is_file():
                continue
            rows = probes(metrics)
            if not rows:
                continue
            top = max(rows[1:] or rows, key=lambda r: r["hallucination_rate"])
            rise = f"{rows[0]['hallucination_rate']:.0%} -> {top['hallucination_rate']:.0%}"
            cells = [folder, arm, f"{rise} ({top['step']})"]
            for tol in args.tolerances:
                step = fires_at(rows, tol, args.patience)
                cells.append("-" if step is None else str(step))
            print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
