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
ENGINES = ["transformers", "compiled", "compiled_dynamic", "continuous"]
NAMES = [
    *(f"rollout/{e}" for e in ENGINES),
    "reference",
    "update/adapter",
    "update/all",
    *(f"step/{t}/{e}" for t in ("adapter", "all") for e in ENGINES),
]
CHECKS = ["check/compiled", "check/compiled_dynamic"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu.py"),
            "--dry-run",
            "--check",
            "--json",
            str(out),
        ],
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
    rows = {r["name"]: r for r in data["rows"] if r["kind"] != "check"}
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
    for engine in ENGINES[1:]:
        assert rows[f"rollout/{engine}"]["tokens"] == 2 * 2 * 8
        assert rows[f"rollout/{engine}"]["min_completion_tokens"] == 8
    total = rows["update/all"]["tokens"]
    assert total == round(2 * 2 * (w["mean_prompt_tokens"] + 8))
    assert rows["reference"]["tokens"] == rows["update/adapter"]["tokens"] == total
    for trainable, engine in ((t, e) for t in ("adapter", "all") for e in ENGINES):
        step, update = rows[f"step/{trainable}/{engine}"], rows[f"update/{trainable}"]
        phases = rows[f"rollout/{engine}"]["seconds"] + rows["reference"]["seconds"]
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


@pytest.mark.slow
def test_check_compares_the_compiled_engines(dry_run):
    """--check: both compiled engines give the transformers engine's tokens on the CPU
    (greedy and sampled for a seed), in rows of their own and a table before the main one."""
    data, stdout = dry_run
    checks = [r for r in data["rows"] if r["kind"] == "check"]
    assert [r["name"] for r in checks] == CHECKS
    for row in checks:
        assert row["greedy_equal"] and row["sampled_equal"], row
        assert row["greedy_first_difference"] is None and row["compile_failed"] is None
    header = stdout.index("| check | greedy = transformers")
    assert stdout.count("| equal | equal | yes |") == 2
    assert header < stdout.rindex("| measurement |")


def test_quick_and_engine_flags():
    """--quick: its engines and sizes on the GPU shapes, --check on; flags still override."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu
    finally:
        sys.path.remove(str(ROOT / "bench"))
    quick = gpu.parse_args(["--quick"])
    assert quick.engines == ["transformers", "compiled", "continuous"] and quick.check
    s = gpu.workload(quick)
    assert (s.new_tokens, s.repeats, s.hidden, s.prompts) == (256, 1, 1536, 8)
    s = gpu.workload(gpu.parse_args(["--quick", "--new-tokens", "64"]))
    assert (s.new_tokens, s.repeats) == (64, 1)
    full = gpu.parse_args([])
    assert full.engines == ENGINES and not full.check
    assert gpu.workload(full).new_tokens == 512
    dry = gpu.workload(gpu.parse_args(["--dry-run", "--quick"]))
    assert (dry.hidden, dry.new_tokens) == (64, 8)  # the dry run keeps its tiny sizes
