"""The demo's report: ``OUT/report.md``, ``OUT/report.html`` and ``OUT/plots/*.png``.

Every number comes from the run's own files: ``OUT/results/*.json`` (each stage's evaluation
on the held-out set) and each training run's ``metrics.jsonl``. :func:`seed_summary` puts
several demo folders (one per seed) side by side as mean +- std.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from pathlib import Path
from typing import Any

from r1v2.data.synthetic.scene import GRID
from r1v2.errors import R1V2Error
from r1v2.train.metrics import read_metrics

STAGE_ROWS = (("assembled", "assembled (vision + adapter + LM)"),) + tuple(
    (name, label)
    for name, label in (
        ("mpo", "MPO (offline pairs)"),
        ("grpo", "MPO + GRPO (final model)"),
    )
)


NUMBER = (int, float)
# The fields a stage's result must have, by stage name; other stages are evaluations.
FIELDS: dict[str, dict[str, Any]] = {
    "toy": {"toy": str},
    "data": {"pairs": int, "pool": int},
    "model": {"model": str, "digest": str},
    "late_pool": dict.fromkeys(
        ("scored", "kept", "solved", "solved_share", "tied", "mean_accuracy", "group_size"),
        NUMBER,
    ),
}
EVALUATION = {"accuracy": NUMBER, "hallucination_rate": NUMBER, "n": int}
SECTIONS = ("config", "inputs", "outputs", "alignment")  # each a JSON object where present


def check_result(path: Path, result: Any) -> dict[str, Any]:
    """``result`` read from ``path`` (``results/NAME.json``) if it is a stage's result: a JSON
    object with the fields of its stage; else one line naming the file (and field)."""
    fix = "remove it to run the stage again"
    if not isinstance(result, dict):
        raise R1V2Error(
            f"{path}: not a demo stage result (a JSON object expected, got "
            f"{type(result).__name__}); {fix}"
        )
    for key, kind in FIELDS.get(path.stem, EVALUATION).items():
        if key not in result:
            raise R1V2Error(f"{path}: field '{key}' missing; {fix}")
        if not isinstance(result[key], kind) or isinstance(result[key], bool):
            raise R1V2Error(f"{path}: field '{key}' is {result[key]!r}, of the wrong type; {fix}")
    for key in SECTIONS:
        if key in result and not isinstance(result[key], dict):
            raise R1V2Error(f"{path}: field '{key}' is not a JSON object; {fix}")
    return result


def load_results(out: Path) -> dict[str, dict[str, Any]]:
    """Every stage result of a demo folder, by stage name (checked: :func:`check_result`)."""
    results = {}
    for path in sorted((out / "results").glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise R1V2Error(
                f"{path}: not valid JSON ({e}); remove it to run the stage again"
            ) from e
        results[path.stem] = check_result(path, data)
    return results


def metrics_of(out: Path, name: str) -> list[dict[str, Any]]:
    path = out / "runs" / name / "metrics.jsonl"
    return read_metrics(path) if path.is_file() else []


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def training_stats(rows: list[dict[str, Any]]) -> dict[str, float]:
    """What a run's metrics say: steps, mean reward (first and last tenth), effective ratio
    (mean, before replay, steps below 0.6), the replays and their mean advantage, MPO pairs
    kept and reward accuracy, probes."""
    steps = [r for r in rows if r["step"] > 0]
    stats: dict[str, float] = {"steps": float(len(steps))}
    reward = [r["reward_mean"] for r in steps if r.get("reward_mean") is not None]
    if reward:
        tenth = max(1, len(reward) // 10)
        stats["reward_first"] = _mean(reward[:tenth])
        stats["reward_last"] = _mean(reward[-tenth:])
    ratio = [r["effective_ratio"] for r in steps if r.get("effective_ratio") is not None]
    if ratio:
        stats["effective_ratio"] = _mean(ratio)
        stats["steps_below_0.6"] = float(sum(v < 0.6 for v in ratio))
        before = [r.get("effective_ratio_before_replay") for r in steps]
        before = [v for v in before if v is not None]
        if before:
            stats["effective_ratio_before_replay"] = _mean(before)
    replayed = sum(r.get("replayed") or 0 for r in steps)
    pushed = [r["replayed_advantage_sum"] for r in steps if "replayed_advantage_sum" in r]
    if replayed and pushed:  # runs of earlier versions did not log the replays' advantages
        stats["replayed"] = float(replayed)
        stats["replayed_advantage_mean"] = sum(pushed) / replayed
    rounds = [r for r in steps if r.get("epoch") == 1 and "pairs_kept" in r]
    if rounds:
        stats["rounds"] = float(len(rounds))
        stats["pairs_kept"] = float(sum(r["pairs_kept"] or 0 for r in rounds))
        stats["pairs_built"] = float(sum(r.get("pairs_built") or 0 for r in rounds))
        stats["offline"] = float(any(r.get("offline") for r in rounds))
        racc = [r["reward_accuracy"] for r in steps if r.get("reward_accuracy") is not None]
        if racc:
            stats["reward_accuracy"] = _mean(racc)
    probes = [r for r in rows if r.get("probe_accuracy") is not None]
    if probes:
        stats["probe_accuracy_max"] = max(r["probe_accuracy"] for r in probes)
    # the trainers log the guard's decision as ``guard_event`` on the probe row where it fired
    guard = [r for r in rows if r.get("guard_event")]
    stats["guard_fired"] = float(bool(guard))
    if guard:
        stats["guard_step"] = float(guard[0]["step"])
    return stats


def guard_note(stats: dict[str, float], result: dict[str, Any]) -> str | None:
    """``guard rolled back the run at step N`` (or ``stopped``, by the stage's
    ``guard.action``) when the hallucination guard fired, else None."""
    if not stats.get("guard_fired"):
        return None
    action = result.get("config", {}).get("guard", {}).get("action")
    did = "rolled back" if action == "rollback" else "stopped"
    return f"guard {did} the run at step {stats['guard_step']:.0f}"


def _schedule(result: dict[str, Any]) -> str:
    """`` at lr 0.0001 (10 warmup steps, cosine decay)`` from a stage result's config."""
    optim = result.get("config", {}).get("optim")
    if not isinstance(optim, dict) or "lr" not in optim:
        return ""
    decay = {"constant": "constant", "linear": "linear decay", "cosine": "cosine decay"}
    schedule = decay.get(optim.get("schedule"), str(optim.get("schedule")))
    warmup = optim.get("warmup_steps") or 0
    return f" at lr {optim['lr']:g} ({f'{warmup} warmup steps, ' if warmup else ''}{schedule})"


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


ALIGNMENT_HEADER = "image-token error: shapes / empty cells"


def alignment_cell(result: dict[str, Any]) -> str:
    """``0.57 / 0.03``: a stage's mean relative image-token error on cells holding a shape and
    on empty ones (``-`` for results written before it was measured)."""
    a = result.get("alignment")
    return (
        "-" if a is None else f"{_num(a['object_error'], '.2f')} / {_num(a['empty_error'], '.2f')}"
    )


def stage_table(results: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for name, label in STAGE_ROWS:
        r = results.get(name)
        if r is None:
            continue
        rows.append(
            [
                label,
                _pct(r["accuracy"]),
                _pct(r["hallucination_rate"]),
                alignment_cell(r),
                str(r["n"]),
            ]
        )
    header = ["stage", "accuracy", "hallucination rate", ALIGNMENT_HEADER, "held-out samples"]
    return _table(header, rows)


GROUP_HEADER = ["numeric", "multiple choice", "level 1", "level 2", "level 3", "level 4"]
GROUP_KEYS = ("math", "choice", "level 1", "level 2", "level 3", "level 4")


def group_table(rows: list[tuple[str, list[dict[str, Any]]]]) -> list[str]:
    """Held-out accuracy per question kind and level: one row per stage, each cell the value
    of one result or the mean +- std over several (seeds); stages without groups, and groups
    no stage has (level 4 of a toy built without it), are left out."""
    body = []
    for label, results in rows:
        groups = [r["groups"] for r in results if isinstance(r.get("groups"), dict)]
        if not groups:
            continue
        cells = []
        for key in GROUP_KEYS:
            values = [g[key] for g in groups if key in g]
            one = len(groups) == 1
            cells.append(_pct(values[0]) if one and values else mean_std(values) if values else "-")
        body.append([label, *cells])
    if not body:
        return []
    kept = [0] + [i + 1 for i in range(len(GROUP_KEYS)) if any(row[i + 1] != "-" for row in body)]
    header = ["stage", *GROUP_HEADER]
    return [
        "Held-out accuracy by question kind (a number / a letter among options) and by level:",
        "",
        *_table([header[i] for i in kept], [[row[i] for i in kept] for row in body]),
        "",
    ]


def alignment_note(results: dict[str, dict[str, Any]]) -> list[str]:
    """What the image-token column measures, with the cells and nearest-word accuracies."""
    measured = [results[n]["alignment"] for n, _ in STAGE_ROWS if "alignment" in results.get(n, {})]
    if not measured:
        return []
    nearest = ", ".join(f"{a['nearest_word_accuracy']:.1%}" for a in measured)
    cells = measured[0]["cells"]
    return [
        f"Image-token error: how far each cell's image token lies from the LM's input embedding "
        f"of the word that cell holds (`redcircle`, `empty`), as ||t - e(w)|| / ||e(w)||, "
        f"averaged over the cells of the first {cells // GRID**2} held-out images ({cells} "
        f"cells; 0: the LM reads the very words it learned from). Tokens nearest their own "
        f"word among the cell words, stage by stage: {nearest}.",
        "",
    ]


def arm_table(out: Path, results: dict[str, dict[str, Any]], names: list[str]) -> list[str]:
    rows = []
    for name in names:
        r = results.get(name)
        if r is None:
            continue
        s = training_stats(metrics_of(out, name))
        extra = (
            pairs_text(s)
            if "pairs_kept" in s
            else f"effective ratio {_num(s.get('effective_ratio'), '.2f')}"
        )
        note = guard_note(s, r)
        stable = f"no: {note}" if note else "yes"
        rows.append(
            [
                r.get("label", name),
                _pct(r["accuracy"]),
                _pct(r["hallucination_rate"]),
                alignment_cell(r),
                extra,
                stable,
            ]
        )
    header = ["arm", "accuracy", "hallucination rate", ALIGNMENT_HEADER, "training", "stable"]
    return _table(header, rows)


def pairs_text(stats: dict[str, float]) -> str:
    """An MPO run's pairs: offline pairs read per step, or sampled pairs kept per round."""
    if stats.get("offline"):
        return f"{stats['pairs_kept']:.0f} offline pairs in {stats['rounds']:.0f} steps"
    return f"{stats['pairs_kept']:.0f} pairs kept in {stats['rounds']:.0f} rounds"


def rollouts_to_reach(rows: list[dict[str, Any]], target: float, per_step: int) -> int | None:
    """Rollouts generated until a probe after the first step reached ``target`` (None: never;
    the step-0 probe is the starting model, reached with no rollouts of this run)."""
    for r in rows:
        if r["step"] > 0 and r.get("probe_accuracy") is not None and r["probe_accuracy"] >= target:
            return int(r["step"]) * per_step
    return None


# ---- plots -----------------------------------------------------------------------------------


def _figure(width: float = 6.0, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(str(path))
    return path


def plot_curves(out: Path, key: str, runs: dict[str, str], title: str, path: Path) -> Path | None:
    """One metric of several runs against the step (rolling mean over 10 steps)."""
    from r1v2.train.plot import rolling_mean, series

    fig = _figure()
    ax = fig.subplots()
    drawn = False
    for name, label in runs.items():
        steps, values = series(metrics_of(out, name), key)
        if steps:
            drawn = True
            ax.plot(steps, rolling_mean(values, 10), label=label)
    if not drawn:
        return None
    if key == "effective_ratio":
        ax.axhline(0.6, color="grey", linestyle=":", linewidth=1)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_stages(results: dict[str, dict[str, Any]], path: Path) -> Path | None:
    rows = [(label, results[n]) for n, label in STAGE_ROWS if n in results]
    if not rows:
        return None
    fig = _figure()
    ax = fig.subplots()
    xs = range(len(rows))
    width = 0.38
    ax.bar([x - width / 2 for x in xs], [r["accuracy"] for _, r in rows], width, label="accuracy")
    ax.bar(
        [x + width / 2 for x in xs],
        [r["hallucination_rate"] for _, r in rows],
        width,
        label="hallucination rate",
    )
    ax.set_xticks(list(xs), [label.split(" (")[0] for label, _ in rows], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("held-out accuracy and hallucination rate per stage", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_thresholds(out: Path, results: dict[str, dict[str, Any]], path: Path) -> Path | None:
    points = []
    for name in ("mpo_t0", "mpo_sampled", "mpo_t1"):
        if name not in results:
            continue
        threshold = _setting(results, name, "threshold")
        if threshold is None:  # a result written without its config
            continue
        stats = training_stats(metrics_of(out, name))
        points.append((threshold, stats.get("pairs_kept", 0.0), results[name]))
    if len(points) < 2:
        return None
    points.sort(key=lambda p: p[0])
    fig = _figure()
    ax = fig.subplots()
    ax.bar([str(t) for t, _, _ in points], [k for _, k, _ in points], color="C2")
    ax.set_xlabel("threshold (reward-model score gap)")
    ax.set_ylabel("pairs kept (all rounds)")
    ax.set_title("MPO pairs kept per threshold", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _setting(results: dict[str, dict[str, Any]], name: str, key: str) -> Any:
    """A training arm's config value, as the demo recorded it in its result."""
    return results.get(name, {}).get("config", {}).get(key)


# ---- the report ------------------------------------------------------------------------------


def split_lines(split: dict[str, Any] | None) -> list[str]:
    """What each training stage learns from (the demo's ``data`` stage)."""
    if not split:
        return []
    levels = split.get("inputs", {})
    named = lambda key: ", ".join(map(str, levels.get(key, []))) or "?"  # noqa: E731
    return [
        f"Training data: MPO on {split['pairs']} reference pairs (a faithful trace over a "
        f"hallucinated one) of the prompts of levels {named('pair_levels')}; GRPO on "
        f"{split['pool']} prompts of levels {named('pool_levels')}, with their answers only "
        "(no traces), the verifiable pool of the harder questions.",
        "",
    ]


def report_lines(out: Path, results: dict[str, dict[str, Any]], plots: list[Path]) -> list[str]:
    toy = results.get("toy", {})
    lines = ["# r1v2 demo report", ""]
    total = sum(r.get("seconds", 0.0) for r in results.values())
    lines += [
        f"Toy world `{toy.get('toy', '?')}`; stages ran for {total:.0f} s in all (this "
        "folder's runs, re-runs excluded). Every number below is read from "
        "`results/*.json` and the training runs' `runs/*/metrics.jsonl`.",
        "",
    ]
    if toy.get("rm_accuracy_hallucinated") is not None:
        lines += [
            f"Reward model, held-out pairwise accuracy: "
            f"{_pct(toy['rm_accuracy_hallucinated'])} against hallucinated responses, "
            f"{_pct(toy.get('rm_accuracy_repetitive'))} against repetitive ones.",
            "",
        ]
    lines += split_lines(results.get("data"))
    lines += ["## Accuracy and hallucination per stage (greedy, held-out)", ""]
    lines += stage_table(results) + [""]
    lines += group_table([(label, [results[n]]) for n, label in STAGE_ROWS if n in results])
    lines += alignment_note(results)
    for name, title in (("mpo", "MPO"), ("grpo", "GRPO")):
        s = training_stats(metrics_of(out, name))
        if s["steps"] == 0:
            continue
        parts = [f"{s['steps']:.0f} steps" + _schedule(results.get(name, {}))]
        if "pairs_kept" in s:
            parts.append(pairs_text(s))
        if "reward_accuracy" in s:
            parts.append(f"mean reward accuracy (chosen over rejected) {s['reward_accuracy']:.2f}")
        if "reward_first" in s:
            parts.append(f"reward {s['reward_first']:.3f} -> {s['reward_last']:.3f}")
        if "effective_ratio" in s:
            parts.append(
                f"effective ratio {s['effective_ratio']:.3f} (before replay "
                f"{_num(s.get('effective_ratio_before_replay'))}; "
                f"{s['steps_below_0.6']:.0f} steps below 0.6)"
            )
        note = guard_note(s, results.get(name, {}))
        if note:
            parts.append(f"the hallucination {note}")
        lines += [f"- {title}: " + "; ".join(parts)]
    lines += [""]
    ablation_groups = (
        ("SFT vs MPO (same offline pairs)", ["mpo", "sft"]),
        (
            "MPO's pairs: offline reference pairs vs sampled and scored by the reward model",
            ["mpo", "mpo_sampled"],
        ),
        ("SFT vs iterative MPO (same pair builder)", ["mpo_sampled", "sft_sampled"]),
        ("Iterative MPO threshold", ["mpo_t0", "mpo_sampled", "mpo_t1"]),
        ("GRPO after each MPO", ["grpo", "grpo_sampled"]),
        ("GRPO with and without SSB", ["grpo", "grpo_nossb"]),
        ("What trains in GRPO", ["grpo", "grpo_adapter", "grpo_vision"]),
        ("An over-weighted rule reward, and the hallucination guard", ["grpo", "grpo_rule"]),
        ("GRPO from MPO vs from the assembled model", ["grpo", "grpo_assembled"]),
        (
            "SSB where advantages vanish (continuing from the final model)",
            ["late_ssb", "late_uniform", "late_nossb"],
        ),
    )
    arms = {n for _, names in ablation_groups for n in names} - {"mpo", "grpo"}
    if any(n in results for n in arms):
        lines += [
            "## Ablations (each arm on the budget of its kind: MPO on offline pairs, iterative "
            "MPO and GRPO each as in the main run; see the training column)",
            "",
        ]
        for title, names in ablation_groups:
            if sum(n in results for n in names) < 2:
                continue
            lines += [f"### {title}", ""] + arm_table(out, results, names) + [""]
            if names == ["grpo", "grpo_nossb"]:
                reached = reach_sentence(out, results, {"grpo": "with SSB"}, "grpo_nossb")
                lines += [reached, ""] if reached else []
        lines += late_lines(out, results)
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in plots] + [""]
    model = out / "model"
    test = Path(toy.get("toy", out / "toy")) / "data" / "test"
    lines += [
        "## The final model",
        "",
        f"`{model}` is an ordinary transformers checkpoint (InternVL). Evaluate it on the "
        "held-out set, and ask it a question about an image:",
        "",
        f"    r1v2 eval --model {model} --bench synth={test} --runs 1 --temperature 0 "
        f"--out {out / 'eval'}",
        f'    r1v2 chat --model {model} --image {test}/{first_image(test)} "{first_question(test)}"',
        "",
    ]
    return lines


LATE_ARMS = {"late_ssb": "with SSB", "late_uniform": "with uniform replays"}


def late_lines(out: Path, results: dict[str, dict[str, Any]]) -> list[str]:
    """Rollouts each SSB arm needed to reach the no-SSB arm's best probe accuracy, and the
    mean advantage of its replays."""
    if not ("late_ssb" in results and "late_nossb" in results):
        return []
    arms = [n for n in LATE_ARMS if n in results]
    reached = reach_sentence(out, results, {n: LATE_ARMS[n] for n in arms}, "late_nossb")
    if reached is None:
        return []
    stats = {n: training_stats(metrics_of(out, n)) for n in [*arms, "late_nossb"]}
    pool = results.get("late_pool")
    where = ""
    if pool:
        solved = (
            "that the final model solves"
            if pool["kept"] == pool["solved"]
            else f"most solved by the final model ({pool['solved']} solved"
        )
        where = (
            f"The pool: the {pool['kept']} of {pool['scored']} training prompts {solved} in "
            f">= {pool['solved_share']:.0%} of {pool['group_size']} rollouts"
            f"{'' if pool['kept'] == pool['solved'] else ')'} (mean accuracy "
            f"{pool['mean_accuracy']:.0%}; {pool['tied']} of them tied, every rollout scored "
            "alike). "
        )
    ratios = "; ".join(
        f"{LATE_ARMS[n]} {_num(stats[n].get('effective_ratio'), '.2f')} after replay" for n in arms
    )
    notes = "".join(replay_note(stats[n], LATE_ARMS[n]) for n in arms)
    return [
        f"{where}Vanishing advantages: effective ratio before replay "
        f"{_num(stats['late_nossb'].get('effective_ratio'), '.2f')} without SSB; {ratios}. "
        f"{reached}{notes}",
        "",
    ]


def reach_sentence(
    out: Path, results: dict[str, dict[str, Any]], arms: dict[str, str], base: str
) -> str | None:
    """``Rollouts to reach a probe accuracy of X (the no-SSB arm's best): N with SSB, M
    without.``: for each of ``arms`` (name -> label) and the no-SSB arm ``base``, the
    rollouts until a probe reached the best one ``base`` had after its start (None when a
    figure is missing)."""
    rows = {n: metrics_of(out, n) for n in [*arms, base]}
    first = next(iter(arms))
    prompts = _setting(results, first, "prompts_per_step")
    group = _setting(results, first, "group_size")
    target = training_stats([r for r in rows[base] if r["step"] > 0]).get("probe_accuracy_max")
    if target is None or not (prompts and group):
        return None

    def reach(name: str) -> str:
        n = rollouts_to_reach(rows[name], target, prompts * group)
        return "not reached" if n is None else f"{n:,}"

    reached = ", ".join(f"{reach(n)} {label}" for n, label in arms.items())
    return (
        f"Rollouts to reach a probe accuracy of {target:.1%} (the no-SSB arm's best): "
        f"{reached}, {reach(base)} without."
    )


def replay_note(stats: dict[str, float], who: str = "with SSB") -> str:
    """`` With SSB, N samples were replayed at a mean advantage of A ...`` when logged."""
    mean = stats.get("replayed_advantage_mean")
    if mean is None:
        return ""
    if abs(mean) < 0.05:
        why = "about 0, like a group's"
    else:
        side = "below" if mean < 0 else "above"
        why = f"a group's average 0: the replays lean to the samples scored {side} their group"
    return (
        f" {who[0].upper() + who[1:]}, {stats['replayed']:.0f} samples were replayed at a mean "
        f"advantage of {mean:+.2f} ({why})."
    )


def first_image(test: Path) -> str:
    row = _first_row(test)
    return (row.get("images") or ["images/0.png"])[0]


def first_question(test: Path) -> str:
    return _first_row(test).get("question", "how many red circles ?").replace('"', "'")


def _first_row(test: Path) -> dict[str, Any]:
    path = test / "samples.jsonl"
    if not path.is_file():
        return {}
    with path.open() as f:
        return json.loads(f.readline())


def to_html(lines: list[str]) -> str:
    """A plain HTML page of the report's markdown (tables, headings, images, code)."""
    body: list[str] = []
    table: list[str] = []

    def flush_table() -> None:
        if not table:
            return
        rows = [[c.strip() for c in r.strip("|").split("|")] for r in table if "---" not in r]
        body.append("<table>")
        for i, row in enumerate(rows):
            tag = "th" if i == 0 else "td"
            body.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row) + "</tr>")
        body.append("</table>")
        table.clear()

    for line in lines:
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1 : -1]
            body.append(f'<p><img src="{html.escape(src)}" width="600"></p>')
        elif line.startswith("    "):
            body.append(f"<pre>{html.escape(line.strip())}</pre>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    flush_table()
    style = "body{font-family:sans-serif;max-width:900px;margin:auto}td,th{padding:2px 8px}"
    return f"<!doctype html><meta charset=utf-8><style>{style}</style>\n" + "\n".join(body) + "\n"


def write_report(out: str | Path) -> list[Path]:
    """Write ``OUT/report.md``, ``OUT/report.html`` and the plots; returns their paths."""
    out = Path(out)
    results = load_results(out)
    plot_dir = out / "plots"
    candidates = [
        plot_stages(results, plot_dir / "stages.png"),
        plot_curves(
            out,
            "reward_mean",
            {"grpo": "GRPO (SSB)", "grpo_nossb": "GRPO (no SSB)"},
            "GRPO mean reward per step",
            plot_dir / "reward.png",
        ),
        plot_curves(
            out,
            "effective_ratio",
            {
                "grpo": "SSB (after replay)",
                "grpo_nossb": "no SSB",
                "late_ssb": "late, SSB",
                "late_uniform": "late, SSB uniform",
                "late_nossb": "late, no SSB",
            },
            "effective-sample ratio per step (paper: > 60% with SSB)",
            plot_dir / "effective_ratio.png",
        ),
        plot_curves(
            out,
            "probe_accuracy",
            {
                "late_ssb": "late, SSB",
                "late_uniform": "late, SSB uniform",
                "late_nossb": "late, no SSB",
            },
            "probe accuracy against steps (same rollouts per step)",
            plot_dir / "late_accuracy.png",
        ),
        plot_thresholds(out, results, plot_dir / "thresholds.png"),
    ]
    plots = [p for p in candidates if p is not None]
    lines = report_lines(out, results, plots)
    (out / "report.md").write_text("\n".join(lines))
    (out / "report.html").write_text(to_html(lines))
    return [out / "report.md", out / "report.html", *plots]


# ---- several seeds ---------------------------------------------------------------------------


def mean_std(values: list[float], fmt: str = ".1%") -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{statistics.mean(values):{fmt}} +- {statistics.stdev(values):{fmt}}"


def alignment_summary(results: list[dict[str, Any]]) -> str:
    """Mean +- std over seeds of a stage's image-token errors (shapes / empty cells); ``-``
    unless every seed measured them."""
    if not results or any("alignment" not in r for r in results):
        return "-"
    shapes = mean_std([r["alignment"]["object_error"] for r in results], ".2f")
    empty = mean_std([r["alignment"]["empty_error"] for r in results], ".2f")
    return f"{shapes} / {empty}"


def demo_seed(results: dict[str, dict[str, Any]]) -> int | None:
    """The seed a demo folder's results record (None: none records one)."""
    for result in results.values():
        for section in ("inputs", "config"):
            seed = (result.get(section) or {}).get("seed")
            if seed is not None:
                return seed
    return None


def check_distinct(folders: list[str | Path], loaded: list[dict[str, dict[str, Any]]]) -> None:
    """Refuse a folder named twice, or two folders of one seed: the +- is over seeds."""
    by_path: dict[Path, str | Path] = {}
    by_seed: dict[int, str | Path] = {}
    for folder, results in zip(folders, loaded):
        path, seed = Path(folder).resolve(), demo_seed(results)
        if path in by_path:
            raise R1V2Error(
                f"{by_path[path]} and {folder} are the same demo folder; name each seed's "
                "folder once"
            )
        if seed in by_seed:
            raise R1V2Error(
                f"{by_seed[seed]} and {folder} are both seed {seed}; two runs of one seed are "
                "not two seeds: name one folder per seed"
            )
        by_path[path] = folder
        if seed is not None:
            by_seed[seed] = folder


def seed_summary(folders: list[str | Path]) -> list[str]:
    """A table of every stage and arm over several demo folders: mean +- std (sample std)."""
    loaded = [load_results(Path(f)) for f in folders]
    check_distinct(folders, loaded)
    names = [n for n in ("assembled", "mpo", "grpo") if any(n in r for r in loaded)]
    names += sorted({n for r in loaded for n in r} - set(names) - {"toy"})
    rows, groups = [], []
    for name in names:
        have = [r[name] for r in loaded if name in r and "accuracy" in r[name]]
        if not have:
            continue
        label = have[0].get("label", dict(STAGE_ROWS).get(name, name))
        groups.append((label, have))
        rows.append(
            [
                label,
                mean_std([h["accuracy"] for h in have]),
                mean_std([h["hallucination_rate"] for h in have]),
                alignment_summary(have),
                str(len(have)),
            ]
        )
    rm = [r["toy"].get("rm_accuracy_hallucinated") for r in loaded if "toy" in r]
    rm = [v for v in rm if v is not None]
    header = ["stage", "accuracy", "hallucination rate", ALIGNMENT_HEADER, "seeds"]
    lines = _table(header, rows)
    if any(isinstance(h.get("groups"), dict) for _, have in groups for h in have):
        lines += [""] + group_table(groups)[:-1]
    if rm:
        lines += ["", f"reward model vs hallucinated responses: {mean_std(rm)} (min {min(rm):.1%})"]
    return lines
