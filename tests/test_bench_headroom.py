"""bench/toy_headroom_table.py: the table over seeds and the rollouts to a training accuracy."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_run(folder: Path, level4: list[float], curve: list[float]) -> Path:
    def scores(a):
        return {"level 3": [0.5, 0.1, 10], "level 4": [a, 0.2, 10], "all": [a, 0.1, 20]}

    report = {"assembled": scores(0.1), "mpo": scores(level4[0]), "grpo": scores(level4[1])}
    (folder / "grpo").mkdir(parents=True)
    (folder / "headroom.json").write_text(json.dumps(report))
    rows = [{"step": i, "reward_accuracy": a, "rollouts": 64} for i, a in enumerate(curve)]
    (folder / "grpo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_table_and_steps_to_reach(tmp_path):
    # run a: 50 steps at 0.6 then 50 at 0.8: the 50-step mean reaches 0.7 after 75 steps
    a = write_run(tmp_path / "a", [0.6, 0.7], [0.6] * 50 + [0.8] * 50)
    b = write_run(tmp_path / "b", [0.4, 0.7], [0.6] * 100)  # never reaches 0.7
    cmd = [sys.executable, str(ROOT / "bench/toy_headroom_table.py"), str(a), str(b)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "| stage | level 3 | level 4 | all | hallucination |" in out
    # level 4 after MPO: 60 and 40 -> 50.0 +- 14.1 (sample std); after GRPO 70, 70
    assert "| mpo | 50.0 +- 0.0 | 50.0 +- 14.1 | 50.0 +- 14.1 | 10.0 +- 0.0 |" in out
    assert "| grpo | 50.0 +- 0.0 | 70.0 +- 0.0 |" in out
    assert f"{a}: 0.600 -> 0.800, step 75 (4800 rollouts)" in out
    assert f"{b}: 0.600 -> 0.600, never" in out
