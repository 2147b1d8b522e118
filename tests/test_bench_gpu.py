"""bench/gpu.py --dry-run: the GPU benchmark's code path on the CPU with tiny shapes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Every figure each kind of row must carry (all finite and > 0).
FIELDS = {
    "rollout": ["seconds", "tokens", "tokens_per_s", "sequences", "tflops", "mfu", "peak_mem_gib"],
    "reference": ["seconds", "tokens", "tokens_per_s", "tflops", "mfu", "peak_mem_gib"],
    "update": [
        "seconds",
        "tokens",
        "tokens_per_s_per_gpu",
        "tflops",
        "mfu",
        "mfu_llm",
        "trainable_params",
        "peak_mem_gib",
    ],
    "step": [
        "seconds",
        "tokens",
        "tokens_per_s_per_gpu",
        "generation_share",
        "reference_share",
        "update_share",
        "peak_mem_gib",
    ],
}
NAMES = [
    "rollout/transformers",
    "rollout/compiled",
    "rollout/continuous",
    "reference",
    "update/adapter",
    "update/all",
    "step/adapter",
    "step/all",
]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--dry-run", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow
def test_every_row_has_finite_positive_figures(dry_run):
    data, _ = dry_run
    rows = {r["name"]: r for r in data["rows"]}
    assert list(rows) == NAMES
    for name, row in rows.items():
        assert "error" not in row, (name, row)
        for field in FIELDS[row["kind"]]:
            value = row[field]
            assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, field)
            assert math.isfinite(value) and value > 0, (name, field, value)


@pytest.mark.slow
def test_figures_agree_with_each_other(dry_run):
    """Tokens: P=2 prompts x G=2, 8 new tokens each (fixed lengths) = 32 completion tokens;
    the update, reference and step rows count prompt + completion tokens of the same batch.
    A step is the sum of its phases, so its shares add up to 1; tokens/s = tokens / seconds."""
    data, _ = dry_run
    meta, rows = data["meta"], {r["name"]: r for r in data["rows"]}
    w = meta["workload"]
    assert (w["prompts"], w["group_size"], w["new_tokens"]) == (2, 2, 8)
    assert meta["fixed_lengths"] is True
    assert rows["rollout/transformers"]["tokens"] == 2 * 2 * 8
    assert rows["rollout/transformers"]["min_completion_tokens"] == 8
    for engine in ("compiled", "continuous"):
        assert rows[f"rollout/{engine}"]["tokens"] == 2 * 2 * 8
        assert rows[f"rollout/{engine}"]["min_completion_tokens"] == 8
    total = rows["update/all"]["tokens"]
    assert total == round(2 * 2 * (w["mean_prompt_tokens"] + 8))
    assert rows["reference"]["tokens"] == rows["update/adapter"]["tokens"] == total
    for trainable in ("adapter", "all"):
        step, update = rows[f"step/{trainable}"], rows[f"update/{trainable}"]
        phases = rows["rollout/transformers"]["seconds"] + rows["reference"]["seconds"]
        assert step["seconds"] == pytest.approx(phases + update["seconds"], rel=1e-12)
        shares = step["generation_share"] + step["reference_share"] + step["update_share"]
        assert shares == pytest.approx(1.0, abs=1e-12)
        assert step["tokens_per_s_per_gpu"] == pytest.approx(total / step["seconds"], rel=1e-12)
        assert update["tokens_per_s_per_gpu"] == pytest.approx(total / update["seconds"], rel=1e-12)
        assert update["mfu"] > update["mfu_llm"]  # the vision encoder and adapter add FLOPs
    # Adapter-only trains the projector alone; full fine-tuning trains every parameter.
    assert rows["update/adapter"]["trainable_params"] == meta["params"]["adapter"]
    assert rows["update/all"]["trainable_params"] == sum(meta["params"].values())


@pytest.mark.slow
def test_table_is_printed_last(dry_run):
    _, stdout = dry_run
    lines = stdout.strip().splitlines()
    header = max(i for i, line in enumerate(lines) if line.startswith("| measurement |"))
    table = lines[header:]
    assert len(table) == 2 + len(NAMES)  # header, rule, one row per measurement
    assert all(line.startswith("|") and line.endswith("|") for line in table)
    assert [line.split("|")[1].strip() for line in table[2:]] == NAMES
    assert "EasyR1" in stdout[: stdout.index("| measurement |")]  # the reference is in the notes
