"""Benchmark adapters: local copies of public benchmarks, in their published field layouts, as Samples.

Each adapter maps one row to a :class:`r1v2.data.schema.Sample` (or a :class:`Skip` with a
reason) and names the scorer that grades it (``r1v2.eval.scoring.SCORERS``). Every adapter puts
the field its benchmark reports breakdowns by into ``metadata["category"]``.

Files: ``.jsonl``, ``.json`` (a list of rows), ``.parquet`` or ``.csv`` (with a header); a folder is read recursively in
sorted order (MMMU ships one parquet per subject). For parquet, "line" in messages is the
1-based row number. Images may be embedded (raw bytes, HF-style ``{"bytes": ..., "path": ...}``
dicts, base64 strings or ``data:`` URIs) or files relative to the data file's folder.

Layouts (field names as published):

- ``mathvista`` (testmini): pid, question, image / decoded_image, choices, unit, precision,
  answer, question_type, answer_type, metadata, query. Multiple-choice answers are option texts
  and become letters; ``query`` is not used (the prompt is built here, with unit and precision
  hints); category = metadata.task.
- ``mmmu`` (validation): id, question, options (a string repr of a list), image_1..image_7,
  answer, question_type; ``<image k>`` placeholders become ``[image k]``; category = subject
  (from the ``subject`` field or the id ``validation_<Subject>_<n>``). Open answers written as a
  list (``"['24/7', '3.429']"``) accept any of them.
- ``mmmu-pro``: the standard layout as MMMU (with ``subject``), or the vision layout (id, image,
  options, answer, subject) whose question and options are inside the image.
- ``mathvision``: id, question, options, image / decoded_image, answer, level, subject.
- ``olympiadbench``: id, question, context, final_answer (list), is_multiple_answer,
  answer_type, unit, error, image_1..image_5, subject, subfield. Rows without a final answer
  (theorem proving) are skipped with a reason. category = subject.
- ``aime2024``: ID, Problem, Solution, Answer (lower-case names are accepted too). Text only.
- ``pope``: question_id, question, answer (yes/no), image, category.
- ``gpqa`` (GPQA Diamond, main or extended; text only): the published CSV (or its parquet
  export) with Question, Correct Answer, Incorrect Answer 1-3, Record ID, High-level domain.
  The four answers are shuffled per item with a seed (option ``seed``, default 0:
  ``gpqa[seed=1]=PATH``) and asked as letters A-D; category = High-level domain.
- ``ifeval`` (text only): key, prompt, instruction_id_list, kwargs (one dict per instruction;
  None values are dropped, as lm-eval does), Google's ``input_data.jsonl`` or the parquet
  export. The prompt is asked as it is (no boxed-answer instruction) and scored by lm-eval's
  checkers (``r1v2.eval.ifeval``); category = the first instruction's group (``change_case``).
- ``bfcl`` (Berkeley Function Calling Leaderboard; text only): the leaderboard's JSON-lines
  files (``BFCL_v4_simple_python.json``, ``_multiple``, ``_parallel``, ``_parallel_multiple``:
  id, question (one turn of messages), function (the JSON docs)) with their possible answers
  where the leaderboard keeps them, ``possible_answer/<same name>`` beside the data file. The
  prompt is BFCL's own and the calls are checked by its AST checker (``r1v2.eval.bfcl``, in
  bfcl-eval's own environment); category = BFCL's category (``parallel``).
- ``livecodebench`` (alias ``lcb``; code generation): question_id, question_title,
  question_content, platform, contest_id, contest_date, starter_code, difficulty,
  public_test_cases, private_test_cases (JSON, or base64 of zlib of a pickle, read without ever
  running it), metadata (func_name). Scored by running the tests (``r1v2.eval.livecodebench``);
  category = difficulty. Options: a contest_date window, a platform, the time per test.
- ``samples`` (alias ``synthetic``): the project's Sample JSONL/parquet, through
  ``r1v2.data.loaders.load_samples``; the synthetic task's output (a scene in metadata) enables
  the hallucination rate. category = metadata.category, else ``level N`` from metadata.level.

A spec is ``NAME=PATH`` or ``LABEL:ADAPTER=PATH``; an adapter that takes options reads them in
brackets after its name: ``livecodebench[start_date=2024-08-01,end_date=2025-01-31]=PATH``.
"""

from __future__ import annotations

import ast
import base64
import binascii
import functools
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1v2.data.images import ImageError, ImageSource, describe_source, probe_image
from r1v2.data.schema import Sample
from r1v2.data.text import json_loads, read_text
from r1v2.errors import R1V2Error

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class BenchmarkError(R1V2Error):
    """A benchmark file that cannot be read; the message names file, line and field."""


@dataclass(frozen=True)
class Skip:
    """A row the benchmark's protocol cannot score (e.g. a proof without a final answer), or
    one its options leave out (``id`` given: responses to it are ignored, not refused)."""

    reason: str
    id: str | None = None


@dataclass
class Benchmark:
    """A loaded benchmark: its samples, the scorer that grades them, and skipped rows."""

    name: str  # the label results are reported under
    adapter: str
    path: Path
    samples: list[Sample]
    scorer: str
    instruct: bool  # whether prompts get the benchmark's instruction (boxed answer, code)
    skipped: list[str] = field(default_factory=list)  # "file:line: reason"
    options: dict[str, str] = field(default_factory=dict)  # as given in the spec
    left_out: set[str] = field(default_factory=set)  # ids of rows the options left out


@dataclass(frozen=True)
class Row:
    """Where a row came from, with helpers that name file, line and field in errors."""

    file: Path
    line: int
    data: dict

    def where(self, name: str | None = None) -> str:
        return f"{self.file}:{self.line}" + (f": field '{name}'" if name else "")

    def error(self, name: str | None, reason: str) -> BenchmarkError:
        return BenchmarkError(f"{self.where(name)}: {reason}")

    def get(self, *names: str, default: Any = ..., kind: type | tuple[type, ...] | None = None):
        """The first of ``names`` present and not None; ``default`` or an error otherwise."""
        for name in names:
            value = self.data.get(name)
            if value is not None and not _is_nan(value):
                if kind is not None and not isinstance(value, kind):
                    raise self.error(
                        name, f"expected {_kind_name(kind)}, got {type(value).__name__}"
                    )
                return value
        if default is not ...:
            return default
        raise self.error(names[0], "missing")

    def image(self, name: str) -> ImageSource | None:
        return image_source(self.data.get(name), self.file.parent, self, name)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


# ---- reading rows -----------------------------------------------------------------------


def data_files(path: str | Path) -> list[Path]:
    """The data files at ``path``: the file itself, or a folder's files (recursive, sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
        if not files:
            raise BenchmarkError(f"{path}: no {', '.join(DATA_SUFFIXES)} files in this folder")
        return files
    if not path.exists():
        raise BenchmarkError(f"{path}: no such file or folder")
    if path.suffix not in DATA_SUFFIXES:
        raise BenchmarkError(f"{path}: unsupported file type (expected {', '.join(DATA_SUFFIXES)})")
    return [path]


def read_rows(path: str | Path) -> Iterator[Row]:
    """Every row of the file(s) at ``path``, with its file and 1-based line (or row) number."""
    for file in data_files(path):
        if file.suffix == ".parquet":
            yield from _parquet_rows(file)
        elif file.suffix == ".csv":
            yield from _csv_rows(file)
        elif file.suffix == ".json":
            yield from _json_rows(file)
        else:
            yield from _jsonl_rows(file)


def _text(file: Path) -> str:
    """The file as UTF-8 text; UTF-16, binary data and bad UTF-8 are BenchmarkErrors."""
    try:
        return read_text(file)
    except R1V2Error as e:
        raise BenchmarkError(str(e)) from None


def _jsonl_rows(file: Path) -> Iterator[Row]:
    for i, line in enumerate(_text(file).split("\n"), 1):
        if not line.strip():
            continue
        try:
            data = json_loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkError(f"{file}:{i}: malformed JSON: {e.msg}") from e
        if not isinstance(data, dict):
            raise BenchmarkError(f"{file}:{i}: expected a JSON object, got {type(data).__name__}")
        yield Row(file, i, data)


def _json_rows(file: Path) -> Iterator[Row]:
    """One JSON document (a list of rows, or an object of them), or JSON Lines under a
    ``.json`` name (BFCL's files): several documents, or one object that is a row."""
    try:
        data = json_loads(_text(file))
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # more than one document: JSON Lines
            yield from _jsonl_rows(file)
            return
        raise BenchmarkError(f"{file}:{e.lineno}: malformed JSON: {e.msg}") from e
    if isinstance(data, dict) and not all(isinstance(v, dict) for v in data.values()):
        data = [data]  # one JSON-lines row: not an object of rows
    elif isinstance(data, dict):  # {"id": row, ...}, as some benchmark dumps are written
        data = [
            {"id": k, **v} if isinstance(v, dict) and "id" not in v else v for k, v in data.items()
        ]
    if not isinstance(data, list):
        raise BenchmarkError(
            f"{file}: expected a list of rows (or an object of them), got {type(data).__name__}"
        )
    for i, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise BenchmarkError(f"{file}:{i}: row {i} is not an object")
        yield Row(file, i, row)


def _csv_rows(file: Path) -> Iterator[Row]:
    """A CSV with a header row (GPQA's published files); line numbers count the header as 1
    (a quoted field spanning lines counts as its first line)."""
    import csv
    import io

    reader = csv.DictReader(io.StringIO(_text(file), newline=""))
    line = reader.line_num + 1
    for data in reader:
        if None in data:  # more cells than the header names
            raise BenchmarkError(
                f"{file}:{line}: more cells than the header's {len(reader.fieldnames or [])}"
            )
        yield Row(file, line, {k: (v if v != "" else None) for k, v in data.items()})
        line = reader.line_num + 1


def _parquet_rows(file: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(file)
    except Exception as e:  # pyarrow raises several types for a broken file
        raise BenchmarkError(f"{file}: cannot read parquet: {e}") from e
    i = 0
    for batch in pf.iter_batches(batch_size=256):
        for data in batch.to_pylist():
            i += 1
            yield Row(file, i, data)


# ---- images -----------------------------------------------------------------------------


def image_source(value: Any, base_dir: Path, row: Row | None = None, name: str = "image"):
    """Normalise an image field to a Path (checked to exist) or bytes (header checked), or None.

    Accepts raw bytes, ``{"bytes": ..., "path": ...}`` dicts (bytes win), base64 strings, data
    URIs, and file paths relative to ``base_dir``.
    """

    def fail(reason: str) -> BenchmarkError:
        return row.error(name, reason) if row is not None else BenchmarkError(f"{name}: {reason}")

    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return image_source(value["bytes"], base_dir, row, name)
        if value.get("path"):
            return image_source(str(value["path"]), base_dir, row, name)
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _checked(bytes(value), fail)
    if not isinstance(value, str):
        raise fail(f"expected image bytes, a path or base64 text, got {type(value).__name__}")
    if value.startswith("data:"):
        value = value.split(",", 1)[-1]
    elif len(value) < 260:
        path = Path(value) if Path(value).is_absolute() else base_dir / value
        try:
            is_file = path.is_file()
        except OSError:  # a name too long for the file system: not a file, maybe base64
            is_file = False
        if is_file:
            return _checked(path, fail)
    try:
        # Any real image is longer than a path; a short string is read as a missing file.
        data = base64.b64decode(value, validate=True) if len(value) >= 100 else None
    except (binascii.Error, ValueError):
        data = None
    if data is None:
        raise fail(f"file not found: {value[:200]}")
    return _checked(data, fail)


def _checked(source: ImageSource, fail: Callable[[str], BenchmarkError]) -> ImageSource:
    """Read only the header (size, format): refuses non-images and images over the pixel limit."""
    try:
        probe_image(source)
    except ImageError as e:
        raise fail(e.describe(describe_source(source))) from e
    return source


# ---- shared helpers -----------------------------------------------------------------------


def _as_list(row: Row, name: str, value: Any) -> list:
    """A list field, also when written as a string repr (MMMU's ``options``)."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        try:
            value = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
            raise row.error(name, f"cannot read a list from {text[:80]!r}") from e
    if not isinstance(value, (list, tuple)):
        raise row.error(name, f"expected a list, got {type(value).__name__}")
    return list(value)


def _letter_answer(
    row: Row, name: str, answer: str, choices: tuple[str, ...], *, text_first: bool = False
) -> str:
    """The answer as a letter: a letter in range, or the text of one of the choices.

    ``text_first`` tries the option texts before the letters (MathVista's answers are texts,
    and an option text may itself be a letter).
    """
    if len(choices) > len(LETTERS):
        raise row.error(name, f"{len(choices)} options, more than the letters A-Z")
    text = answer.strip()
    if text_first and text in choices:
        return LETTERS[choices.index(text)]
    letter = text.strip("()").rstrip(".").upper()
    if len(letter) == 1 and letter in LETTERS[: len(choices)]:
        return letter
    if text in choices:
        return LETTERS[choices.index(text)]
    raise row.error(
        name,
        f"answer {answer!r} is neither a letter A-{LETTERS[len(choices) - 1]} nor one of the choices",
    )


def _images(row: Row, names: list[str]) -> tuple[list[ImageSource], dict[int, int]]:
    """Non-empty image fields in order, and each field's 1-based number -> its position."""
    images, position = [], {}
    for name in names:
        src = row.image(name)
        if src is not None:
            images.append(src)
            position[int(re.sub(r"\D", "", name))] = len(images)
    return images, position


def _renumber(text: str, pattern: str, position: dict[int, int]) -> str:
    """Replace image placeholders (``<image 2>``, ``<image_2>``, ``<image2>``) by ``[image k]``,
    k the image's position in the prompt."""
    return re.sub(
        pattern, lambda m: f"[image {position.get(int(m.group(1)), int(m.group(1)))}]", text
    )


def _sample(**kwargs: Any) -> Sample:
    kwargs["images"] = tuple(kwargs.get("images", ()))
    return Sample(**kwargs)


# ---- adapters -----------------------------------------------------------------------------


def mathvista(row: Row):
    pid = str(row.get("pid", "id"))
    question = row.get("question", kind=str)
    answer = str(row.get("answer"))
    meta = row.get("metadata", default={}) or {}
    image = (
        row.image("decoded_image")
        if row.data.get("decoded_image") is not None
        else row.image("image")
    )
    choices = tuple(str(c) for c in _as_list(row, "choices", row.data.get("choices"))) or None
    precision = row.get("precision", default=None, kind=(int, float))
    if precision is not None and not (math.isfinite(precision) and 0 <= precision <= 20):
        raise row.error("precision", f"expected a number of decimal places, got {precision!r}")
    unit = row.get("unit", default="") or ""
    hints = []
    if unit and not choices:
        hints.append(f"(Unit: {unit})")
    if precision is not None and not choices and row.get("answer_type", default="") == "float":
        # Our wording of MathVista's precision hint; its `query` field is not used.
        hints.append(f"Give the answer as a number with {int(precision)} decimal place(s).")
    if choices:
        answer = _letter_answer(row, "answer", answer, choices, text_first=True)
    return _sample(
        id=pid,
        question=" ".join([question, *hints]),
        images=[image] if image is not None else [],
        answer=answer,
        choices=choices,
        kind="choice" if choices else "math",
        metadata={
            "category": meta.get("task") if isinstance(meta, dict) else None,
            "precision": int(precision) if precision is not None else None,
            "unit": unit,
            "answer_type": row.get("answer_type", default=None),
            "question_type": row.get("question_type", default=None),
            "source_metadata": meta,
        },
    )


def _mmmu_subject(row: Row, sample_id: str) -> str | None:
    subject = row.get("subject", default=None)
    if subject is None:
        m = re.match(r"^[a-z]+_(.+)_\d+$", sample_id)
        subject = m.group(1) if m else None
    return subject


_MMMU_PLACEHOLDER = r"<image ([0-9]{1,9})>"


def mmmu(row: Row):
    sample_id = str(row.get("id"))
    if "question" not in row.data and "image" in row.data:
        return _mmmu_pro_vision(row, sample_id)
    images, position = _images(row, [f"image_{k}" for k in range(1, 8)])
    question = _renumber(row.get("question", kind=str), _MMMU_PLACEHOLDER, position)
    options = [
        _renumber(str(o), _MMMU_PLACEHOLDER, position)
        for o in _as_list(row, "options", row.data.get("options"))
    ]
    qtype = row.get("question_type", default="multiple-choice" if options else "open")
    answer = row.get("answer")
    meta = {"category": _mmmu_subject(row, sample_id), "question_type": qtype}
    if qtype == "multiple-choice" and options:
        choices = tuple(options)
        return _sample(
            id=sample_id,
            question=question,
            images=images,
            choices=choices,
            kind="choice",
            answer=_letter_answer(row, "answer", str(answer), choices),
            metadata=meta,
        )
    alternatives = (
        _as_list(row, "answer", answer)
        if isinstance(answer, (list, tuple)) or str(answer).startswith("[")
        else [answer]
    )
    alternatives = [str(a) for a in alternatives]
    if not alternatives:
        raise row.error("answer", "empty")
    meta["answers"] = alternatives  # MMMU open questions may accept several answers
    return _sample(
        id=sample_id,
        question=question,
        images=images,
        choices=None,
        kind="open",
        answer=alternatives[0],
        metadata=meta,
    )


def _mmmu_pro_vision(row: Row, sample_id: str):
    image = row.image("image")
    if image is None:
        raise row.error("image", "missing")
    choices = tuple(str(o) for o in _as_list(row, "options", row.data.get("options")))
    if not choices:
        raise row.error("options", "empty")
    return _sample(
        id=sample_id,
        question="The question and its options are shown in the image. Solve it.",
        images=[image],
        answer=_letter_answer(row, "answer", str(row.get("answer")), choices),
        choices=choices,
        kind="choice",
        metadata={"category": row.get("subject", default=None), "choices_in_image": True},
    )


def mathvision(row: Row):
    sample_id = str(row.get("id"))
    image = (
        row.image("decoded_image")
        if row.data.get("decoded_image") is not None
        else row.image("image")
    )
    images = [image] if image is not None else []
    question = _renumber(row.get("question", kind=str), r"<image([0-9]{1,9})>", {1: 1})
    choices = tuple(str(o) for o in _as_list(row, "options", row.data.get("options"))) or None
    answer = str(row.get("answer"))
    if choices:
        answer = _letter_answer(row, "answer", answer, choices)
    return _sample(
        id=sample_id,
        question=question,
        images=images,
        answer=answer,
        choices=choices,
        kind="choice" if choices else "math",
        metadata={
            "category": row.get("subject", default=None),
            "level": row.get("level", default=None),
        },
    )


def _strip_dollars(text: str) -> str:
    """``"$x$"`` -> ``"x"`` (math delimiters around an answer, or left over from a split)."""
    return text.strip().strip("$").strip()


def olympiadbench(row: Row):
    sample_id = str(row.get("id", "question_id", default=row.line))
    raw = row.data.get("final_answer")
    finals = (
        _as_list(row, "final_answer", raw)
        if not isinstance(raw, str) or raw.startswith("[")
        else [raw]
    )
    if not finals:
        return Skip("no final answer (theorem proving is not scored by rules)")
    answers: list[str] = []
    for item in finals:
        answers += [_strip_dollars(a) for a in re.split(r"\$\s*,\s*\$", str(item))]
    images, position = _images(row, [f"image_{k}" for k in range(1, 6)])
    text = row.get("question", kind=str)
    context = row.get("context", default="") or ""
    question = _renumber(f"{context}\n{text}".strip(), r"<image_([0-9]{1,9})>", position)
    multiple = bool(row.get("is_multiple_answer", default=False)) and len(answers) > 1
    unit = row.get("unit", default="") or ""
    hints = []
    if multiple:
        hints.append(
            "The problem has several answers: give all of them in one \\boxed{}, separated by commas."
        )
    if unit:
        hints.append(f"The unit of the answer is {unit}; leave it out of the box.")
    error = row.get("error", default=None)
    tolerance = None
    if error is not None:
        try:
            tolerance = float(str(error).split(",")[0])
        except ValueError as e:
            raise row.error("error", f"not a number: {error!r}") from e
    return _sample(
        id=sample_id,
        question=" ".join([question, *hints]),
        images=images,
        answer=", ".join(answers),
        choices=None,
        kind="math",
        metadata={
            "category": row.get("subject", default=None),
            "subfield": row.get("subfield", default=None),
            "answers": answers,
            "multiple": multiple,
            "tolerance": tolerance,
            "unit": unit,
            "answer_type": row.get("answer_type", default=None),
        },
    )


def aime2024(row: Row):
    return _sample(
        id=str(row.get("ID", "id", default=row.line)),
        question=row.get("Problem", "problem", kind=str),
        images=[],
        answer=str(row.get("Answer", "answer")).strip(),
        choices=None,
        kind="math",
        metadata={"category": None},
    )


def pope(row: Row):
    answer = str(row.get("answer")).strip().lower()
    if answer not in ("yes", "no"):
        raise row.error("answer", f"expected yes or no, got {answer!r}")
    image = row.image("image")
    if image is None:
        raise row.error("image", "missing")
    return _sample(
        id=str(row.get("question_id", "id")),
        question=row.get("question", kind=str),
        images=[image],
        answer=answer,
        choices=None,
        kind="open",
        metadata={"category": row.get("category", default=None)},
    )


GPQA_WRONG = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def gpqa(row: Row, options: Any = None):
    """GPQA (Diamond, or the main/extended sets): the correct answer and three incorrect ones,
    shuffled per item by a seeded generator keyed on the item's id (the field's practice: the
    published files list the correct answer first), asked as lettered choices."""
    import random

    seed = 0 if options is None else options
    record = str(row.get("Record ID", "id", default=row.line))
    right = str(row.get("Correct Answer", kind=str)).strip()
    choices = [right, *(str(row.get(name, kind=str)).strip() for name in GPQA_WRONG)]
    random.Random(f"gpqa:{seed}:{record}").shuffle(choices)
    return _sample(
        id=record,
        question=row.get("Question", kind=str).strip(),
        images=[],
        answer=LETTERS[choices.index(right)],
        choices=tuple(choices),
        kind="choice",
        metadata={"category": row.get("High-level domain", default=None)},
    )


def _gpqa_options(raw: dict[str, str]) -> int:
    unknown = set(raw) - {"seed"}
    if unknown:
        raise BenchmarkError(f"gpqa takes the option seed, not {', '.join(sorted(unknown))}")
    try:
        return int(raw.get("seed", 0))
    except ValueError as e:
        raise BenchmarkError(f"gpqa option seed: expected an integer, got {raw['seed']!r}") from e


def ifeval(row: Row):
    """IFEval: a prompt with its verifiable instructions (ids from lm-eval's registry) and the
    keyword arguments of each."""
    ids = _as_list(row, "instruction_id_list", row.get("instruction_id_list"))
    kwargs = _as_list(row, "kwargs", row.get("kwargs", default=[{}] * len(ids)))
    if not ids or not all(isinstance(i, str) for i in ids):
        raise row.error("instruction_id_list", "expected a non-empty list of instruction ids")
    if len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        raise row.error("kwargs", f"expected {len(ids)} dicts, one per instruction")
    from r1v2.eval.ifeval import instruction_error

    error = instruction_error(ids, kwargs)
    if error is not None:
        field = "instruction_id_list" if error.startswith("unknown") else "kwargs"
        raise row.error(field, error)
    return _sample(
        id=str(row.get("key", "id", default=row.line)),
        question=row.get("prompt", kind=str),
        images=[],
        answer="",
        choices=None,
        kind="instruction",
        metadata={
            "instruction_id_list": ids,
            "kwargs": [{k: v for k, v in d.items() if v is not None} for d in kwargs],
            "category": ids[0].partition(":")[0],
        },
    )


def _bfcl_answers(data_file: Path) -> tuple[Path, dict[str, list]]:
    """The possible answers of a BFCL data file, by id, from ``possible_answer/<name>``."""
    path = data_file.parent / "possible_answer" / data_file.name
    if not path.is_file():
        raise BenchmarkError(
            f"{data_file}: no possible answers at {path} (BFCL's layout: possible_answer/"
            "<the same file name> beside the data file)"
        )
    stat = path.stat()
    return path, _read_bfcl_answers(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_bfcl_answers(path: Path, mtime_ns: int, size: int) -> dict[str, list]:
    """Read once per load of a file (keyed on its modification time and size, so an edited
    file is read again)."""
    return {str(r.get("id", kind=str)): r.get("ground_truth", kind=list) for r in read_rows(path)}


def _bfcl_doc(doc: Any) -> bool:
    """Whether ``doc`` has what BFCL's prompt and checker read of a function doc."""
    params = doc.get("parameters") if isinstance(doc, dict) else None
    return (
        isinstance(doc.get("name") if isinstance(doc, dict) else None, str)
        and isinstance(doc.get("description"), str)
        and isinstance(params, dict)
        and isinstance(params.get("properties"), dict)
    )


def bfcl(row: Row):
    """BFCL, AST categories: one user turn, the functions the model may call, and the possible
    answers of the entry (BFCL's ``possible_answer`` file); the prompt is BFCL's, built when
    the file is loaded (:func:`_bfcl_prompts`)."""
    from r1v2.eval.bfcl import CATEGORIES, category_of

    if row.file.parent.name == "possible_answer":
        raise row.error(
            None, "a possible-answer file: give BFCL's data file, its answers are read beside it"
        )
    entry_id = row.get("id", kind=str)
    category = category_of(entry_id)
    if category not in CATEGORIES:
        raise row.error(
            "id", f"BFCL category {category!r} is not scored (r1v2 scores {', '.join(CATEGORIES)})"
        )
    turns = row.get("question", kind=list)
    if len(turns) != 1 or not isinstance(turns[0], list) or not turns[0]:
        raise row.error("question", "expected one turn: a non-empty list of messages")
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in turns[0]):
        raise row.error("question", "expected messages with a role and a text content")
    functions = row.get("function", kind=list)
    if not functions or not all(_bfcl_doc(f) for f in functions):
        raise row.error(
            "function",
            "expected a non-empty list of function docs (name, description, "
            "parameters with properties)",
        )
    path, answers = _bfcl_answers(row.file)
    if entry_id not in answers:
        raise row.error("id", f"no possible answer for {entry_id!r} in {path}")
    return _sample(
        id=entry_id,
        question="",
        images=[],
        answer="",
        choices=None,
        kind="function_call",
        metadata={
            "category": category,
            "bfcl_question": turns,
            "function": functions,
            "possible_answer": answers[entry_id],
        },
    )


def _bfcl_prompts(samples: list[Sample]) -> list[Sample]:
    """The samples with BFCL's prompts (one call to bfcl-eval for the whole file)."""
    from dataclasses import replace

    from r1v2.eval.bfcl import prompts

    entries = [
        {"id": s.id, "question": s.metadata["bfcl_question"], "function": s.metadata["function"]}
        for s in samples
    ]
    try:
        texts = prompts(entries)
    except R1V2Error as e:
        raise BenchmarkError(str(e)) from None
    return [replace(s, question=text) for s, text in zip(samples, texts)]


def livecodebench(row: Row, options: Any = None):
    from r1v2.eval.livecodebench import Options, convert  # imports this module: loaded on use

    return convert(row, options if options is not None else Options())


def _livecodebench_options(raw: dict[str, str]) -> Any:
    from r1v2.eval.livecodebench import parse_options

    return parse_options(raw)


@dataclass(frozen=True)
class Adapter:
    """How one benchmark layout becomes Samples, and how they are scored.

    An adapter with ``options`` parses the spec's bracketed ``key=value`` options with it and
    passes the result to ``convert`` as its second argument.
    """

    name: str
    convert: Callable[..., Any] | None  # row -> Sample | Skip; None: a Sample file
    scorer: str
    instruct: bool = True
    options: Callable[[dict[str, str]], Any] | None = None
    finish: Callable[[list[Sample]], list[Sample]] | None = None  # on all samples, once


ADAPTERS: dict[str, Adapter] = {
    a.name: a
    for a in [
        Adapter("mathvista", mathvista, "mathvista"),
        Adapter("mmmu", mmmu, "any_of"),
        Adapter("mmmu-pro", mmmu, "any_of"),
        Adapter("mathvision", mathvision, "accuracy"),
        Adapter("olympiadbench", olympiadbench, "olympiad"),
        Adapter("aime2024", aime2024, "accuracy"),
        Adapter("pope", pope, "yesno"),
        Adapter("gpqa", gpqa, "accuracy", options=_gpqa_options),
        Adapter("ifeval", ifeval, "ifeval", instruct=False),
        Adapter("bfcl", bfcl, "bfcl", instruct=False, finish=_bfcl_prompts),
        Adapter("livecodebench", livecodebench, "code", options=_livecodebench_options),
        # Sample files are shown as they are stored: the toy models know only their own words.
        Adapter("samples", None, "accuracy", instruct=False),
    ]
}
ALIASES = {
    "aime24": "aime2024",
    "aime": "aime2024",
    "mmmupro": "mmmu-pro",
    "synthetic": "samples",
    "synth": "samples",
    "jsonl": "samples",
    "generic": "samples",
    "lcb": "livecodebench",
}


def adapter_for(name: str) -> Adapter:
    """The adapter called ``name`` (case, ``-`` and ``_`` ignored; aliases accepted)."""
    key = re.sub(r"[-_ ]", "", name.lower())
    for canon in ADAPTERS:
        if key == canon.replace("-", ""):
            return ADAPTERS[canon]
    if key in ALIASES:
        return ADAPTERS[ALIASES[key]]
    names = ", ".join([*ADAPTERS, *ALIASES])
    raise BenchmarkError(
        f"unknown benchmark {name!r}; known: {names} (use LABEL:ADAPTER=PATH for your own label)"
    )


_SPEC = re.compile(r"^([^=\[\]]*)(?:\[([^\]]*)\])?=(.*)$", re.DOTALL)
_SPEC_FORM = "NAME=PATH (or LABEL:ADAPTER=PATH, with options NAME[key=value,...]=PATH)"


def parse_bench_spec(spec: str) -> tuple[str, Adapter, Path, dict[str, str]]:
    """``NAME=PATH``, ``LABEL:ADAPTER=PATH``, either with ``[key=value,...]`` after the name
    -> (label, adapter, path, options). Options are checked by :func:`load_benchmark`."""
    m = _SPEC.match(spec)
    if m is None:
        raise BenchmarkError(f"--bench {spec!r}: expected {_SPEC_FORM}")
    name, raw, path = m.group(1), m.group(2), m.group(3)
    label, _, adapter = name.partition(":")
    if not label or not path:
        raise BenchmarkError(f"--bench {spec!r}: expected {_SPEC_FORM}")
    options: dict[str, str] = {}
    for item in (raw or "").split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise BenchmarkError(f"--bench {spec!r}: option {item!r} is not key=value")
        if key in options:
            raise BenchmarkError(f"--bench {spec!r}: option {key!r} given twice")
        options[key] = value.strip()
    return label, adapter_for(adapter or label), Path(path), options


def parse_bench(spec: str) -> tuple[str, Adapter, Path]:
    """``NAME=PATH`` or ``LABEL:ADAPTER=PATH`` -> (label, adapter, path); see
    :func:`parse_bench_spec` for options."""
    label, adapter, path, _ = parse_bench_spec(spec)
    return label, adapter, path


def load_benchmark(spec: str, *, limit: int | None = None) -> Benchmark:
    """Load ``NAME=PATH`` (see :func:`parse_bench_spec`); ``limit`` keeps the first N samples."""
    label, adapter, path, raw_options = parse_bench_spec(spec)
    if raw_options and adapter.options is None:
        raise BenchmarkError(f"--bench {spec!r}: the {adapter.name} adapter takes no options")
    convert = adapter.convert
    if adapter.options is not None:
        parsed = adapter.options(raw_options)
        convert = functools.partial(adapter.convert, options=parsed)
    if adapter.convert is None:
        samples = _load_sample_file(path)
        skipped: list[str] = []
        left_out: set[str] = set()
    else:
        samples, skipped, left_out = [], [], set()
        seen: dict[str, str] = {}
        for row in read_rows(path):
            if limit is not None and len(samples) >= limit:
                break
            out = convert(row)
            if isinstance(out, Skip):
                skipped.append(f"{row.where()}: {out.reason}")
                if out.id is not None:
                    left_out.add(out.id)
                continue
            if out.id in seen:
                raise BenchmarkError(
                    f"{row.where('id')}: duplicate id {out.id!r} (first at {seen[out.id]})"
                )
            seen[out.id] = row.where()
            samples.append(out)
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise BenchmarkError(f"{path}: no samples to evaluate for benchmark {label!r}")
    if adapter.finish is not None:
        samples = adapter.finish(samples)
    return Benchmark(
        label,
        adapter.name,
        path,
        samples,
        adapter.scorer,
        adapter.instruct,
        skipped,
        raw_options,
        left_out - {s.id for s in samples},
    )


def _load_sample_file(path: Path) -> list:
    from r1v2.data.loaders import load_samples

    result = load_samples(path)
    return list(getattr(result, "samples", result))


def category(sample) -> str | None:
    """The breakdown key of a sample: metadata.category, else ``level N``, else None."""
    meta = sample.metadata or {}
    if meta.get("category") is not None:
        return str(meta["category"])
    if meta.get("level") is not None:
        return f"level {meta['level']}"
    return None
