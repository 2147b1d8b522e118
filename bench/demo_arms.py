"""The demo's GRPO arms side by side over seeds: SSB's rollouts to a training accuracy, and
the hallucination guard replayed at other tolerances.

For each demo folder (``OUT`` of ``r1v2 demo --arms grpo_nossb --arms grpo_rule``) and GRPO
arm (``runs/NAME/metrics.jsonl``: ``grpo``, ``grpo_nossb``, ``grpo_rule``):

- SSB: the rollouts until the running mean of the training accuracy (``reward_accuracy``,
  the rule's verdict on the step's fresh rollouts, over ``--window`` steps) first reaches each
  ``--targets`` value, and the share of tied groups (every rollout scored alike) in the first
  and last ``--window`` steps;
- the guard (:class:`r1v2.train.guard.HallucinationGuard`) is a pure function of the probe
  results a run logs (``hallucination_rate`` and ``probe_accuracy``), so the step where it
  would have fired at another ``tolerance`` can be read off a run it did not stop, without
  training again (where it did fire, the run ended there and a tighter guard would have fired
  at the same step or earlier). Printed: the probe's starting and highest rate and, per
  tolerance, the step where the guard fires or ``-``. A tolerance worth setting fires on the
  arms that raise hallucination (``grpo_rule``) and not on the main run (``grpo``).

Run (after the demo and its two arms on some seeds):

    python bench/demo_arms.py runs/demo runs/demo-s1 runs/demo-s2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from r1v2.train.guard import HallucinationGuard

ARMS = ("grpo", "grpo_nossb", "grpo_rule")
TOLERANCES = (0.04, 0.06, 0.08, 0.1)
TARGETS = (0.65, 0.70, 0.75)


def probes(rows: list[dict]) -> list[dict]:
    """The rows of a run's log that carry a probe, in step order."""
    return [r for r in rows if r.get("hallucination_rate") is not None]


def fires_at(rows: list[dict], tolerance: float, patience: int) -> int | None:
    """The step at which a guard of these settings fires on the probes ``rows`` (None: never)."""
    guard = HallucinationGuard(tolerance, patience, action="stop")
    for r in rows:
        if guard.update(r["step"], r).fired:
            return int(r["step"])
    return None


def rollouts_to(rows: list[dict], target: float, window: int) -> int | None:
    """Rollouts generated until the mean training accuracy of the last ``window`` steps
    first reached ``target`` (None: never)."""
    steps = [r for r in rows if r["step"] > 0 and r.get("reward_accuracy") is not None]
    done = 0
    for i, r in enumerate(steps):
        done += int(r.get("rollouts") or 0)
        recent = steps[max(0, i + 1 - window) : i + 1]
        if len(recent) == window and sum(x["reward_accuracy"] for x in recent) / window >= target:
            return done
    return None


def read_rows(metrics: Path) -> list[dict]:
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def runs(folders: list[str]):
    """``(folder, arm, rows)`` for each arm's log found in ``folders``."""
    for folder in folders:
        for arm in ARMS:
            metrics = Path(folder) / "runs" / arm / "metrics.jsonl"
            if metrics.is_file():
                yield folder, arm, read_rows(metrics)


def ssb_table(folders: list[str], targets: list[float], window: int) -> list[str]:
    header = ["folder", "arm"] + [f"rollouts to {t:.2f}" for t in targets]
    header += [f"tied groups: first / last {window} steps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for folder, arm, rows in runs(folders):
        steps = [r for r in rows if r["step"] > 0 and r.get("zero_std_group_fraction") is not None]
        if not steps:
            continue
        cells = [folder, arm]
        for t in targets:
            n = rollouts_to(rows, t, window)
            cells.append("not reached" if n is None else f"{n:,}")
        first = sum(r["zero_std_group_fraction"] for r in steps[:window]) / len(steps[:window])
        last = sum(r["zero_std_group_fraction"] for r in steps[-window:]) / len(steps[-window:])
        cells.append(f"{first:.2f} / {last:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", help="demo folders (OUT of r1v2 demo)")
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--tolerances", type=float, nargs="+", default=list(TOLERANCES))
    ap.add_argument("--targets", type=float, nargs="+", default=list(TARGETS))
    ap.add_argument("--window", type=int, default=50, help="steps of the running mean")
    args = ap.parse_args(argv)
    print("\n".join(ssb_table(args.folders, args.targets, args.window)) + "\n")
    header = ["folder", "arm", "probe rate: start -> max (step)"]
    header += [f"fires at (tol {t:g})" for t in args.tolerances]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for folder, arm, rows in runs(args.folders):
        rows = probes(rows)
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
