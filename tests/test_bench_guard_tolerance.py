"""bench/guard_tolerance.py: the guard replayed over a run's logged probes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import guard_tolerance  # noqa: E402

sys.path.remove(str(ROOT / "bench"))

# start 10%; 17%, 18% (7-8 points above), back to 12%, then 21% and 22% (11-12 above)
RATES = [(0, 0.10), (25, 0.17), (50, 0.18), (75, 0.12), (100, 0.21), (125, 0.22)]


def write_run(folder: Path, arm: str) -> None:
    run = folder / "runs" / arm
    run.mkdir(parents=True)
    rows = []
    for step, rate in RATES:
        rows.append({"step": step, "hallucination_rate": rate, "probe_accuracy": 0.5})
        rows.append({"step": step + 1, "reward_mean": 1.0})  # a step row, no probe
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_fires_where_the_streak_reaches_patience(tmp_path):
    write_run(tmp_path, "grpo_rule")
    rows = guard_tolerance.probes(tmp_path / "runs/grpo_rule/metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 25, 50, 75, 100, 125]
    assert guard_tolerance.fires_at(rows, 0.06, 2) == 50  # 7 and 8 points above, twice
    assert guard_tolerance.fires_at(rows, 0.08, 2) == 125  # 18% is not above 10% + 8
    assert guard_tolerance.fires_at(rows, 0.1, 2) == 125
    assert guard_tolerance.fires_at(rows, 0.12, 2) is None  # 22% is not above 22%
    assert guard_tolerance.fires_at(rows, 0.06, 3) is None  # the streak breaks at 75


def test_the_table(tmp_path):
    write_run(tmp_path, "grpo_rule")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench/guard_tolerance.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3  # header, rule, the one arm with a log (tolerances 0.04-0.1)
    assert lines[2] == f"| {tmp_path} | grpo_rule | 10% -> 22% (125) | 50 | 50 | 125 | 125 |"
