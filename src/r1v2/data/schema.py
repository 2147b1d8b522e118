"""The Sample schema: one prompt with its images, reference answer and metadata.

On disk a sample is one JSONL line (or one parquet row) with these fields:

    id        str, required, non-empty; unique across the files loaded together
    question  str, required, non-empty
    images    list of image paths relative to the data file's folder (absolute paths work too);
              absent, null or [] for a text-only sample. In parquet an element may also be
              embedded bytes, or a {"bytes": ..., "path": ...} struct as Hugging Face writes them
    answer    str, required; a JSON number is accepted and stored as Python's str() of it
              (4 -> "4", 2.5 -> "2.5", 3.0 -> "3.0"); true/false, NaN and infinities are not
    choices   list of str (multiple choice), non-empty; absent or null otherwise
    kind      str, required, e.g. "math", "choice", "open", "code" (a code sample carries its
              tests in metadata.tests: see r1v2.rewards.code)
    metadata  object with str keys, optional (default {}); in parquet, where a free-form dict
              has no column type, it may also be a string holding a JSON object

Any other field is an error (put extra information in ``metadata``): a typo like ``image``
would otherwise load silently as a text-only sample.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from r1v2.data.images import DEFAULT_MAX_PIXELS, ImageSource, open_image
from r1v2.errors import R1V2Error

FIELDS = ("id", "question", "images", "answer", "choices", "kind", "metadata")
REQUIRED = ("id", "question", "answer", "kind")

# Problem categories of a row (images.py defines those of an image).
MALFORMED = "malformed JSON"
INVALID = "invalid data"
MISSING = "missing field"
WRONG_TYPE = "wrong type"
EMPTY = "empty value"
UNKNOWN = "unknown field"
DUPLICATE = "duplicate id"
UNREADABLE_FILE = "unreadable file"


class DataError(R1V2Error):
    """A problem in a data file, located by file, line (1-based; the row number for parquet)
    and field. ``category`` is a short name to count problems by ("missing field", ...)."""

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        category: str = INVALID,
    ):
        self.reason, self.file, self.line, self.field = reason, file, line, field
        self.category = category
        super().__init__(self.location() + (f"field '{field}': " if field else "") + reason)

    def location(self) -> str:
        """``"file:line: "``, ``"file: "`` or ``""``, whichever parts are known."""
        where = self.where()
        return f"{where}: " if where else ""

    def where(self) -> str:
        """``"file:line"``, ``"file"`` or ``""``, whichever parts are known."""
        if self.file is None:
            return ""
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass(frozen=True)
class Sample:
    """One prompt in memory. Images are opened only when asked (:meth:`open_images`).

    The constructor normalises its inputs: image paths given as str become ``Path``, lists
    become tuples, a numeric answer becomes its str() form, ``metadata=None`` becomes ``{}``.
    ``kind`` defaults to "open" in memory; data files must state it.
    """

    id: str
    question: str
    images: tuple[ImageSource, ...]
    answer: str
    choices: tuple[str, ...] | None = None
    kind: str = "open"
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        images = tuple(_image_source(x) for x in (self.images or ()))
        object.__setattr__(self, "images", images)
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if not isinstance(self.answer, str):
            object.__setattr__(self, "answer", answer_to_str(self.answer))
        if self.metadata is None:
            object.__setattr__(self, "metadata", {})

    def open_images(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Image.Image]:
        """Decode every image to RGB, in order. Raises ``ImageError`` naming the bad one."""
        return [open_image(src, max_pixels) for src in self.images]


def _image_source(x: Any) -> ImageSource:
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    if isinstance(x, (str, os.PathLike)):
        return Path(x)
    raise TypeError(f"an image must be a path or bytes, got {type(x).__name__}")


def answer_to_str(value: Any) -> str:
    """A str answer as is; a finite int or float as its str() form. Raises TypeError otherwise."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    raise TypeError(f"expected a string or a finite number, got {json_type(value)}")


def json_type(value: Any) -> str:
    """The JSON name of ``value``'s type, for error messages (``inf``/``nan`` as themselves)."""
    names = {type(None): "null", bool: "boolean", dict: "object", list: "array", str: "string"}
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return names.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__
    )


Problem = tuple[str | None, str, str]  # (field, category, reason)


def check_row_keys(record: Any, fields: Sequence[str], required: Sequence[str]) -> list[Problem]:
    """The problems of a row's keys: not a JSON object (that problem alone), then each unknown
    field and each missing required one."""
    if not isinstance(record, dict):
        return [(None, WRONG_TYPE, f"a row must be a JSON object, got {json_type(record)}")]
    problems: list[Problem] = [
        (str(key), UNKNOWN, f"unknown field (valid: {', '.join(fields)})")
        for key in record
        if key not in fields
    ]
    problems += [
        (key, MISSING, "required field is missing") for key in required if key not in record
    ]
    return problems


def parse_record(record: Any, base_dir: Path) -> tuple[dict[str, Any], list[Problem]]:
    """Validate one row (a dict parsed from JSON or parquet): the fields that parsed, and problems.

    Every field is checked, so all of a row's problems are returned, not only the first. With no
    problem, ``Sample(**values)`` is the sample. Image paths are resolved against ``base_dir``
    (not opened: the loader checks images).
    """
    problems = check_row_keys(record, FIELDS, REQUIRED)
    if not isinstance(record, dict):
        return {}, problems
    values: dict[str, Any] = {}
    for key, check in _CHECKS.items():
        if key in record:
            try:
                values[key] = check(record[key], base_dir)
            except FieldProblem as e:
                problems.append((e.field or key, e.category, e.reason))
        elif key not in REQUIRED:
            values[key] = _CHECKS[key](None, base_dir)  # an absent optional field, as if null
    if values.get("kind") == "code" and "metadata" in values:
        from r1v2.rewards.code import check_code_metadata  # pure: no torch, no model

        for field, reason in check_code_metadata(values["metadata"]):
            problems.append((field, INVALID, reason))
    return values, problems


class FieldProblem(Exception):
    """One field's problem, raised by the ``check_*`` field checks (shared with
    :mod:`r1v2.data.pairs`): its category, the reason and, for an item of a list, its name."""

    def __init__(self, category: str, reason: str, field: str | None = None):
        self.category, self.reason, self.field = category, reason, field


def check_string(value: Any, _base: Path) -> str:
    if not isinstance(value, str):
        raise FieldProblem(WRONG_TYPE, f"expected a string, got {json_type(value)}")
    if not value.strip():
        raise FieldProblem(EMPTY, "must not be empty")
    return value


def _answer(value: Any, _base: Path) -> str:
    try:
        return answer_to_str(value)
    except TypeError as e:
        raise FieldProblem(WRONG_TYPE, str(e)) from None


def _images(value: Any, base: Path) -> tuple[ImageSource, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise FieldProblem(WRONG_TYPE, f"expected a list of image paths, got {json_type(value)}")
    out: list[ImageSource] = []
    for i, item in enumerate(value):
        if isinstance(item, dict):  # a Hugging Face image struct
            item = item.get("bytes") or item.get("path")
        if isinstance(item, (bytes, bytearray)):
            out.append(bytes(item))
        elif isinstance(item, str) and item.strip():
            out.append(Path(os.path.abspath(base / item)))
        elif isinstance(item, str):
            raise FieldProblem(EMPTY, "image path must not be empty", f"images[{i}]")
        else:
            raise FieldProblem(
                WRONG_TYPE, f"expected an image path, got {json_type(item)}", f"images[{i}]"
            )
    return tuple(out)


def check_choices(value: Any, _base: Path) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise FieldProblem(
            WRONG_TYPE, f"expected a list of strings or null, got {json_type(value)}"
        )
    if not value:
        raise FieldProblem(EMPTY, "a choice list must not be empty (use null for no choices)")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise FieldProblem(
                WRONG_TYPE, f"expected a string, got {json_type(item)}", f"choices[{i}]"
            )
    return tuple(value)


def check_metadata(value: Any, _base: Path) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):  # malformed, too deep, an over-long integer
            raise FieldProblem(
                WRONG_TYPE, "expected an object (or a string holding a JSON object)"
            ) from None
    if not isinstance(value, dict):
        raise FieldProblem(WRONG_TYPE, f"expected an object, got {json_type(value)}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise FieldProblem(WRONG_TYPE, f"keys must be strings, got {bad[0]!r}")
    return value


_CHECKS = {
    "id": check_string,
    "question": check_string,
    "images": _images,
    "answer": _answer,
    "choices": check_choices,
    "kind": check_string,
    "metadata": check_metadata,
}


def sample_to_record(sample: Sample, image_paths: list[str]) -> dict[str, Any]:
    """The on-disk form of ``sample``, with ``image_paths`` (already made relative) for images."""
    return {
        "id": sample.id,
        "question": sample.question,
        "images": image_paths,
        "answer": sample.answer,
        "choices": list(sample.choices) if sample.choices is not None else None,
        "kind": sample.kind,
        "metadata": sample.metadata,
    }
