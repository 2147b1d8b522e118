"""LiveCodeBench (code generation) in its published layout, as ``kind: code`` Samples.

The layout of ``livecodebench/code_generation_lite`` (``test.jsonl``, ``test2.jsonl``, ...: a
file, or a folder of them read in sorted order), one problem per row:

- ``question_id``, ``question_title``, ``question_content``, ``platform`` (leetcode, atcoder,
  codeforces), ``contest_id``, ``contest_date`` (ISO, ``2024-08-17T00:00:00``),
  ``starter_code`` (LeetCode's ``class Solution`` stub; empty for stdin problems),
  ``difficulty`` (easy, medium, hard);
- ``public_test_cases``: a JSON string of a list of ``{"input", "output", "testtype"}``,
  ``testtype`` "stdin" (the program reads ``input`` and prints ``output``) or "functional"
  (each line of ``input`` is one JSON argument of ``func_name``, ``output`` the JSON of the
  return value);
- ``private_test_cases``: the same list, as a JSON string or as base64 of zlib of a pickle of
  that JSON string. The pickle is read by :class:`NoGlobalsUnpickler`, which refuses every
  global (the layout pickles a plain ``str``), so a pickle that would import or call anything
  is an error naming file, line and field, and nothing of it runs;
- ``metadata``: a JSON string of an object; ``func_name`` names the function of functional
  problems (a ``class Solution`` method when the solution defines one, else a top-level
  function: see :mod:`r1v2.rewards.code`).

Each problem is scored on its public and private tests together, as LiveCodeBench does;
a response is correct for Pass@1 when it passes all of them. category = difficulty, so results
break down into easy / medium / hard. Options (``--bench 'livecodebench[start_date=2024-08-01,
end_date=2025-01-31]=PATH'``, see :data:`OPTIONS`) select a ``contest_date`` window, as
LiveCodeBench's ``--start_date`` / ``--end_date`` do, or a platform; rows outside are skipped
with the reason, and responses to them (``--responses`` of the whole set) are ignored.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import pickle
import zlib
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from r1v2.data.schema import Sample
from r1v2.eval.benchmarks import BenchmarkError, Row, Skip
from r1v2.rewards.code import check_tests

MAX_TESTS_BYTES = 1 << 30  # private tests, decompressed: more is refused (a zlib bomb)
DIFFICULTIES = ("easy", "medium", "hard")
TEST_TYPES = ("stdin", "functional")

# What LiveCodeBench's runner executes before every solution (lcb_runner/evaluation/
# testing_util.py): star imports of these modules, then plain imports of all but the last two,
# then a recursion limit of 50000. LeetCode stubs annotate with ``List`` without importing it.
_PRELUDE_MODULES = (
    "string re datetime collections heapq bisect copy math random statistics itertools "
    "functools operator io sys json builtins typing"
).split()
PRELUDE = (
    "".join(f"from {m} import *\n" for m in _PRELUDE_MODULES)
    + "".join(f"import {m}\n" for m in _PRELUDE_MODULES[:-2])
    + "sys.setrecursionlimit(50000)\n"
)

OPTIONS = {
    "start_date": "keep problems whose contest_date is on or after this day (YYYY-MM-DD)",
    "end_date": "keep problems whose contest_date is on or before this day (YYYY-MM-DD)",
    "platform": "keep one platform: leetcode, atcoder or codeforces",
    "timeout": "seconds per test (LiveCodeBench's default: 6)",
    "memory_mb": "address-space limit of the solution's process in MB (default 2048)",
}


@dataclass(frozen=True)
class Options:
    """The adapter's options, parsed (see :data:`OPTIONS`)."""

    start_date: date | None = None
    end_date: date | None = None
    platform: str | None = None
    timeout: float = 6.0  # LiveCodeBench's --timeout default
    memory_mb: int = 2048  # our choice: LiveCodeBench sets no limit by default


def parse_options(raw: dict[str, str]) -> Options:
    """``{"start_date": "2024-08-01", ...}`` -> :class:`Options`; errors name the option."""
    unknown = sorted(set(raw) - set(OPTIONS))
    if unknown:
        raise BenchmarkError(
            f"livecodebench: unknown option(s) {', '.join(unknown)} (valid: {', '.join(OPTIONS)})"
        )

    def day(name: str) -> date | None:
        if name not in raw:
            return None
        try:
            return date.fromisoformat(raw[name])
        except ValueError:
            raise BenchmarkError(
                f"livecodebench: option {name}={raw[name]!r} is not a date (YYYY-MM-DD)"
            ) from None

    def number(name: str, kind: type, default: float) -> Any:
        if name not in raw:
            return default
        try:
            value = kind(raw[name])
        except ValueError:
            value = None
        if value is None or not (value > 0 and math.isfinite(value)):
            raise BenchmarkError(
                f"livecodebench: option {name}={raw[name]!r} must be a positive {kind.__name__}"
            )
        return value

    start, end = day("start_date"), day("end_date")
    if start and end and start > end:
        raise BenchmarkError(f"livecodebench: start_date {start} is after end_date {end}")
    return Options(
        start_date=start,
        end_date=end,
        platform=raw["platform"].lower() if "platform" in raw else None,
        timeout=number("timeout", float, Options.timeout),
        memory_mb=number("memory_mb", int, Options.memory_mb),
    )


class NoGlobalsUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global: plain data (str, bytes, numbers, lists, dicts)
    loads, while anything that would import or call (``__reduce__``, classes) is refused
    before it is looked up. Persistent ids are refused by ``pickle.Unpickler`` itself."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def _inflate(row: Row, name: str, data: bytes) -> bytes:
    """zlib-decompress ``data``, refusing more than :data:`MAX_TESTS_BYTES`."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_TESTS_BYTES)
    except zlib.error as e:
        raise row.error(name, f"base64 text that is not zlib data ({e})") from None
    if inflater.unconsumed_tail:
        raise row.error(name, f"decompresses to more than {MAX_TESTS_BYTES >> 20} MB")
    return out


def decode_tests(row: Row, name: str) -> list:
    """A test-case field as a list: a list, a JSON string of one, or base64 of zlib of a pickle
    of a JSON string (``private_test_cases``)."""
    value = row.data.get(name)
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if not isinstance(value, str):
        raise row.error(name, f"expected a JSON string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        return []
    if text[0] in "[{":
        try:
            cases = json.loads(text)
        except json.JSONDecodeError as e:
            raise row.error(name, f"malformed JSON: {e.msg}") from None
    else:
        try:
            packed = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise row.error(name, "neither a JSON list nor base64 text") from None
        try:
            inner = NoGlobalsUnpickler(io.BytesIO(_inflate(row, name, packed))).load()
        except pickle.UnpicklingError as e:
            raise row.error(name, f"unsafe or malformed pickle, not loaded: {e}") from None
        except (EOFError, ValueError, TypeError, IndexError, KeyError, MemoryError) as e:
            raise row.error(name, f"malformed pickle: {type(e).__name__}: {e}") from None
        if not isinstance(inner, (str, bytes)):
            raise row.error(name, f"the pickle holds a {type(inner).__name__}, not a JSON string")
        try:
            cases = json.loads(inner)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise row.error(name, f"the pickled string is not JSON: {e}") from None
    if not isinstance(cases, list):
        raise row.error(name, f"expected a list of test cases, got {type(cases).__name__}")
    return cases


def _cases(row: Row, name: str) -> list[tuple[str, str, str]]:
    """(input, output, testtype) of each case of a test-case field."""
    out = []
    for i, case in enumerate(decode_tests(row, name)):
        where = f"{name}[{i}]"
        if not isinstance(case, dict):
            raise row.error(where, f"expected an object, got {type(case).__name__}")
        for key in ("input", "output"):
            if not isinstance(case.get(key), str):
                raise row.error(f"{where}.{key}", "missing or not a string")
        testtype = case.get("testtype", "stdin")
        if testtype not in TEST_TYPES:
            raise row.error(f"{where}.testtype", f"expected stdin or functional, got {testtype!r}")
        out.append((case["input"], case["output"], testtype))
    return out


def _json_object(row: Row, name: str) -> dict:
    value = row.data.get(name)
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise row.error(name, f"malformed JSON: {e.msg}") from None
    if not isinstance(value, dict):
        raise row.error(name, f"expected a JSON object, got {type(value).__name__}")
    return value


def _contest_date(row: Row) -> datetime:
    value = row.get("contest_date")
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise row.error("contest_date", f"not an ISO date: {str(value)[:40]!r}") from None


def _outside(day: date, options: Options) -> str | None:
    """Why ``day`` is outside the window, or None. Both ends inclusive, by calendar day
    (LiveCodeBench compares ``start_date <= contest_date <= end_date``; its dates are
    midnights, where the two readings agree)."""
    if options.start_date and day < options.start_date:
        return f"contest_date {day} before start_date {options.start_date}"
    if options.end_date and day > options.end_date:
        return f"contest_date {day} after end_date {options.end_date}"
    return None


def convert(row: Row, options: Options) -> Sample | Skip:
    """One LiveCodeBench row -> a ``kind: code`` Sample, or a Skip outside the options."""
    qid = str(row.get("question_id"))
    contest = _contest_date(row)
    platform = str(row.get("platform", kind=str)).lower()
    reason = _outside(contest.date(), options)
    if reason is None and options.platform and platform != options.platform:
        reason = f"platform {platform}, not {options.platform}"
    if reason is not None:
        return Skip(reason, id=qid)
    difficulty = str(row.get("difficulty", kind=str)).lower()
    if difficulty not in DIFFICULTIES:
        raise row.error("difficulty", f"expected easy, medium or hard, got {difficulty!r}")
    meta = _json_object(row, "metadata")
    func_name = meta.get("func_name") or None
    public = _cases(row, "public_test_cases")
    cases = public + _cases(row, "private_test_cases")
    if not cases:
        raise row.error("public_test_cases", "no test cases (public or private)")
    wanted = "functional" if func_name else "stdin"
    fields = _case_fields(len(public), len(cases))
    for field_name, (_, _, testtype) in zip(fields, cases):
        if testtype != wanted:
            why = "metadata names func_name" if func_name else "metadata has no func_name"
            raise row.error(f"{field_name}.testtype", f"{testtype!r}, but {why}")
    if func_name is not None:
        if not isinstance(func_name, str) or not func_name.isidentifier():
            raise row.error("metadata.func_name", f"not a Python name: {func_name!r}")
        for field_name, (inp, out, _) in zip(fields, cases):
            _check_json(row, f"{field_name}.input", [ln for ln in inp.split("\n") if ln.strip()])
            _check_json(row, f"{field_name}.output", [out])
    pairs = [{"input": inp, "output": out} for inp, out, _ in cases]
    tests: Any = {"func_name": func_name, "cases": pairs} if func_name else pairs
    problem = check_tests(tests)
    if problem is not None:  # not expected after the checks above
        raise row.error("public_test_cases", problem)
    return Sample(
        id=qid,
        question=row.get("question_content", kind=str),
        images=(),
        answer="-",  # scored by running the tests; there is no answer text
        kind="code",
        metadata={
            "category": difficulty,
            "difficulty": difficulty,
            "platform": platform,
            "title": row.get("question_title", default=""),
            "contest_id": str(row.get("contest_id", default="")),
            "contest_date": contest.isoformat(),
            "starter_code": row.get("starter_code", default="", kind=str),
            "tests": tests,
            "n_public_tests": len(public),
            "timeout_s": options.timeout,
            "memory_mb": options.memory_mb,
            "prelude": PRELUDE,
        },
    )


def _check_json(row: Row, name: str, texts: list[str]) -> None:
    """Functional tests: each line of an input, and the output, must be JSON."""
    for text in texts:
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise row.error(name, f"not JSON ({e.msg}): {text[:60]!r}") from None


def _case_fields(n_public: int, n_all: int) -> list[str]:
    """The field name of each case, for errors: public first, then private."""
    return [f"public_test_cases[{i}]" for i in range(n_public)] + [
        f"private_test_cases[{i}]" for i in range(n_all - n_public)
    ]
