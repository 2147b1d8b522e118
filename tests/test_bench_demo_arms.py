"""bench/demo_arms.py: SSB's rollouts to a training accuracy, and the guard replayed over a
run's logged probes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import demo_arms  # noqa: E402

sys.path.remove(str(ROOT / "bench"))

# start 10%; 17%, 18% (7-8 points above), back to 12%, then 21% and 22% (11-12 above)
RATES = [(0, 0.10), (25, 0.17), (50, 0.18), (75, 0.12), (100, 0.21), (125, 0.22)]
# training accuracy of steps 1-6, 64 rollouts each; tied groups 0.25 then 0.5
ACCURACY = [0.5, 0.6, 0.7, 0.8, 0.8, 0.9]


def write_run(folder: Path, arm: str) -> None:
    run = folder / "runs" / arm
    run.mkdir(parents=True)
    rows = [{"step": s, "hallucination_rate": h, "probe_accuracy": 0.5} for s, h in RATES]
    for step, acc in enumerate(ACCURACY, start=1):
        tied = 0.25 if step <= 3 else 0.5
        rows.append(
            {"step": step, "reward_accuracy": acc, "rollouts": 64, "zero_std_group_fraction": tied}
        )
    rows.sort(key=lambda r: r["step"])
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_fires_where_the_streak_reaches_patience(tmp_path):
    write_run(tmp_path, "grpo_rule")
    rows = demo_arms.probes(demo_arms.read_rows(tmp_path / "runs/grpo_rule/metrics.jsonl"))
    assert [r["step"] for r in rows] == [0, 25, 50, 75, 100, 125]
    assert demo_arms.fires_at(rows, 0.06, 2) == 50  # 7 and 8 points above, twice
    assert demo_arms.fires_at(rows, 0.08, 2) == 125  # 18% is not above 10% + 8
    assert demo_arms.fires_at(rows, 0.1, 2) == 125
    assert demo_arms.fires_at(rows, 0.12, 2) is None  # 22% is not above 22%
    assert demo_arms.fires_at(rows, 0.06, 3) is None  # the streak breaks at 75


def test_rollouts_to_a_running_training_accuracy(tmp_path):
    write_run(tmp_path, "grpo")
    rows = demo_arms.read_rows(tmp_path / "runs/grpo/metrics.jsonl")
    # window 2: means 0.55, 0.65, 0.75, 0.8, 0.85 after steps 2-6
    assert demo_arms.rollouts_to(rows, 0.64, 2) == 3 * 64
    assert demo_arms.rollouts_to(rows, 0.8, 2) == 5 * 64
    assert demo_arms.rollouts_to(rows, 0.5, 3) == 3 * 64  # a full window first
    assert demo_arms.rollouts_to(rows, 0.95, 2) is None


def test_the_tables(tmp_path):
    write_run(tmp_path, "grpo_rule")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench/demo_arms.py"), str(tmp_path), "--window", "3"]
        + ["--targets", "0.65", "0.72", "0.8"],
        capture_output=True,
        text=True,
        check=True,
    )
    ssb, guard = proc.stdout.strip().split("\n\n")
    # window 3: means 0.6, 0.7, 0.767, 0.833 after steps 3-6; tied 0.25 / 0.5
    assert ssb.splitlines()[0].startswith("| folder | arm | rollouts to 0.65 | rollouts to 0.72")
    assert ssb.splitlines()[2] == f"| {tmp_path} | grpo_rule | 256 | 320 | 384 | 0.25 / 0.50 |"
    lines = guard.splitlines()
    assert len(lines) == 3  # header, rule, the one arm with a log (tolerances 0.04-0.1)
    assert lines[2] == f"| {tmp_path} | grpo_rule | 10% -> 22% (125) | 50 | 50 | 125 | 125 |"
