"""The mean pass rate of code benchmarks on the console and in results.md (only for them), and
the --bench help's bracketed options."""

import json

import pytest

from r1v2.cli import main
from r1v2.eval.livecodebench import OPTIONS
from r1v2.eval.report import compare_rows, headline, markdown


def result(pass1: float, **extra) -> dict:
    base = {"pass@1": pass1, "pass@1_std": 0.0, "n_samples": 2, "n_runs": 2}
    return {**base, "n_rule_unscored": 0, "n_fallback": 0, **extra}


def doc(**benchmarks) -> dict:
    return {"model": "m", "responses": None, "benchmarks": benchmarks}


CODE = result(0.5, mean_pass_rate=0.75, mean_pass_rate_std=0.125)


def test_headline_shows_tests_passed_for_code_benchmarks_only():
    columns, rows = headline(doc(lcb=CODE, aime=result(0.25)))
    assert columns[:3] == ["benchmark", "Pass@1 (%)", "tests passed (%)"]
    assert rows == [
        ["lcb", "50.0 ± 0.0", "75.0 ± 12.5", "2", "2", "0", "0"],
        ["aime", "25.0 ± 0.0", "-", "2", "2", "0", "0"],
    ]
    columns, rows = headline(doc(aime=result(0.25)))
    assert "tests passed (%)" not in columns and rows == [
        ["aime", "25.0 ± 0.0", "2", "2", "0", "0"]
    ]


def test_markdown_has_a_code_section_with_code_benchmarks_only():
    md = markdown(doc(lcb=CODE, aime=result(0.25)))
    section = md.split("## Code: tests passed\n", 1)[1].split("\n## ", 1)[0]
    assert "| lcb | 75.0 ± 12.5 |" in section and "aime" not in section
    assert "Code: tests passed" not in markdown(doc(aime=result(0.25)))


def test_compare_shows_the_mean_pass_rate_of_code_benchmarks():
    a = doc(lcb=CODE, aime=result(0.25))
    b = doc(lcb=result(0.5, mean_pass_rate=0.8, mean_pass_rate_std=0.0), aime=result(0.5))
    rows = {r[0]: r[1:] for r in compare_rows(a, b)}
    assert rows["lcb mean_pass_rate"] == ("75.0 ± 12.5", "80.0 ± 0.0", "+5.0")
    assert "aime mean_pass_rate" not in rows


def test_eval_prints_and_writes_the_mean_pass_rate(tmp_path, capsys, monkeypatch):
    """One code question, two tests: run 0 passes both (1.0), run 1 one (0.5): mean pass rate
    0.75, std |1.0 - 0.5| / sqrt(2) = 0.354; Pass@1 (1 + 0) / 2 = 0.5. A maths benchmark
    beside it shows "-" on the console and is absent from the code section."""
    monkeypatch.setenv("COLUMNS", "200")
    tests = [{"input": "2\n", "output": "4\n"}, {"input": "5\n", "output": "10\n"}]
    code_row = {"id": "c1", "question": "Double n.", "answer": "-", "kind": "code"}
    (tmp_path / "code.jsonl").write_text(json.dumps({**code_row, "metadata": {"tests": tests}}))
    (tmp_path / "maths.jsonl").write_text(
        json.dumps({"id": "m1", "question": "1+1?", "answer": "2", "kind": "math"})
    )
    fence = "</think>\n```python\n{}\n```"
    responses = [
        ("c1", 0, fence.format("print(int(input()) * 2)")),
        ("c1", 1, fence.format("print(4)")),
        ("m1", 0, "</think> \\boxed{2}"),
        ("m1", 1, "</think> \\boxed{3}"),
    ]
    resp = tmp_path / "responses.jsonl"
    resp.write_text(
        "".join(json.dumps({"id": i, "run": r, "response": t}) + "\n" for i, r, t in responses)
    )
    out = tmp_path / "out"
    args = ["eval", "--responses", str(resp), "--out", str(out)]
    benches = ["--bench", f"code:samples={tmp_path / 'code.jsonl'}"]
    benches += ["--bench", f"maths:samples={tmp_path / 'maths.jsonl'}"]
    assert main([*args, *benches]) == 0
    stdout = capsys.readouterr().out
    lines = {
        line.split()[1]: line
        for line in stdout.splitlines()
        if line.split()[1:2] in (["code"], ["maths"])
    }
    assert "tests passed (%)" in stdout
    assert "50.0 ± 70.7" in lines["code"] and "75.0 ± 35.4" in lines["code"]
    assert "50.0 ± 70.7" in lines["maths"] and " - " in lines["maths"]
    r = json.loads((out / "results.json").read_text())["benchmarks"]
    assert r["code"]["mean_pass_rate"] == pytest.approx(0.75) and "mean_pass_rate" not in r["maths"]
    md = (out / "results.md").read_text().split("## Code: tests passed\n", 1)[1]
    assert "| code | 75.0 ± 35.4 |" in md and "maths" not in md


def test_bench_help_names_the_bracketed_options(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "'livecodebench[start_date=2024-08-01,end_date=2025-01-31]=PATH'" in text
    assert f"livecodebench's options: {', '.join(OPTIONS)}" in text
