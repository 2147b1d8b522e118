"""Reports of an evaluation: results.json, results.md (a table like the paper's Table 1), a bar
chart (results.png), per-response scores (scores.jsonl), and a side-by-side comparison of two runs.

All metrics are stored as fractions in [0, 1]; tables and the chart show percentages.
NaN (nothing could be scored) is written as null in JSON and "-" in tables.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from r1v2 import __version__
from r1v2.errors import R1V2Error


def clean_json(value: Any) -> Any:
    """Replace NaN and infinities by None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def results_document(
    benchmarks: dict[str, dict], *, model: str | None, responses: str | None, settings: dict
) -> dict:
    """The content of results.json."""
    return clean_json(
        {
            "r1v2_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": model,
            "responses": responses,
            "settings": settings,
            "benchmarks": benchmarks,
        }
    )


def pct(value: float | None, std: float | None = None, digits: int = 1) -> str:
    """``0.736, 0.004`` -> ``"73.6 ± 0.4"``; None -> ``"-"``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{100 * value:.{digits}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {100 * std:.{digits}f}"
    return text


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def system_name(doc: dict) -> str:
    """What was evaluated: the model folder's name, or the responses file's."""
    src = doc.get("model") or doc.get("responses") or "?"
    return Path(src).name or src


def tests_passed(result: dict) -> str:
    """A code benchmark's mean pass rate (the fraction of tests passed, averaged over its
    responses, ± std across runs) as a percentage; "-" for a benchmark without code."""
    if "mean_pass_rate" not in result:
        return "-"
    return pct(result["mean_pass_rate"], result.get("mean_pass_rate_std"))


def headline(doc: dict) -> tuple[list[str], list[list[str]]]:
    """The console's table: (columns, one row per benchmark). "tests passed (%)" is there only
    when a benchmark is scored by running code."""
    benches: dict[str, dict] = doc["benchmarks"]
    code = any("mean_pass_rate" in r for r in benches.values())
    columns = ["benchmark", "Pass@1 (%)", *(["tests passed (%)"] if code else [])]
    columns += ["samples", "runs", "rules unscored", "fallback"]
    rows = []
    for name, r in benches.items():
        row = [name, pct(r["pass@1"], r["pass@1_std"]), *([tests_passed(r)] if code else [])]
        row += [str(r[k]) for k in ("n_samples", "n_runs", "n_rule_unscored", "n_fallback")]
        rows.append(row)
    return columns, rows


def markdown(doc: dict) -> str:
    """results.md: the headline table, then details, categories, code (tests passed), POPE
    and hallucination."""
    benches: dict[str, dict] = doc["benchmarks"]
    names = list(benches)
    n_runs = sorted({b["n_runs"] for b in benches.values()})
    lines = ["# Evaluation results", ""]
    lines.append(f"System: `{doc.get('model') or doc.get('responses')}`  ")
    lines.append(f"Created: {doc.get('created')} with r1v2 {doc.get('r1v2_version')}")
    lines.append("")
    lines.append(
        f"Pass@1 (%), mean over {'/'.join(map(str, n_runs))} sampled run(s) ± standard "
        "deviation across runs."
    )
    lines.append("")
    lines += _table(
        ["Model", *names],
        [[system_name(doc), *(pct(benches[n]["pass@1"], benches[n]["pass@1_std"]) for n in names)]],
    )
    lines += ["", "## Details", ""]
    ks = sorted({k for b in benches.values() for k in b.get("pass@k", {}) if k != "1"}, key=int)
    rows = []
    for n in names:
        b = benches[n]
        rows.append(
            [
                n,
                pct(b["pass@1"]),
                pct(b["pass@1_std"]),
                *(pct(b.get("pass@k", {}).get(k)) for k in ks),
                str(b["n_samples"]),
                str(b["n_runs"]),
                str(b.get("n_rule_unscored", 0)),
                str(b.get("n_judged", 0)),
                str(b.get("n_unscored", 0)),
                str(b.get("n_missing", 0)),
                str(b.get("n_fallback", 0)),
            ]
        )
    lines += _table(
        [
            "Benchmark",
            "Pass@1",
            "Std",
            *(f"pass@{k}" for k in ks),
            "Samples",
            "Runs",
            "Rules unscored",
            "Judged",
            "Unscored",
            "Missing",
            "Fallback",
        ],
        rows,
    )
    lines += [
        "",
        "Rules unscored: responses the rules could not score (reference not gradable); "
        "Unscored: still unscored after the judge, counted as wrong; Missing: no response, "
        "counted as wrong; Fallback: answers read without `\\boxed` (rule-based fallback).",
    ]
    for n in names:
        cats = benches[n].get("categories")
        if cats:
            lines += ["", f"## {n} by category", ""]
            lines += _table(
                ["Category", "Pass@1", "Samples"],
                [
                    [c, pct(v["pass@1"], v["pass@1_std"]), str(v["n_samples"])]
                    for c, v in cats.items()
                ],
            )
    code = [n for n, b in benches.items() if "mean_pass_rate" in b]
    if code:
        lines += [
            "",
            "## Code: tests passed",
            "",
            "The fraction of tests passed (%), averaged over a benchmark's responses, ± std "
            "across runs; Pass@1 counts a response only when it passes every test.",
            "",
        ]
        lines += _table(
            ["Benchmark", "Tests passed (%)"], [[n, tests_passed(benches[n])] for n in code]
        )
    pope = {n: b["pope"] for n, b in benches.items() if "pope" in b}
    if pope:
        lines += ["", "## POPE", ""]
        keys = ["accuracy", "precision", "recall", "f1", "yes_ratio"]
        rows = []
        for n, p in pope.items():
            rows.append([n, *(pct(p.get(k), p.get(k + "_std")) for k in keys)])
            for c, v in p.get("categories", {}).items():
                rows.append([f"{n} / {c}", *(pct(v.get(k), v.get(k + "_std")) for k in keys)])
        lines += _table(["Benchmark", "Accuracy", "Precision", "Recall", "F1", "Yes ratio"], rows)
    hall = {n: b for n, b in benches.items() if "hallucination_rate" in b}
    if hall:
        lines += [
            "",
            "## Hallucination rate",
            "",
            "Share of responses with at least one false claim about the image.",
            "",
        ]
        lines += _table(
            ["Benchmark", "Hallucination rate (%)"],
            [
                [n, pct(b["hallucination_rate"], b.get("hallucination_rate_std"))]
                for n, b in hall.items()
            ],
        )
    return "\n".join(lines) + "\n"


def bar_chart(doc: dict, path: str | Path) -> None:
    """A PNG bar chart of Pass@1 per benchmark with the across-run standard deviation."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    benches = doc["benchmarks"]
    names = list(benches)
    values = [100 * (benches[n]["pass@1"] or 0.0) for n in names]
    errors = [100 * (benches[n]["pass@1_std"] or 0.0) for n in names]
    fig = Figure(figsize=(max(4.0, 1.2 * len(names) + 1.5), 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bars = ax.bar(names, values, yerr=errors, capsize=4, color="#4C72B0")
    ax.bar_label(
        bars, labels=[f"{v:.1f}" for v in values], label_type="center", color="white", fontsize=8
    )
    ax.set_ylabel("Pass@1 (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{system_name(doc)}")
    ax.tick_params(axis="x", labelrotation=30 if len(names) > 4 else 0)
    fig.tight_layout()
    fig.savefig(str(path))


REPORT_FILES = ("results.json", "results.md", "results.png", "scores.jsonl")
# Fields that do not change what an evaluation measures: a re-run that differs only in these
# is the same evaluation, and may rewrite its reports.
_NOT_THE_RESULT = ("out", "overwrite")


def evaluation_changes(doc: dict, other: dict) -> list[str]:
    """What makes ``other`` (a results document read from disk) another evaluation than
    ``doc``: ``"KEY: OLD -> NEW"`` for the model, the responses file and each setting both
    record that differs (the output folder and ``overwrite`` aside); empty for the same
    evaluation."""

    def identity(d: dict) -> dict:
        settings = d.get("settings")
        kept = {
            k: v
            for k, v in (settings if isinstance(settings, dict) else {}).items()
            if k not in _NOT_THE_RESULT
        }
        both = {"model": d.get("model"), "responses": d.get("responses"), **kept}
        return json.loads(json.dumps(clean_json(both)))  # as results.json stores it

    new, old = identity(doc), identity(other)
    # a setting one side lacks (added or removed in another r1v2 version) is not compared
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in new if k in old and new[k] != old[k]]


def check_report_folder(out_dir: str | Path, doc: dict, *, overwrite: bool) -> None:
    """Refuse, before any work, an output folder that holds the reports of another evaluation
    (:func:`evaluation_changes` against ``doc``, the results document this run will write,
    less its benchmarks) or report files without a readable results.json, unless
    ``overwrite``. The same evaluation run again may rewrite its own reports."""
    out = Path(out_dir)
    present = [name for name in REPORT_FILES if (out / name).exists()]
    if overwrite or not present:
        return
    try:
        earlier = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        earlier = None
    if isinstance(earlier, dict) and isinstance(earlier.get("settings"), dict):
        changes = evaluation_changes(doc, earlier)
        if not changes:
            return
        shown = "; ".join(changes[:3]) + ("; ..." if len(changes) > 3 else "")
        what = f"the results of another evaluation ({shown})"
    else:
        what = "report files not from r1v2 eval (" + ", ".join(present) + ")"
    raise R1V2Error(
        f"out={out} holds {what}: use another out, or overwrite=true to replace them (the "
        "response cache is kept either way)"
    )


def write_reports(
    out_dir: str | Path, doc: dict, scores: dict[str, list[dict]] | None = None
) -> dict[str, Path]:
    """Write results.json, results.md, results.png (and scores.jsonl) into ``out_dir``, each
    through a temporary file renamed into place (an interrupted write leaves no torn file)."""
    from r1v2.fsutil import write_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "results.png"}
    write_atomic(paths["json"], json.dumps(doc, indent=2, allow_nan=False) + "\n")
    write_atomic(paths["md"], markdown(doc))
    tmp = out / f".results.tmp-{os.getpid()}.png"
    try:
        bar_chart(doc, tmp)
        os.replace(tmp, paths["png"])
    finally:
        tmp.unlink(missing_ok=True)
    if scores is not None:
        paths["scores"] = out / "scores.jsonl"
        lines = [
            json.dumps(clean_json({"bench": bench, **row})) + "\n"
            for bench, rows in scores.items()
            for row in rows
        ]
        write_atomic(paths["scores"], "".join(lines))
    return paths


# ---- comparing two runs -------------------------------------------------------------------


def load_results(path: str | Path) -> dict:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise R1V2Error(f"cannot read {path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise R1V2Error(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), dict):
        raise R1V2Error(f"{path}: not an r1v2 results.json (no 'benchmarks' mapping)")
    return doc


_COMPARED = [
    ("pass@1", "pass@1_std"),
    ("mean_pass_rate", "mean_pass_rate_std"),  # code benchmarks only
    ("hallucination_rate", "hallucination_rate_std"),
]


def compare_rows(a: dict, b: dict) -> list[tuple[str, str, str, str]]:
    """(metric, A, B, B - A in points) for every benchmark metric found in either run."""
    rows = []
    names = list(dict.fromkeys([*a["benchmarks"], *b["benchmarks"]]))
    for n in names:
        ra, rb = a["benchmarks"].get(n, {}), b["benchmarks"].get(n, {})
        metrics = [(k, s) for k, s in _COMPARED if k in ra or k in rb]
        pa, pb = ra.get("pope", {}), rb.get("pope", {})
        for key, std in metrics:
            rows.append(_row(f"{n} {key}", ra.get(key), ra.get(std), rb.get(key), rb.get(std)))
        for key in ("f1", "yes_ratio"):
            if key in pa or key in pb:
                rows.append(
                    _row(
                        f"{n} POPE {key}",
                        pa.get(key),
                        pa.get(key + "_std"),
                        pb.get(key),
                        pb.get(key + "_std"),
                    )
                )
    return rows


def _row(label: str, va, sa, vb, sb) -> tuple[str, str, str, str]:
    delta = "-" if va is None or vb is None else f"{100 * (vb - va):+.1f}"
    return label, pct(va, sa), pct(vb, sb), delta


def print_comparison(a_path: str | Path, b_path: str | Path) -> None:
    """Print two results.json side by side (rich table on stdout)."""
    from rich.console import Console
    from rich.table import Table

    a, b = load_results(a_path), load_results(b_path)
    table = Table(title="r1v2 eval: comparison (%)")
    table.add_column("benchmark / metric")
    table.add_column(f"A: {system_name(a)}", justify="right")
    table.add_column(f"B: {system_name(b)}", justify="right")
    table.add_column("B - A", justify="right")
    for row in compare_rows(a, b):
        table.add_row(*row)
    Console(width=120).print(table)
