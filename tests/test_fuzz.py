"""Fuzzing: the parsers of user input raise only their documented errors on any text or bytes.

- the Sample loader (:func:`r1v2.data.loaders.load_samples`) and the pair loader
  (:mod:`r1v2.data.pairs`): DataError (an R1V2Error) with ``on_bad="error"``, nothing with
  ``on_bad="skip"`` (every problem is a reported row);
- the benchmark adapters (:mod:`r1v2.eval.benchmarks`): a Sample or a Skip, or BenchmarkError;
- answer extraction (:mod:`r1v2.rewards.answers`) and the format reward
  (:mod:`r1v2.rewards.fmt`): pure functions that never raise;
- the config parser (:mod:`r1v2.config`): ConfigError (an R1V2Error) and nothing else.

Each property runs a modest number of examples (the suite shares two cores); the cases the
fuzzing found are pinned as plain tests at the end of each section.
"""

from __future__ import annotations

import codecs
import io
import json
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from r1v2.config import ConfigError, load_yaml, option, parse_override, resolve
from r1v2.data.loaders import load_samples
from r1v2.data.pairs import is_pairs_data, load_pairs, parse_pair_record
from r1v2.data.schema import DataError, Sample, parse_record
from r1v2.errors import R1V2Error
from r1v2.eval.benchmarks import ADAPTERS, BenchmarkError, Row, Skip, read_rows
from r1v2.rewards import answers
from r1v2.rewards.fmt import format_reward

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- strategies ------------------------------------------------------------------------------

_PNG = io.BytesIO()
Image.new("RGB", (2, 2)).save(_PNG, format="PNG")
PNG = _PNG.getvalue()

# Text made of the pieces the parsers look for, so examples reach deep branches quickly.
TOKENS = [
    "\\boxed{", "\\boxed", "{", "}", "\\{", "\\}", "\\", "<think>", "</think>", "$", "$$",
    "\\(", "\\)", "\\text{", "\\circ", "°", "%", "answer is", "Answer:", "(B)", "B.", "b",
    "1,000", "3.5", "-2", "1e5", ".", " ", "\n", "cm", "km/h", "pi", "\u2212", "\u212a", "\u017f",
    "\u0131", "\x00", "\ufeff", "\ud7ff", "٣", "Option", "yes", "[1, 2]", "null", "true", ":",
    "#", "- ", "&a ", "*a", "!!binary ", "!!float ", "2020-13-45", "? ", "<<: ", "'", '"',
]  # fmt: skip
texts = st.one_of(
    st.text(),
    st.lists(st.sampled_from(TOKENS) | st.text(string.printable, max_size=3), max_size=40).map(
        "".join
    ),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Image paths as rows write them: present, missing, leaving the folder, absolute, odd.
IMAGE_PATHS = ["img.png", "missing.png", "../img.png", "a/../../img.png", "/img.png", "\x00", " "]
image_values = st.sampled_from(IMAGE_PATHS + ["字" * 100, {"path": "img.png"}, {"bytes": PNG}])
# Parquet and HF rows also hold bytes (embedded images) and image structs.
row_values = st.one_of(
    json_values,
    st.binary(max_size=20),
    st.just(PNG),
    image_values,
    st.lists(image_values, max_size=3),
)


def rows_with(keys: list[str], values=row_values) -> st.SearchStrategy[dict]:
    """Dicts whose keys are mostly the given field names, with any values."""
    return st.dictionaries(
        st.sampled_from(keys) | st.text(max_size=6), values, max_size=len(keys) + 2
    )


SAMPLE_KEYS = ["id", "question", "images", "answer", "choices", "kind", "metadata"]
PAIR_KEYS = ["id", "question", "image", "images", "chosen", "rejected", "choices", "metadata"]


def _dump(value) -> str:
    return json.dumps(value, default=lambda b: b.hex() if isinstance(b, bytes) else str(b))


def file_bytes(keys: list[str]) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, JSON lines of near-valid rows, and those lines in other encodings."""
    lines = st.lists(rows_with(keys).map(_dump) | texts, max_size=5).map("\n".join)
    encoded = st.tuples(
        lines, st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "latin-1"])
    )
    return st.one_of(
        st.binary(max_size=200),
        lines.map(lambda t: t.encode("utf-8", "surrogatepass")),
        encoded.map(lambda te: te[0].encode(te[1], "replace")),
        st.tuples(st.binary(max_size=30), lines).map(
            lambda bl: bl[0] + bl[1].encode("utf-8", "replace")
        ),
    )


# ---- the Sample loader and the pair loader -------------------------------------------------


def _in_tmp(name: str, data: bytes, fn):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        (Path(d) / "img.png").write_bytes(PNG)
        return fn(path)


@FUZZ
@given(
    data=file_bytes(SAMPLE_KEYS),
    suffix=st.sampled_from([".jsonl", ".parquet"]),
    outside=st.sampled_from(["allow", "warn", "refuse"]),
)
@example(data=b"[" * 5000, suffix=".jsonl", outside="allow")
@example(data=b'{"id": ' + b"1" * 4400 + b"}", suffix=".jsonl", outside="allow")
@example(data='{"id": "x"}\n'.encode("utf-16"), suffix=".jsonl", outside="allow")
@example(data=b"", suffix=".jsonl", outside="allow")
@example(data=b'{"metadata": "' + b"[" * 5000 + b'"}', suffix=".jsonl", outside="allow")
def test_load_samples_raises_only_data_errors(data, suffix, outside):
    def check(path):
        # skip mode: every problem is reported, nothing raised
        result = load_samples(path, on_bad="skip", images_outside=outside)
        assert all(isinstance(e, DataError) for e in result.problems + result.warnings)
        assert all(isinstance(s, Sample) for s in result.samples)
        try:
            load_samples(path, on_bad="error", images_outside=outside)
        except DataError as e:
            assert str(path) in str(e)  # names the file
            assert "\n" not in str(e)

    _in_tmp("data" + suffix, data, check)


@FUZZ
@given(record=json_values | rows_with(SAMPLE_KEYS))
def test_parse_record_reports_problems_never_raises(record):
    values, problems = parse_record(record, Path("/data"))
    if not problems:
        Sample(**values)


@FUZZ
@given(data=file_bytes(PAIR_KEYS), suffix=st.sampled_from([".jsonl", ".parquet"]))
@example(data=b"[" * 5000, suffix=".jsonl")
@example(data='{"chosen": "x"}\n'.encode("utf-16"), suffix=".jsonl")
@example(data=b'{"image": "img.png", "images": ["img.png", "missing.png"]}', suffix=".jsonl")
def test_load_pairs_raises_only_data_errors(data, suffix):
    def check(path):
        try:
            is_pairs_data(path)
        except DataError:
            pass
        result = load_pairs(path, on_bad="skip")
        assert all(isinstance(e, DataError) for e in result.problems)
        try:
            load_pairs(path, on_bad="error")
        except DataError as e:
            assert str(path) in str(e)

    _in_tmp("pairs" + suffix, data, check)


@FUZZ
@given(record=json_values | rows_with(PAIR_KEYS))
def test_parse_pair_record_never_raises(record):
    parse_pair_record(record, Path("/data"))


# ---- the benchmark adapters -----------------------------------------------------------------

BENCH_KEYS = sorted(
    {
        *"pid question image decoded_image choices unit precision answer question_type".split(),
        *"answer_type metadata query id options subject level context final_answer".split(),
        *"is_multiple_answer error subfield ID Problem Solution Answer problem question_id".split(),
        *"category image_1 image_2 image_3".split(),
    }
)


# Values the adapters branch on, so examples reach the deep branches.
BENCH_VALUES = st.one_of(
    row_values,
    st.sampled_from(
        [
            "float",
            "integer",
            "multiple-choice",
            "open",
            "free_form",
            "yes",
            "no",
            "A",
            "(B)",
            "img.png",
            "missing.png",
            "[1, 2]",
            "['a', 'b']",
            "[",
            "{[]: 1}",
            "1e999",
            "nan",
            "x",
            "0.5, 1",
            2,
            1.5,
            1e308,
            float("nan"),
            float("inf"),
            -1,
            True,
            [],
            {},
            {"path": "img.png"},
            {"bytes": None, "path": None},
            "data:image/png;base64,AAAA",
        ]
    ),  # fmt: skip
    st.lists(st.text(max_size=3), min_size=20, max_size=30),  # more options than letters
)


@FUZZ
@given(
    name=st.sampled_from([n for n, a in ADAPTERS.items() if a.convert is not None]),
    data=rows_with(BENCH_KEYS, BENCH_VALUES),
)
@example(
    name="mathvision",
    data={
        "id": "1",
        "question": "q",
        "options": list("abcdefghijklmnopqrstuvwxyz!"),
        "answer": "?",
    },
)
@example(
    name="mathvista",
    data={"pid": "1", "question": "q", "answer": "1", "answer_type": "float", "precision": "x"},
)
@example(
    name="mathvista",
    data={"pid": "1", "question": "q", "answer": "1", "answer_type": "float", "precision": 1e308},
)
@example(name="mmmu", data={"id": "1", "question": "q", "options": "{[]: 1}", "answer": "A"})
@example(
    name="pope", data={"question_id": "1", "question": "q", "answer": "yes", "image": "字" * 100}
)
@example(name="mmmu", data={"id": "1", "question": "<image 1" + "1" * 5000 + ">", "answer": "x"})
def test_adapters_return_a_sample_or_raise_benchmark_error(name, data):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "img.png").write_bytes(PNG)
        try:
            out = ADAPTERS[name].convert(Row(Path(d) / "b.jsonl", 1, data))
        except BenchmarkError as e:
            assert "\n" not in str(e)
            return
        assert isinstance(out, (Sample, Skip))


@FUZZ
@given(data=file_bytes(BENCH_KEYS), suffix=st.sampled_from([".jsonl", ".json", ".parquet"]))
@example(data="[1]".encode("utf-16"), suffix=".json")
@example(data=b"5", suffix=".json")
def test_benchmark_files_raise_only_benchmark_errors(data, suffix):
    def check(path):
        try:
            for row in read_rows(path):
                assert isinstance(row.data, dict)
        except R1V2Error as e:
            assert str(path) in str(e)

    _in_tmp("bench" + suffix, data, check)


# ---- answers and the format reward ----------------------------------------------------------


@FUZZ
@given(text=texts, after_think=st.booleans(), n_choices=st.integers(0, 30))
def test_answer_functions_never_raise(text, after_think, n_choices):
    got = answers.extract_answer(text, after_think=after_think)
    assert got is None or isinstance(got, str)
    region = answers.answer_region(text, after_think=after_think)
    assert region is None or region in text
    assert all(b is None or b in text for b in answers.boxed_contents(text))
    assert isinstance(answers.balanced(text), bool)
    cleaned = answers.clean(text)
    assert isinstance(cleaned, str)
    for candidate in (text, cleaned):
        for lower in (False, True):
            index = answers.as_letter(candidate, allow_lower=lower)
            assert index is None or 0 <= index < 26
        parsed = answers.number_unit(candidate)
        assert parsed is None or isinstance(parsed[0], float)
        assert answers.as_number(candidate) == (None if parsed is None else parsed[:2])
        answers.is_words(candidate)
    fallback = answers.fallback_answer(text, n_choices=n_choices)
    assert fallback is None or isinstance(fallback, str)
    for i, c in enumerate(text):
        if c == "{":
            close = answers.matching_brace(text, i)
            assert close is None or text[close] == "}"


@FUZZ
@given(text=texts)
def test_format_reward_is_zero_or_one(text):
    assert format_reward(text) in (0.0, 1.0)


# ---- the config parser ----------------------------------------------------------------------


@dataclass
class _Section:
    flag: bool = option(True, "a bool")
    names: list[str] = option(["a"], "a list")


@dataclass
class _Config:
    name: str = option("x", "a str")
    steps: int = option(1, "an int")
    rate: float = option(0.5, "a float")
    mode: str | None = option(None, "an optional str")
    weights: dict[str, float] = option({"a": 1.0}, "a dict")
    section: _Section = option(_Section(), "a section")


@FUZZ
@given(text=texts)
@example(text="a=2020-13-45")
@example(text="a=!!float x")
@example(text="a=" + "[" * 5000)
def test_parse_override_raises_only_config_error(text):
    try:
        key, _ = parse_override(text)
    except ConfigError:
        return
    assert isinstance(key, str)


YAML_KEYS = ["name", "steps", "rate", "mode", "weights", "section", "flag", "names", "x"]


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=100),
        texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.lists(st.sampled_from(YAML_KEYS + TOKENS) | texts, max_size=12).map(
            lambda parts: "".join(p + (": " if p in YAML_KEYS else "") for p in parts).encode(
                "utf-8", "surrogatepass"
            )
        ),
        texts.map(lambda t: t.encode("utf-16", "surrogatepass")),
    ),
    overrides=st.lists(texts, max_size=2),
)
@example(data=b"a: &a {b: *a}\n", overrides=[])
@example(data=b"section: &a {flag: *a}\n", overrides=[])
@example(data=b"? [1]\n: 2\n", overrides=[])
@example(data=b"steps: 2020-13-45\n", overrides=[])
@example(data=b"steps: !!int x\n", overrides=[])
@example(data=b"!!float ", overrides=["steps=!!float "])
@example(data=b"x: " + b"[" * 5000, overrides=[])
@example(data=codecs.BOM_UTF16_LE + "steps: 2\n".encode("utf-16-le"), overrides=[])
def test_config_parser_raises_only_config_error(data, overrides):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_bytes(data)
        try:
            loaded = load_yaml(path)
        except ConfigError as e:
            assert str(path) in str(e)
        else:
            assert isinstance(loaded, dict)
        try:
            resolve(_Config, path, overrides)
        except ConfigError:
            pass


def test_yaml_utf16_and_binary_are_named_errors(tmp_path):
    u16 = tmp_path / "u16.yaml"
    u16.write_text("steps: 2\n", encoding="utf-16")
    with pytest.raises(ConfigError, match=r"u16.yaml: .*UTF-16"):
        load_yaml(u16)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match=r"bin.yaml:1: .*binary"):
        load_yaml(binary)


def _command_configs() -> list[type]:
    import importlib

    from r1v2.cli import COMMANDS

    out = []
    for c in COMMANDS:
        module, name = c.config.split(":")
        out.append(getattr(importlib.import_module(module), name))
    return out


override_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(),
    texts,
    st.lists(st.integers(-3, 3) | st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.floats() | st.text(max_size=3), max_size=2),
)


@FUZZ
@given(data=st.data())
def test_every_command_config_raises_only_r1v2_errors(data):
    """Any values for any keys of a command's config: a config, or an R1V2Error (a ConfigError,
    or the config's own validate()); never a TypeError from a comparison deep in validate()."""
    from r1v2.config import leaf_fields

    cls = data.draw(st.sampled_from(_command_configs()))
    keys = sorted(leaf_fields(cls))
    items = data.draw(st.lists(st.tuples(st.sampled_from(keys), override_values), max_size=3))
    try:
        resolve(cls, None, items)
    except R1V2Error:
        pass
