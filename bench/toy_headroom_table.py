"""Tables of ``bench/toy_headroom.py`` runs: greedy accuracy per stage and level, mean +- std
over the runs given (one per seed), and how fast each run's GRPO reward rose.

Run: ``python bench/toy_headroom_table.py runs/h0 runs/h1 runs/h2`` (the ``--out`` folders of
``toy_headroom.py``); ``--reach 0.7`` sets the training accuracy whose rollouts are counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

STAGES = ("assembled", "mpo", "grpo")
COLUMNS = ("level 1", "level 2", "level 3", "level 4", "math", "choice", "all")
WINDOW = 50  # steps in the moving mean of the training accuracy


def mean_std(values: list[float]) -> str:
    m = 100 * statistics.fmean(values)
    s = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.1f} +- {s:.1f}"


def accuracy_table(reports: list[dict]) -> str:
    cols = [c for c in COLUMNS if all(c in r["mpo"] for r in reports)]
    lines = [
        "| stage | " + " | ".join(cols) + " | hallucination |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for stage in STAGES:
        cells = [mean_std([r[stage][c][0] for r in reports]) for c in cols]
        hall = mean_std([r[stage]["all"][1] for r in reports])
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {hall} |")
    return "\n".join(lines)


def reward_curve(run: Path) -> tuple[list[float], int]:
    """The training accuracy per GRPO step and the rollouts of a step."""
    rows = [json.loads(line) for line in (run / "grpo" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "reward_accuracy" in r]
    return [r["reward_accuracy"] for r in rows], int(rows[0].get("rollouts", 0))


def steps_to_reach(curve: list[float], level: float) -> int | None:
    """The first step whose trailing ``WINDOW``-step mean reaches ``level`` (None: never)."""
    for end in range(WINDOW, len(curve) + 1):
        if statistics.fmean(curve[end - WINDOW : end]) >= level:
            return end
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="toy_headroom.py --out folders")
    p.add_argument("--reach", type=float, default=0.7, help="training accuracy to reach")
    args = p.parse_args()
    reports = [json.loads((run / "headroom.json").read_text()) for run in args.runs]
    print(f"greedy accuracy on the held-out set (%), mean +- std over {len(reports)} run(s)")
    print(accuracy_table(reports))
    print(f"\nGRPO training accuracy ({WINDOW}-step mean): first, last, steps to {args.reach}")
    for run, report in zip(args.runs, reports):
        curve, rollouts = reward_curve(run)
        first = statistics.fmean(curve[:WINDOW])
        last = statistics.fmean(curve[-WINDOW:])
        reached = steps_to_reach(curve, args.reach)
        when = "never" if reached is None else f"step {reached} ({reached * rollouts} rollouts)"
        solve = report.get("solve_rate", {})
        print(f"{run}: {first:.3f} -> {last:.3f}, {when}; MPO solve rate on the pool {solve}")


if __name__ == "__main__":
    main()
