"""BFCL: the leaderboard's layout read, its prompt built and its AST checker applied (bfcl-eval
in its own environment: `python -m r1v2.eval.bfcl install`, which .ci/run does)."""

import json

import pytest
from fixtures.eval_benchmarks import write_jsonl

from r1v2.cli import main
from r1v2.errors import R1V2Error
from r1v2.eval.benchmarks import load_benchmark
from r1v2.eval.bfcl import bfcl_python, category_of


def has_bfcl() -> bool:
    try:
        bfcl_python()
    except R1V2Error:
        return False
    return True


needs_bfcl = pytest.mark.skipif(
    not has_bfcl(), reason="bfcl-eval not installed: python -m r1v2.eval.bfcl install"
)


def area():
    props = {
        "base": {"type": "integer", "description": "The base."},
        "height": {"type": "integer", "description": "The height."},
        "unit": {"type": "string", "description": "The unit (default 'units')."},
    }
    return {"name": "geometry.area", "description": "Area of a triangle.",
            "parameters": {"type": "dict", "properties": props, "required": ["base", "height"]}}  # fmt: skip


def weather():
    props = {"city": {"type": "string", "description": "The city."}}
    return {"name": "get_weather", "description": "The weather in a city.",
            "parameters": {"type": "dict", "properties": props, "required": ["city"]}}  # fmt: skip


def user(text):
    return [[{"role": "user", "content": text}]]


# file -> [(entry, possible answer, response, valid)]
CASES = {
    "BFCL_v4_simple_python.json": [
        (  # reasoning first, the optional unit left out (its possible answers include "")
            {"id": "simple_python_0", "question": user("Area with base 10 and height 5?"),
             "function": [area()]},
            [{"geometry.area": {"base": [10], "height": [5], "unit": ["units", ""]}}],
            "<think>base 10, height 5</think>\n[geometry.area(base=10, height=5)]",
            True,
        ),
        (  # a wrong value
            {"id": "simple_python_1", "question": user("Area with base 3 and height 4?"),
             "function": [area()]},
            [{"geometry.area": {"base": [3], "height": [4], "unit": ["units", ""]}}],
            "[geometry.area(base=3, height=5)]",
            False,
        ),
    ],
    "BFCL_v4_multiple.json": [
        (  # the wrong function of the two offered
            {"id": "multiple_0", "question": user("Weather in Paris?"),
             "function": [area(), weather()]},
            [{"get_weather": {"city": ["Paris"]}}],
            "[geometry.area(base=1, height=1)]",
            False,
        ),
    ],
    "BFCL_v4_parallel.json": [
        (  # two calls, in the other order than the possible answers: parallel is unordered
            {"id": "parallel_0", "question": user("Weather in Paris and in Rome?"),
             "function": [weather()]},
            [{"get_weather": {"city": ["Paris"]}}, {"get_weather": {"city": ["Rome"]}}],
            "[get_weather(city='Rome'), get_weather(city='Paris')]",
            True,
        ),
    ],
}  # fmt: skip


def write_bfcl(root, name, cases):
    data = write_jsonl(root / name, [entry for entry, *_ in cases])
    answers = [{"id": e["id"], "ground_truth": truth} for e, truth, *_ in cases]
    write_jsonl(root / "possible_answer" / name, answers)
    return data


def test_categories():
    assert category_of("parallel_multiple_12") == "parallel_multiple"
    assert category_of("simple_python_0") == "simple_python"


@needs_bfcl
def test_bfcl_through_the_cli_scores_with_the_leaderboards_checker(tmp_path):
    specs, rows = [], []
    for name, cases in CASES.items():
        data = write_bfcl(tmp_path / "bfcl", name, cases)
        specs += ["--bench", f"{name.split('_', 2)[2].removesuffix('.json')}:bfcl={data}"]
        rows += [{"id": e["id"], "run": 0, "response": r} for e, _, r, _ in cases]
    bench = load_benchmark(f"bfcl={tmp_path / 'bfcl' / 'BFCL_v4_multiple.json'}")
    prompt = bench.samples[0].question
    assert "get_weather" in prompt and "[func_name1(params_name1=params_value1" in prompt
    assert prompt.endswith("Weather in Paris?")
    assert "Note that the provided function is in Python 3 syntax." in prompt
    resp = write_jsonl(tmp_path / "responses.jsonl", rows)
    out = tmp_path / "out"
    assert main(["eval", "--responses", str(resp), *specs, "--out", str(out)]) == 0
    got = json.loads((out / "results.json").read_text())["benchmarks"]
    assert got["simple_python"]["pass@1"] == pytest.approx(1 / 2)
    assert got["multiple"]["pass@1"] == 0.0
    assert got["parallel"]["pass@1"] == 1.0
    assert got["simple_python"]["bfcl_errors"] == {"value_error:others": 1}
    assert list(got["multiple"]["bfcl_errors"]) == ["simple_function_checker:wrong_func_name"]
    scored = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    valid = {e["id"]: v for cases in CASES.values() for e, _, _, v in cases}
    assert {s["id"]: s["score"] == 1.0 for s in scored} == valid


@needs_bfcl
def test_an_unscored_category_is_one_line_naming_file_line_and_field(tmp_path, capsys):
    entry, truth, *_ = CASES["BFCL_v4_multiple.json"][0]
    cases = [(entry, truth), ({**entry, "id": "multi_turn_base_3"}, truth)]
    data = write_bfcl(tmp_path, "BFCL_v4_multiple.json", cases)
    resp = write_jsonl(tmp_path / "r.jsonl", [{"id": "multiple_0", "run": 0, "response": "x"}])
    args = ["eval", "--responses", str(resp), "--bench", f"bfcl={data}", "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "BFCL_v4_multiple.json:2: field 'id': BFCL category 'multi_turn_base'" in err


def test_missing_possible_answers_and_a_missing_checker_are_clear(tmp_path, monkeypatch):
    entry = CASES["BFCL_v4_multiple.json"][0][0]
    data = write_jsonl(tmp_path / "a" / "BFCL_v4_multiple.json", [entry])
    with pytest.raises(R1V2Error, match="no possible answers at .*possible_answer"):
        load_benchmark(f"bfcl={data}")
    data = write_bfcl(
        tmp_path / "b", "BFCL_v4_multiple.json", [({**entry, "id": "multiple_9"}, [])]
    )
    write_jsonl(tmp_path / "b" / "BFCL_v4_multiple.json", [entry])
    with pytest.raises(R1V2Error, match=r"BFCL_v4_multiple.json:1: field 'id': no possible answer for 'multiple_0'"):  # fmt: skip
        load_benchmark(f"bfcl={data}")
    bad = {**entry, "function": [{"name": "get_weather", "description": "no parameters"}]}
    data = write_bfcl(tmp_path / "d", "BFCL_v4_multiple.json", [(bad, [])])
    with pytest.raises(R1V2Error, match=r"BFCL_v4_multiple.json:1: field 'function': .*parameters"):
        load_benchmark(f"bfcl={data}")
    data = write_bfcl(tmp_path / "c", "BFCL_v4_multiple.json", [(entry, [])])
    monkeypatch.setenv("R1V2_BFCL_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(R1V2Error, match="no such Python.*python -m r1v2.eval.bfcl install"):
        load_benchmark(f"bfcl={data}")
