"""The LiveCodeBench adapter: its published layout, the safe pickle reader, the date window,
the prompt, and `r1v2 eval` scoring code by running the tests.

The fixture is written here in the published layout: three problems (stdin on AtCoder, a
LeetCode functional one with starter code, an older stdin one on Codeforces); the private tests
of two are base64 of zlib of a pickle of a JSON string, as the dataset ships them.
"""

import base64
import json
import os
import pickle
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r1v2.cli import main
from r1v2.eval.benchmarks import BenchmarkError, load_benchmark, parse_bench_spec
from r1v2.eval.livecodebench import PRELUDE, NoGlobalsUnpickler, decode_tests
from r1v2.eval.prompts import CODE_STARTER, CODE_STDIN, prompt_sample
from r1v2.eval.scoring import code_pass_rate


def packed(cases) -> str:
    """The dataset's encoding of private tests: base64(zlib(pickle(json string)))."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


def stdin_cases(*pairs):
    return [{"input": i, "output": o, "testtype": "stdin"} for i, o in pairs]


def functional_cases(*pairs):
    return [{"input": i, "output": o, "testtype": "functional"} for i, o in pairs]


STARTER = "class Solution:\n    def maxValue(self, nums: List[int], k: int) -> int:\n        "


def rows():
    """abc001_a: a + b (easy, 2024-09-01; 1 public + 2 pickled private tests);
    3000: max(nums) * k (medium, functional, 2024-10-05; 1 public + 2 plain JSON private);
    cf_1_b: reverse a line (hard, 2023-05-01; 1 public, no private tests)."""
    common = {"contest_id": "c", "question_title": "t"}
    return [
        {
            **common,
            "question_id": "abc001_a",
            "question_content": "Print A + B.",
            "platform": "atcoder",
            "contest_date": "2024-09-01T00:00:00",
            "starter_code": "",
            "difficulty": "easy",
            "public_test_cases": json.dumps(stdin_cases(("1 2\n", "3\n"))),
            "private_test_cases": packed(stdin_cases(("5 7\n", "12\n"), ("10 -3\n", "7\n"))),
            "metadata": "{}",
        },
        {
            **common,
            "question_id": "3000",
            "question_content": "Return the largest element times k.",
            "platform": "leetcode",
            "contest_date": "2024-10-05T00:00:00",
            "starter_code": STARTER,
            "difficulty": "medium",
            "public_test_cases": json.dumps(functional_cases(("[1, 5, 3]\n2", "10"))),
            "private_test_cases": json.dumps(
                functional_cases(("[7]\n3", "21"), ("[-1, -4]\n1", "-1"))
            ),
            "metadata": json.dumps({"func_name": "maxValue"}),
        },
        {
            **common,
            "question_id": "cf_1_b",
            "question_content": "Reverse the line.",
            "platform": "codeforces",
            "contest_date": "2023-05-01T00:00:00",
            "starter_code": "",
            "difficulty": "hard",
            "public_test_cases": json.dumps(stdin_cases(("abc\n", "cba\n"))),
            "private_test_cases": packed([]),
            "metadata": "{}",
        },
    ]


def write_lcb(path, data):
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return path


def code(src: str) -> str:
    return f"<think>easy</think>\n```python\n{src}\n```"


ADD = code("a, b = map(int, input().split())\nprint(a + b)")
ADD_SMALL = code("a, b = map(int, input().split())\nprint(a + b if a < 6 else 0)")  # 2 of 3
MAX_K = code("class Solution:\n    def maxValue(self, nums: List[int], k: int) -> int:\n"
             "        return max(nums) * k")  # fmt: skip
FIRST_K = code("class Solution:\n    def maxValue(self, nums, k):\n        return nums[0] * k")
REVERSE = code("print(input()[::-1])")


def test_loads_the_published_layout(tmp_path):
    b = load_benchmark(f"livecodebench={write_lcb(tmp_path / 'test.jsonl', rows())}")
    assert (b.adapter, b.scorer, b.skipped) == ("livecodebench", "code", [])
    s = {x.id: x for x in b.samples}
    assert list(s) == ["abc001_a", "3000", "cf_1_b"]
    assert all(x.kind == "code" and x.images == () for x in s.values())
    assert [x.metadata["category"] for x in s.values()] == ["easy", "medium", "hard"]
    # public then private, the pickled ones decoded
    assert s["abc001_a"].metadata["tests"] == [
        {"input": "1 2\n", "output": "3\n"},
        {"input": "5 7\n", "output": "12\n"},
        {"input": "10 -3\n", "output": "7\n"},
    ]
    assert s["3000"].metadata["tests"] == {
        "func_name": "maxValue",
        "cases": [
            {"input": "[1, 5, 3]\n2", "output": "10"},
            {"input": "[7]\n3", "output": "21"},
            {"input": "[-1, -4]\n1", "output": "-1"},
        ],
    }
    meta = s["3000"].metadata
    assert (meta["platform"], meta["contest_date"], meta["n_public_tests"]) == (
        "leetcode",
        "2024-10-05T00:00:00",
        1,
    )
    assert (meta["timeout_s"], meta["prelude"]) == (6.0, PRELUDE)
    assert "from typing import *" in PRELUDE and "import collections" in PRELUDE


def test_a_folder_of_files_and_the_alias(tmp_path):
    folder = tmp_path / "lcb"
    folder.mkdir()
    write_lcb(folder / "test.jsonl", rows()[:2])
    write_lcb(folder / "test2.jsonl", rows()[2:])
    assert [x.id for x in load_benchmark(f"lcb={folder}").samples] == ["abc001_a", "3000", "cf_1_b"]


def test_prompt_is_livecodebench_s(tmp_path):
    b = load_benchmark(f"livecodebench={write_lcb(tmp_path / 'test.jsonl', rows())}")
    s = {x.id: prompt_sample(x, b.scorer, b.instruct).question for x in b.samples}
    assert s["3000"] == (
        "### Question:\nReturn the largest element times k.\n\n"
        f"### Format: {CODE_STARTER}\n```python\n{STARTER}\n```\n\n"
        "### Answer: (use the provided format with backticks)\n\n"
    )
    assert s["abc001_a"] == (
        "### Question:\nPrint A + B.\n\n"
        f"### Format: {CODE_STDIN}\n```python\n# YOUR CODE HERE\n```\n\n"
        "### Answer: (use the provided format with backticks)\n\n"
    )
    assert CODE_STDIN.startswith("Read the inputs from stdin solve the problem")
    assert "\\boxed" not in s["abc001_a"]


def test_date_window_and_platform(tmp_path):
    path = write_lcb(tmp_path / "test.jsonl", rows())
    b = load_benchmark(f"livecodebench[start_date=2024-01-01]={path}")
    assert [x.id for x in b.samples] == ["abc001_a", "3000"]
    assert b.skipped == [f"{path}:3: contest_date 2023-05-01 before start_date 2024-01-01"]
    assert b.options == {"start_date": "2024-01-01"}
    # both ends inclusive, by calendar day
    b = load_benchmark(f"w:lcb[start_date=2024-09-01, end_date=2024-09-01]={path}")
    assert (b.name, [x.id for x in b.samples], len(b.skipped)) == ("w", ["abc001_a"], 2)
    assert f"{path}:2: contest_date 2024-10-05 after end_date 2024-09-01" in b.skipped
    b = load_benchmark(f"livecodebench[platform=LeetCode]={path}")
    assert [x.id for x in b.samples] == ["3000"]
    b = load_benchmark(f"livecodebench[timeout=2.5,memory_mb=512]={path}")
    assert (b.samples[0].metadata["timeout_s"], b.samples[0].metadata["memory_mb"]) == (2.5, 512)
    with pytest.raises(BenchmarkError, match="no samples"):
        load_benchmark(f"livecodebench[end_date=2020-01-01]={path}")


@pytest.mark.parametrize(
    "options, message",
    [
        ("start=2024-01-01", r"unknown option\(s\) start \(valid: start_date, end_date"),
        ("start_date=2024-13-01", "option start_date='2024-13-01' is not a date"),
        ("start_date=2024-02-01,end_date=2024-01-01", "start_date 2024-02-01 is after end_date"),
        ("timeout=0", "option timeout='0' must be a positive float"),
        ("timeout=inf", "option timeout='inf' must be a positive float"),
        ("timeout=nan", "option timeout='nan' must be a positive float"),
        ("start_date", "option 'start_date' is not key=value"),
        ("platform=a,platform=b", "option 'platform' given twice"),
    ],
)
def test_option_errors(tmp_path, options, message):
    path = write_lcb(tmp_path / "test.jsonl", rows())
    with pytest.raises(BenchmarkError, match=message):
        load_benchmark(f"livecodebench[{options}]={path}")


def test_spec_with_options_and_adapters_without(tmp_path):
    label, adapter, path, options = parse_bench_spec("v5:lcb[start_date=2024-08-01]=/d/x=y.jsonl")
    assert (label, adapter.name, str(path), options) == (
        "v5",
        "livecodebench",
        "/d/x=y.jsonl",
        {"start_date": "2024-08-01"},
    )
    with pytest.raises(BenchmarkError, match="the aime2024 adapter takes no options"):
        load_benchmark(f"aime[start_date=2024-01-01]={tmp_path / 'a.jsonl'}")
    with pytest.raises(BenchmarkError, match="expected NAME=PATH"):
        parse_bench_spec("lcb[start_date=2024-01-01=x")


class RunsCode:
    """A pickle that runs a shell command when loaded with the plain unpickler."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = dict(rows()[0], question_id="evil")
    bad["private_test_cases"] = base64.b64encode(
        zlib.compress(pickle.dumps(RunsCode(f"touch {marker}")))
    ).decode()
    path = write_lcb(tmp_path / "test.jsonl", [*rows(), bad])
    with pytest.raises(BenchmarkError) as e:
        load_benchmark(f"livecodebench={path}")
    assert str(e.value).startswith(f"{path}:4: field 'private_test_cases': unsafe or malformed")
    assert "refused global posix.system" in str(e.value)
    assert not marker.exists()
    # The payload is live: the plain unpickler runs it (so the test above can fail).
    pickle.loads(zlib.decompress(base64.b64decode(bad["private_test_cases"])))
    assert marker.exists()


def test_a_row_outside_the_window_is_never_decoded(tmp_path):
    marker = tmp_path / "pwned"
    bad = dict(rows()[2], question_id="evil")  # 2023: outside the window below
    bad["private_test_cases"] = base64.b64encode(
        zlib.compress(pickle.dumps(RunsCode(f"touch {marker}")))
    ).decode()
    path = write_lcb(tmp_path / "test.jsonl", [*rows()[:2], bad])
    b = load_benchmark(f"livecodebench[start_date=2024-01-01]={path}")
    assert [x.id for x in b.samples] == ["abc001_a", "3000"] and not marker.exists()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("private_test_cases", base64.b64encode(zlib.compress(pickle.dumps([]))).decode(),
         "the pickle holds a list, not a JSON string"),
        ("private_test_cases", base64.b64encode(b"not zlib").decode(), "not zlib data"),
        ("private_test_cases", "%%%", "neither a JSON list nor base64"),
        ("private_test_cases", base64.b64encode(zlib.compress(b"\x80\x04junk")).decode(),
         "malformed"),
        ("public_test_cases", "[{\"input\": 1, \"output\": \"2\"}]", "[0].input': missing or not"),
        ("public_test_cases", "[{\"input\": \"1\", \"output\": \"2\", \"testtype\": \"x\"}]",
         "expected stdin or functional"),
        ("public_test_cases", json.dumps(functional_cases(("1", "2"))),
         "'public_test_cases[0].testtype': 'functional', but metadata has no func_name"),
        ("difficulty", "impossible", "expected easy, medium or hard"),
        ("contest_date", "yesterday", "not an ISO date"),
        ("metadata", "{oops", "field 'metadata': malformed JSON"),
    ],
)  # fmt: skip
def test_malformed_rows_name_file_line_and_field(tmp_path, field, value, message):
    bad = dict(rows()[0], **{field: value})
    path = write_lcb(tmp_path / "test.jsonl", [rows()[1], bad])
    with pytest.raises(BenchmarkError) as e:
        load_benchmark(f"livecodebench={path}")
    assert str(e.value).startswith(f"{path}:2: field '{field}"), str(e.value)
    assert message in str(e.value)


def test_functional_tests_must_be_json(tmp_path):
    bad = dict(rows()[1])
    bad["private_test_cases"] = json.dumps(functional_cases(("[7]\nnot json", "21")))
    path = write_lcb(tmp_path / "test.jsonl", [bad])
    with pytest.raises(
        BenchmarkError, match=r":1: field 'private_test_cases\[0\].input': not JSON"
    ):
        load_benchmark(f"livecodebench={path}")


def test_decode_tests_accepts_lists_json_and_the_packed_form():
    from r1v2.eval.benchmarks import Row

    cases = stdin_cases(("1\n", "1\n"))
    for value in (cases, json.dumps(cases), packed(cases)):
        assert decode_tests(Row("f", 1, {"t": value}), "t") == cases
    assert decode_tests(Row("f", 1, {"t": ""}), "t") == []
    plain = pickle.dumps(json.dumps(cases))
    assert NoGlobalsUnpickler(__import__("io").BytesIO(plain)).load() == json.dumps(cases)


def test_solutions_run_with_livecodebench_s_imports(tmp_path):
    """The functional solution uses List without importing it, as LeetCode solutions do."""
    b = load_benchmark(f"livecodebench={write_lcb(tmp_path / 'test.jsonl', rows())}")
    s = {x.id: x for x in b.samples}
    assert code_pass_rate(MAX_K, s["3000"]) == 1.0
    assert code_pass_rate(FIRST_K, s["3000"]) == pytest.approx(2 / 3)
    assert code_pass_rate(ADD_SMALL, s["abc001_a"]) == pytest.approx(2 / 3)
    assert code_pass_rate(REVERSE, s["cf_1_b"]) == 1.0


def test_eval_scores_code_by_running_tests(tmp_path, capsys):
    """Two runs. run 0: abc001_a right, 3000 right, cf_1_b no code -> Pass@1 2/3, pass rates
    1, 1, 0 -> 2/3. run 1: abc001_a 2 of 3 tests, 3000 2 of 3, cf_1_b right -> Pass@1 1/3,
    pass rates 2/3, 2/3, 1 -> 7/9.
    Pass@1 = (2/3 + 1/3) / 2 = 0.5, std = |2/3 - 1/3| / sqrt(2); mean pass rate
    (2/3 + 7/9) / 2 = 13/18. By difficulty: easy runs (1, 0), medium (1, 0), hard (0, 1).
    With start_date=2024-01-01 (cf_1_b skipped): Pass@1 (1 + 0) / 2 = 0.5, runs [1, 0]."""
    path = write_lcb(tmp_path / "test.jsonl", rows())
    responses = [
        ("abc001_a", 0, ADD),
        ("3000", 0, MAX_K),
        ("cf_1_b", 0, "I do not know."),
        ("abc001_a", 1, ADD_SMALL),
        ("3000", 1, FIRST_K),
        ("cf_1_b", 1, REVERSE),
    ]
    resp = tmp_path / "responses.jsonl"
    resp.write_text(
        "".join(json.dumps({"id": i, "run": r, "response": t}) + "\n" for i, r, t in responses)
    )
    out = tmp_path / "out"
    args = ["eval", "--responses", str(resp), "--out", str(out)]
    assert main([*args, "--bench", f"livecodebench={path}"]) == 0
    doc = json.loads((out / "results.json").read_text())
    r = doc["benchmarks"]["livecodebench"]
    assert r["pass@1"] == pytest.approx(0.5) and r["pass@1_std"] == pytest.approx(1 / 3 / 2**0.5)
    assert r["pass@1_runs"] == pytest.approx([2 / 3, 1 / 3])
    assert r["mean_pass_rate"] == pytest.approx(13 / 18)
    assert {c: v["pass@1"] for c, v in r["categories"].items()} == {
        "easy": 0.5,
        "medium": 0.5,
        "hard": 0.5,
    }
    assert (r["n_rule_unscored"], r["n_fallback"], r["n_judged"]) == (0, 0, 0)
    scores = {
        (x["id"], x["run"]): (x["score"], x["pass_rate"])
        for x in map(json.loads, (out / "scores.jsonl").read_text().splitlines())
    }
    assert scores[("abc001_a", 1)] == (0.0, pytest.approx(2 / 3))
    assert scores[("cf_1_b", 0)] == (0.0, 0.0) and scores[("cf_1_b", 1)] == (1.0, 1.0)

    # The same responses (of the whole set) with a window: those to cf_1_b are ignored.
    out2 = tmp_path / "out2"
    spec = f"livecodebench[start_date=2024-01-01]={path}"
    assert main(["eval", "--responses", str(resp), "--out", str(out2), "--bench", spec]) == 0
    r = json.loads((out2 / "results.json").read_text())["benchmarks"]["livecodebench"]
    assert (r["pass@1_runs"], r["n_samples"], r["n_skipped_rows"]) == ([1.0, 0.0], 2, 1)
    assert (r["n_missing"], r["mean_pass_rate"]) == (0, pytest.approx((1 + 2 / 3) / 2))
    # An id in no row at all is still an error.
    with resp.open("a") as f:
        f.write(json.dumps({"id": "nope", "run": 0, "response": ADD}) + "\n")
    assert main(["eval", "--responses", str(resp), "--out", str(out2), "--bench", spec]) != 0
    assert "unknown id 'nope'" in capsys.readouterr().err


def test_code_samples_in_a_sample_file_are_scored_by_their_tests(tmp_path):
    """A kind: code sample of the project's own format: scored by its tests, not by its answer."""
    from r1v2.eval.harness import score_benchmark, summarize

    row = {
        "id": "c1",
        "question": "Print the double of n.",
        "answer": "-",
        "kind": "code",
        "metadata": {
            "tests": [{"input": "2\n", "output": "4\n"}, {"input": "5\n", "output": "10"}]
        },
    }
    path = tmp_path / "code.jsonl"
    path.write_text(json.dumps(row) + "\n")
    bench = load_benchmark(f"mine:samples={path}")
    responses = {("c1", 0): code("print(int(input()) * 2)"), ("c1", 1): code("print(4)")}
    table = score_benchmark(bench, responses, [0, 1, 2], code_workers=2)
    assert [(x.score, x.pass_rate, x.response is None) for x in table[0]] == [
        (1.0, 1.0, False),
        (0.0, 0.5, False),
        (0.0, 0.0, True),  # run 2 has no response
    ]
    res = summarize(bench, table, [0, 1, 2])
    assert res["pass@1"] == pytest.approx(1 / 3) and res["mean_pass_rate"] == pytest.approx(0.5)


_FIELD_VALUES = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from(["", "{}", "[]", "[{}]", "easy", "2024-01-01", "{oops", "%%%", "AAAA"]),
    st.lists(
        st.dictionaries(st.sampled_from(["input", "output", "testtype"]), st.text()), max_size=3
    ),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.binary(max_size=40).map(lambda b: base64.b64encode(zlib.compress(b)).decode()),
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    st.recursive(
        st.one_of(st.text(max_size=5), st.integers()),
        lambda c: st.lists(c, max_size=3),
        max_leaves=5,
    ).map(lambda v: base64.b64encode(zlib.compress(pickle.dumps(v))).decode()),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, 2),
    changes=st.dictionaries(st.sampled_from(sorted(rows()[0])), _FIELD_VALUES, max_size=3),
)
def test_any_row_gives_a_sample_a_skip_or_a_benchmark_error(which, changes):
    from r1v2.data.schema import Sample
    from r1v2.eval.benchmarks import ADAPTERS, Row, Skip

    try:
        out = ADAPTERS["livecodebench"].convert(Row("f.jsonl", 1, {**rows()[which], **changes}))
    except BenchmarkError as e:
        assert str(e).startswith("f.jsonl:1") and "\n" not in str(e)
        return
    assert isinstance(out, (Sample, Skip))
