"""``r1v2 demo``: the report's arithmetic, the seed summary, and the whole demo end to end."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from r1v2.cli import _bare_bools
from r1v2.config import resolve, to_dict
from r1v2.errors import R1V2Error
from r1v2.toy.demo import (
    ARMS,
    MAIN,
    DemoConfig,
    check_unchanged,
    group_accuracy,
    model_path,
    selected_arms,
    stage_config,
    write_result,
)
from r1v2.toy.report import (
    group_table,
    guard_note,
    pairs_text,
    replay_note,
    rollouts_to_reach,
    seed_summary,
    to_html,
    training_stats,
    write_report,
)


def test_a_bool_flag_alone_means_true():
    args = ["--fast", "--out", "x", "--progress", "false", "--ablations"]
    assert _bare_bools(args, DemoConfig) == [
        "--fast",
        "true",
        "--out",
        "x",
        "--progress",
        "false",
        "--ablations",
        "true",
    ]
    assert _bare_bools(["--fast", "seed=3"], DemoConfig) == ["--fast", "true", "seed=3"]


def test_arms_runs_the_named_arms_and_those_they_start_from():
    def names(**values):
        return [a.name for a in selected_arms(resolve(DemoConfig, None, list(values.items())))]

    assert names() == []
    assert names(arms=["grpo_sampled"]) == ["mpo_sampled", "grpo_sampled"]
    assert names(arms=["mpo_t0", "sft"]) == ["sft", "mpo_t0"]
    assert names(arms=["late_nossb"]) == ["late_nossb"]  # starts from the main GRPO
    assert names(ablations=True) == [a.name for a in ARMS]
    with pytest.raises(R1V2Error, match="unknown arm\\(s\\) nope; known: sft, mpo_sampled"):
        resolve(DemoConfig, None, [("arms", ["nope"])])


def test_a_finished_arm_trained_otherwise_is_not_reused(tmp_path):
    def demo(folder):
        cfg = resolve(DemoConfig, None, [("out", str(tmp_path / folder))])
        return cfg, model_path(cfg, "assembled")

    cfg, start = demo("demo")
    recorded = to_dict(stage_config(cfg, MAIN[0], start))
    scores = {"accuracy": 0.5, "hallucination_rate": 0.1, "n": 500}
    write_result(tmp_path / "demo", "mpo", {**scores, "config": recorded})
    check_unchanged(cfg, MAIN[0], start)  # the same settings: reused
    moved, moved_start = demo("moved")  # the same folder moved whole: the same runs
    write_result(tmp_path / "moved", "mpo", {**scores, "config": recorded})
    check_unchanged(moved, MAIN[0], moved_start)
    recorded["loss"]["beta"] = 0.1
    recorded["data"] = str(tmp_path / "demo" / "toy" / "data" / "train")
    write_result(tmp_path / "demo", "mpo", {**scores, "config": recorded})
    with pytest.raises(R1V2Error) as e:
        check_unchanged(cfg, MAIN[0], start)
    assert str(e.value) == (
        f"{tmp_path / 'demo' / 'results' / 'mpo.json'} was trained with other settings: data "
        f"('{tmp_path}/demo/toy/data/train' -> '{tmp_path}/demo/data/pairs'), loss.beta "
        f"(0.1 -> 0.01); give another --out, or remove that file and "
        f"{tmp_path / 'demo' / 'runs' / 'mpo'} (and those of the arms that start from it: grpo, "
        "grpo_nossb, grpo_rule, late_ssb, late_nossb, late_uniform, grpo_adapter, grpo_vision) "
        "to train 'mpo' again"
    )
    write_result(tmp_path / "demo", "mpo", scores)  # no config recorded: reused
    check_unchanged(cfg, MAIN[0], start)


def test_training_stats_from_hand_made_rows():
    rows = [{"step": 0, "probe_accuracy": 0.2}]
    for step in range(1, 11):
        rows.append(
            {
                "step": step,
                "reward_mean": float(step),
                "effective_ratio": 0.5 if step <= 4 else 0.8,
                "effective_ratio_before_replay": 0.5,
            }
        )
    rows[5]["probe_accuracy"] = 0.4
    s = training_stats(rows)
    assert s["steps"] == 10
    assert s["reward_first"] == 1.0 and s["reward_last"] == 10.0  # a tenth of 10 steps: one
    assert s["effective_ratio"] == pytest.approx((4 * 0.5 + 6 * 0.8) / 10)
    assert s["steps_below_0.6"] == 4
    assert s["effective_ratio_before_replay"] == 0.5
    assert s["probe_accuracy_max"] == 0.4
    assert s["guard_fired"] == 0.0
    assert "replayed_advantage_mean" not in s  # not logged (runs of earlier versions)


def test_offline_and_sampled_mpo_pairs_are_told_apart():
    """MPO marks a round of offline pairs (read, not sampled and scored) ``offline``. A
    sampled round that kept no pair has no score gap, as offline rounds have none, and still
    does not make a run offline."""
    offline = [
        {"step": s, "epoch": 1, "pairs_built": 16, "pairs_kept": 16, "offline": 1.0} for s in (1, 2)
    ]
    sampled = [
        {"step": 1, "epoch": 1, "pairs_built": 4, "pairs_kept": 0, "score_gap_mean": None},
        {"step": 2, "epoch": 1, "pairs_built": 5, "pairs_kept": 3, "score_gap_mean": 1.5},
    ]
    assert pairs_text(training_stats(offline)) == "32 offline pairs in 2 steps"
    assert pairs_text(training_stats(sampled)) == "3 pairs kept in 2 rounds"
    assert pairs_text(training_stats(sampled[:1])) == "0 pairs kept in 1 rounds"


def test_the_replays_mean_advantage():
    """Three steps replay 2, 0 and 3 samples whose advantages sum to -1.5, 0 and +0.5: the mean
    per replayed sample is -1 / 5, and the late-pool line says which side the draws favoured."""
    rows = [
        {"step": s, "replayed": n, "replayed_advantage_sum": a}
        for s, n, a in ((1, 2, -1.5), (2, 0, 0.0), (3, 3, 0.5))
    ]
    s = training_stats(rows)
    assert s["replayed"] == 5 and s["replayed_advantage_mean"] == pytest.approx(-0.2)
    note = replay_note(s)
    assert note.startswith(" With SSB, 5 samples were replayed at a mean advantage of -0.20")
    assert "below their group" in note
    assert "above their group" in replay_note(training_stats(rows[2:]))
    assert replay_note(training_stats(rows[1:2])) == ""  # nothing replayed
    even = [{"step": 1, "replayed": 4, "replayed_advantage_sum": 0.1}]
    note = replay_note(training_stats(even), "with uniform replays")
    assert note.startswith(" With uniform replays, 4 samples") and "about 0" in note


def test_report_says_when_the_guard_fired():
    """The trainers log the guard's decision as ``guard_event``; the report says what the
    guard did (the stage's ``guard.action``) and at which step."""
    rows = [{"step": 0, "probe_accuracy": 0.5}, {"step": 1, "reward_mean": 1.0}]
    rows.append({"step": 2, "probe_accuracy": 0.4, "guard_event": "hallucination guard ..."})
    s = training_stats(rows)
    assert (s["guard_fired"], s["guard_step"]) == (1.0, 2.0)
    rollback = {"config": {"guard": {"action": "rollback"}}}
    assert guard_note(s, rollback) == "guard rolled back the run at step 2"
    stop = {"config": {"guard": {"action": "stop"}}}
    assert guard_note(s, stop) == "guard stopped the run at step 2"
    assert guard_note(training_stats(rows[:2]), rollback) is None


def test_mpo_stats_count_one_row_per_round():
    rows = [
        {"step": 1, "epoch": 1, "pairs_kept": 3, "pairs_built": 8, "reward_accuracy": 0.5},
        {"step": 2, "epoch": 2, "pairs_kept": 3, "pairs_built": 8, "reward_accuracy": 0.6},
        {"step": 3, "epoch": 1, "pairs_kept": 5, "pairs_built": 9, "reward_accuracy": 0.7},
    ]
    s = training_stats(rows)
    assert (s["rounds"], s["pairs_kept"], s["pairs_built"]) == (2, 8, 17)
    assert s["reward_accuracy"] == pytest.approx(0.6)


def test_rollouts_to_reach_the_first_probe_at_the_target():
    rows = [
        {"step": 0, "probe_accuracy": 0.5},
        {"step": 10, "probe_accuracy": 0.55},
        {"step": 20, "probe_accuracy": 0.7},
        {"step": 30, "probe_accuracy": 0.65},
    ]
    assert rollouts_to_reach(rows, 0.6, per_step=64) == 20 * 64
    assert rollouts_to_reach(rows, 0.9, per_step=64) is None


def _fake_demo(
    folder: Path, acc: float, halluc: float, rm: float, shapes: float | None = None
) -> Path:
    """Stage results as the demo writes them; ``shapes``: the assembled model's image-token
    error on cells with a shape (0.1 on empty ones), each later stage 0.1 more on both."""
    write_result(folder, "toy", {"toy": str(folder / "toy"), "rm_accuracy_hallucinated": rm})
    for name, shift in (("assembled", 0.0), ("mpo", 0.1), ("grpo", 0.2)):
        result = {"accuracy": acc + shift, "hallucination_rate": halluc - shift, "n": 500}
        if shapes is not None:
            result["alignment"] = {
                "cells": 3200,
                "object_error": shapes + shift,
                "empty_error": 0.1 + shift,
                "nearest_word_accuracy": 1.0 - shift,
            }
        write_result(folder, name, result)
    return folder


def test_seed_summary_is_mean_and_sample_std(tmp_path):
    folders = [
        _fake_demo(tmp_path / "a", 0.30, 0.80, 0.95, shapes=0.5),
        _fake_demo(tmp_path / "b", 0.40, 0.70, 0.91, shapes=0.6),
    ]
    table = "\n".join(seed_summary(folders))
    # assembled: mean 35%, sample std of (30, 40) = 7.07%; grpo: 55% +- 7.1%; image-token
    # errors: shapes (0.5, 0.6) -> 0.55 +- 0.07, empty cells 0.1 on both -> 0.10 +- 0.00
    row = "| assembled (vision + adapter + LM) | 35.0% +- 7.1% | 75.0% +- 7.1% |"
    assert f"{row} 0.55 +- 0.07 / 0.10 +- 0.00 | 2 |" in table
    assert "| 55.0% +- 7.1% | 55.0% +- 7.1% | 0.75 +- 0.07 / 0.30 +- 0.00 | 2 |" in table
    assert "93.0% +- 2.8% (min 91.0%)" in table
    # A seed measured before image tokens were: no mean over the others alone.
    folders.append(_fake_demo(tmp_path / "c", 0.35, 0.75, 0.93))
    assert "| 35.0% +- 5.0% | 75.0% +- 5.0% | - | 3 |" in "\n".join(seed_summary(folders))


def test_group_accuracy_by_hand():
    """Five samples: two numeric at level 1 (right, wrong), a numeric at level 3 that cannot
    be graded, two multiple choice at level 3 (right, right)."""
    from types import SimpleNamespace as S

    samples = [S(kind=k, metadata={"level": lv}) for k, lv in
               [("math", 1), ("math", 1), ("math", 3), ("choice", 3), ("choice", 3)]]  # fmt: skip
    got = group_accuracy(samples, [1.0, 0.0, None, 1.0, 1.0])
    assert got == {"math": 0.5, "choice": 1.0, "level 1": 0.5, "level 3": 1.0}


def test_group_table_is_one_value_or_mean_and_sample_std():
    one = {"groups": {"math": 0.9, "choice": 0.3, "level 1": 0.5, "level 3": 0.2}}
    other = {"groups": {"math": 0.7, "choice": 0.5, "level 1": 0.7}}
    lines = group_table([("MPO", [one]), ("GRPO", [other, other]), ("old", [{"accuracy": 1}])])
    text = "\n".join(lines)
    # levels 2 and 4: no stage has them, no column; level 3: one stage, "-" for the other
    assert "| stage | numeric | multiple choice | level 1 | level 3 |" in text
    assert "| MPO | 90.0% | 30.0% | 50.0% | 20.0% |" in text
    lines = group_table([("GRPO", [one, other])])
    # (0.9, 0.7): 80.0% +- 14.1%; (0.3, 0.5): 40.0% +- 14.1%; (0.5, 0.7): 60.0% +- 14.1%
    assert "| GRPO | 80.0% +- 14.1% | 40.0% +- 14.1% | 60.0% +- 14.1% | 20.0% |" in (
        "\n".join(lines)
    )
    assert "old" not in text  # a result from before the groups were measured
    assert group_table([("old", [{"accuracy": 1}])]) == []


def test_report_numbers_are_the_results_and_the_metrics(tmp_path):
    out = _fake_demo(tmp_path / "demo", 0.25, 0.75, 0.93, shapes=0.5)
    run = out / "runs" / "grpo"
    run.mkdir(parents=True)
    rows = [{"step": s, "reward_mean": 1.0 + s / 10, "effective_ratio": 0.7} for s in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = write_report(out)
    text = (out / "report.md").read_text()
    assert "| MPO + GRPO (final model) | 45.0% | 55.0% | 0.70 / 0.30 | 500 |" in text
    assert "first 200 held-out images (3200 cells;" in text
    assert "among the cell words, stage by stage: 100.0%, 90.0%, 80.0%." in text
    assert "reward 1.100 -> 1.200" in text and "effective ratio 0.700" in text
    assert "93.0% against hallucinated" in text
    assert all(p.is_file() for p in paths)
    assert "<table>" in (out / "report.html").read_text()


def test_to_html_escapes_and_keeps_tables():
    page = to_html(["# title", "", "| a | b |", "|---|---|", "| <x> | 2 |", "    cmd --x"])
    assert "<h1>title</h1>" in page and "<td>&lt;x&gt;</td>" in page
    assert "<pre>cmd --x</pre>" in page


# ---- end to end ------------------------------------------------------------------------------


def _demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "r1v2", "demo", *args, "--progress", "false"],
        capture_output=True,
        text=True,
        timeout=900,
    )


def _table_row(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.mark.slow
def test_demo_fast_end_to_end(tmp_path):
    out = tmp_path / "demo"
    done = _demo("--fast", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = (out / "report.md").read_text()
    results = {p.stem: json.loads(p.read_text()) for p in (out / "results").glob("*.json")}
    assert set(results) == {"toy", "data", "assembled", "mpo", "grpo", "model"}  # model: its copy

    # MPO trains on the reference pairs of levels 1-2, GRPO on the level 3-4 prompts (answers
    # only), each row as the toy wrote it, its images read where the toy drew them.
    def rows(path):
        return [json.loads(line) for line in path.read_text().splitlines()]

    pairs, pool = rows(out / "data/pairs/pairs.jsonl"), rows(out / "data/pool/samples.jsonl")
    toy_pairs, toy_train = (
        rows(out / "toy/data/pairs/pairs.jsonl"),
        rows(out / "toy/data/train/samples.jsonl"),
    )
    assert [r["id"] for r in pairs] == [r["id"] for r in toy_pairs if r["metadata"]["level"] <= 2]
    assert [r["id"] for r in pool] == [r["id"] for r in toy_train if r["metadata"]["level"] >= 3]
    assert {r["metadata"]["level"] for r in toy_train} == {1, 2, 3, 4}
    assert results["data"]["pairs"] == len(pairs) and results["data"]["pool"] == len(pool)
    assert pool[0]["answer"] == next(r for r in toy_train if r["id"] == pool[0]["id"])["answer"]
    for folder, row in (("pairs", pairs[0]), ("pool", pool[0])):
        assert (out / "data" / folder / row["images"][0]).resolve() == (
            out / "toy/data/train/images" / f"{row['id']}.png"
        )
    assert results["grpo"]["config"]["data"] == str(out / "data" / "pool")
    assert f"Training data: MPO on {len(pairs)} reference pairs" in report

    # The table is the stages' evaluations; the training lines are the runs' own metrics.
    for name, label in (
        ("assembled", "assembled (vision + adapter + LM)"),
        ("grpo", "MPO + GRPO (final model)"),
    ):
        row = _table_row(report, label)
        assert row[1] == f"{results[name]['accuracy']:.1%}"
        assert row[2] == f"{results[name]['hallucination_rate']:.1%}"
        tokens = results[name]["alignment"]  # the first 40 held-out images' 640 cells
        assert tokens["cells"] == 640 and 0 <= tokens["nearest_word_accuracy"] <= 1
        assert row[3] == f"{tokens['object_error']:.2f} / {tokens['empty_error']:.2f}"
    mpo_rows = [json.loads(line) for line in (out / "runs/mpo/metrics.jsonl").open()]
    kept = sum(r["pairs_kept"] for r in mpo_rows if r.get("epoch") == 1)
    assert f"{kept:.0f} offline pairs in 2 steps" in report  # read from data/pairs, 8 a step
    grpo_rows = [json.loads(line) for line in (out / "runs/grpo/metrics.jsonl").open()]
    ratio = [r["effective_ratio"] for r in grpo_rows if "effective_ratio" in r]
    assert f"effective ratio {sum(ratio) / len(ratio):.3f}" in report
    assert (out / "plots" / "stages.png").is_file()
    groups = results["grpo"]["groups"]  # accuracy by kind and level, in the report's table
    row = _table_row(report.split("by question kind")[1], "MPO + GRPO (final model)")
    assert row[1:3] == [f"{groups[k]:.1%}" if k in groups else "-" for k in ("math", "choice")]

    # The final model is an ordinary checkpoint with the GRPO run's final weights.
    assert (out / "model" / "config.json").is_file()
    final = (out / "runs/grpo/final/model.safetensors").read_bytes()
    assert (out / "model" / "model.safetensors").read_bytes() == final

    # A re-run skips every stage; a stage whose result was lost (a kill after training)
    # resumes from its checkpoints to the same evaluation.
    lost = results["grpo"]
    (out / "results" / "grpo.json").unlink()
    again = _demo("--fast", "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(re.findall(r"done earlier", again.stdout)) == 4  # toy, data, assembled, mpo
    redone = json.loads((out / "results" / "grpo.json").read_text())
    assert redone["accuracy"] == lost["accuracy"]
    assert redone["hallucination_rate"] == lost["hallucination_rate"]

    # --ablations adds its arms on top of the finished main stages, and their tables; a toy
    # without its offline pairs (built before it had them) gets them, its other stages kept.
    shutil.rmtree(out / "toy" / "data" / "pairs")
    more = _demo("--fast", "--ablations", "--out", str(out))
    assert more.returncode == 0, more.stderr[-3000:]
    report = (out / "report.md").read_text()
    titles = ("SFT vs MPO", "Iterative MPO threshold", "GRPO with and without SSB", "What trains")
    for title in titles:
        assert f"### {title}" in report
    sft = json.loads((out / "results" / "sft.json").read_text())
    assert _table_row(report, sft["label"])[1] == f"{sft['accuracy']:.1%}"
    assert (out / "plots" / "thresholds.png").is_file()
    late = json.loads((out / "results" / "late_ssb.json").read_text())["config"]
    assert late["model"] == str(out / "runs/grpo/final")  # continues from the trained model
    assert late["data"] == str(out / "late_pool")  # on the prompts that model already solves
    pool = json.loads((out / "results" / "late_pool.json").read_text())
    lines = (out / "late_pool" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == pool["kept"] >= min(late["prompts_per_step"], pool["scored"])
    assert pool["kept"] == max(pool["solved"], late["prompts_per_step"])
    assert f"The pool: the {pool['kept']} of {pool['scored']} training prompts" in report
    uniform = json.loads((out / "results" / "late_uniform.json").read_text())["config"]
    assert uniform["ssb"]["alpha"] == 0.0 and late["ssb"]["alpha"] == 1.0
    assert {k: v for k, v in uniform.items() if k not in ("ssb", "output_dir")} == {
        k: v for k, v in late.items() if k not in ("ssb", "output_dir")
    }  # the same arm but for how replays are drawn
    assert "with uniform replays" in report
    # With and without SSB: the rollouts each took to the no-SSB arm's best probe (4 x 4 a step)
    nossb = [json.loads(line) for line in (out / "runs/grpo_nossb/metrics.jsonl").open()]
    probes = [r for r in nossb if r["step"] > 0 and r.get("probe_accuracy") is not None]
    best = max(probes, key=lambda r: r["probe_accuracy"])  # the first of ties: reached first
    section = report.split("### GRPO with and without SSB")[1].split("###")[0]
    assert f"Rollouts to reach a probe accuracy of {best['probe_accuracy']:.1%}" in section
    assert f"{best['step'] * 16:,} without." in section
    # The main MPO and SFT train on the toy's offline pairs, iterative MPO samples its own
    # from the training prompts, and its GRPO continues from it.
    pairs = str(out / "data" / "pairs")
    for name in ("mpo", "sft"):
        assert json.loads((out / "results" / f"{name}.json").read_text())["config"]["data"] == pairs
    assert sft["config"]["loss"]["weights"] == {"nll": 1.0}
    sampled = json.loads((out / "results" / "mpo_sampled.json").read_text())["config"]
    assert sampled["data"] == str(out / "toy" / "data" / "train")
    assert sampled["n"] == 4 and sampled["threshold"] not in (0.0, 1.0)
    after = json.loads((out / "results" / "grpo_sampled.json").read_text())["config"]
    assert after["model"] == str(out / "runs/mpo_sampled/final")
    rule = json.loads((out / "results" / "grpo_rule.json").read_text())["config"]
    assert rule["reward"]["weights"] == {"accuracy": 10.0, "rm": 1.0, "format": 1.0}
    assert "### An over-weighted rule reward, and the hallucination guard" in report
    assert "### MPO's pairs: offline reference pairs vs sampled and scored" in report

    # A toy build with other settings is never rebuilt over: one line, exit code 2.
    other = _demo("--out", str(tmp_path / "other"), "--toy", str(out / "toy"))
    assert other.returncode == 2
    assert "Traceback" not in other.stderr and len(other.stderr.strip().splitlines()) == 1
    assert "holds a toy build with other settings" in other.stderr
    assert not math.isnan(results["grpo"]["accuracy"])
