"""Offline preference pairs in the InternVL/MMPR layout: loading, validating, writing.

On disk a pair is one JSONL line (or parquet row) with these fields:

    question  str, required, non-empty: the prompt (choices, when given, are lettered after it)
    chosen    str, required, non-empty: the preferred response, in completion form (what the
              policy writes after its generation prompt, ``<think>`` included when the chat
              template leaves it to the model)
    rejected  str, required, non-empty: the dispreferred response
    image     str: one image path relative to the file's folder (MMPR), or null
    images    list of str: image paths relative to the file's folder; use one of image/images
    id        str, optional, non-empty, unique across the files loaded together
              (default: ``FILE_NAME:LINE``)
    choices   list of str or null: multiple-choice options
    metadata  object, optional: anything else (scores, source, answer)

Any other field is an error (the Sample loader's rule): a typo would otherwise load silently.
Problems are :class:`r1v2.data.schema.DataError` naming ``file:line: field``; ``on_bad="skip"``
drops bad rows and counts them by reason (:class:`PairsLoadResult`).

A pairs file is told from a Sample pool by its fields (:func:`is_pairs_data`): the first row
of the first data file has ``chosen`` or ``rejected`` (either: a typo in the other is then
reported by this loader, as an unknown field and a missing one). A Sample has neither (and an
``answer`` and ``kind`` a pair lacks), so the two cannot be confused; a pairs file with a
Sample row in it fails on that row's unknown fields.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from r1v2.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    ImageSource,
    describe_source,
    open_image,
    probe_image,
)
from r1v2.data.loaders import find_data_files, read_rows, relative_image, write_error
from r1v2.data.schema import (
    DUPLICATE,
    EMPTY,
    INVALID,
    WRONG_TYPE,
    DataError,
    FieldProblem,
    check_choices,
    check_metadata,
    check_row_keys,
    check_string,
    json_type,
)
from r1v2.errors import R1V2Error

FIELDS = ("id", "question", "image", "images", "chosen", "rejected", "choices", "metadata")
REQUIRED = ("question", "chosen", "rejected")


@dataclass(frozen=True)
class PreferenceRecord:
    """One offline pair in memory; a prompt for the policy like a Sample (``question``,
    ``choices``, :meth:`open_images`). ``images`` are absolute paths or embedded bytes."""

    id: str
    question: str
    chosen: str
    rejected: str
    images: tuple[ImageSource, ...] = ()
    choices: tuple[str, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)

    def open_images(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> list:
        """Decode every image to RGB, in order."""
        return [open_image(src, max_pixels) for src in self.images]


@dataclass
class PairsLoadResult:
    """What :func:`load_pairs` found: ``pairs`` kept, every problem, the first problem of each
    skipped row, the files read and their rows."""

    pairs: list[PreferenceRecord] = field(default_factory=list)
    problems: list[DataError] = field(default_factory=list)
    skipped: list[DataError] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    rows: int = 0

    def skipped_by_reason(self) -> dict[str, list[str]]:
        """``{"missing field": ["pairs.jsonl:3", ...], ...}``."""
        out: dict[str, list[str]] = {}
        for e in self.skipped:
            out.setdefault(e.category, []).append(e.where())
        return out

    def summary(self) -> str:
        text = f"loaded {len(self.pairs)} pairs from {len(self.files)} file(s), {self.rows} rows"
        if not self.skipped:
            return text
        parts = [
            f"{len(where)} {reason} ({', '.join(where[:5])}{', ...' if len(where) > 5 else ''})"
            for reason, where in self.skipped_by_reason().items()
        ]
        return f"{text}; skipped {len(self.skipped)}: " + "; ".join(parts)


def is_pairs_data(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> bool:
    """Whether ``paths`` hold preference pairs rather than Samples: the first row of the first
    data file has ``chosen`` or ``rejected``, or a field close to one of them (a misspelt
    ``choosen``, read as a pair so that the error names the pair's fields) while it has
    neither of a Sample's ``answer`` and ``kind``. An empty or unreadable first file: False,
    and the Sample loader reports it."""
    import difflib

    files = find_data_files(paths)
    for _, record in read_rows(files[0]):
        if not isinstance(record, dict):
            return False
        if "chosen" in record or "rejected" in record:
            return True
        near = [k for k in record if difflib.get_close_matches(str(k), PAIR_ONLY, cutoff=0.75)]
        return bool(near) and "answer" not in record and "kind" not in record
    return False


PAIR_ONLY = ("chosen", "rejected")


def load_pairs(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    on_bad: Literal["error", "skip"] = "error",
    check_images: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PairsLoadResult:
    """Load and validate pairs from files and folders (see the module docstring).

    ``on_bad="error"`` raises the first problem; ``"skip"`` drops each bad row and records it.
    ``check_images`` reads each image's header (exists, identifiable, under ``max_pixels``).
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    result = PairsLoadResult(files=find_data_files(paths))
    seen: dict[str, str] = {}  # id -> "file:line" of its first row
    for file in result.files:
        for line, record in read_rows(file):
            if line is not None:
                result.rows += 1
            if isinstance(record, DataError):
                errors, pair = [record], None
            else:
                errors, pair = _check_row(record, file, line, seen, check_images, max_pixels)
            if errors:
                if on_bad == "error":
                    raise errors[0]
                result.problems.extend(errors)
                result.skipped.append(errors[0])
            else:
                result.pairs.append(pair)
    return result


def _check_row(
    record: Any, file: Path, line: int, seen: dict[str, str], check_images: bool, max_pixels: int
) -> tuple[list[DataError], PreferenceRecord | None]:
    """Every problem of one row, and its record when there is none."""
    where = {"file": str(file), "line": line}
    values, problems = parse_pair_record(record, file.parent)
    errors = [DataError(r, field=f, category=c, **where) for f, c, r in problems]
    pid = values.setdefault("id", f"{file.name}:{line}")
    if pid in seen:
        errors.append(
            DataError(
                f"duplicate id {pid!r} (first at {seen[pid]})",
                field="id",
                category=DUPLICATE,
                **where,
            )
        )
    else:
        seen[pid] = f"{file}:{line}"
    images = values.get("images", ())  # none for a row that is not an object
    if check_images and images:
        for (fname, raw), src in zip(_image_fields(record, images, file.parent), images):
            try:
                probe_image(src, max_pixels)
            except ImageError as e:
                name = raw if isinstance(raw, str) else describe_source(src)
                errors.append(
                    DataError(e.describe(name), field=fname, category=e.category, **where)
                )
    if errors:
        return errors, None
    return [], PreferenceRecord(**values)


def _image_fields(record: dict, images: tuple, base: Path) -> list[tuple[str, Any]]:
    """``(field name, value as written)`` of each of ``images``, the parsed images of the row:
    from ``images`` when that list parsed to them (it wins, as in :func:`parse_pair_record`),
    else from ``image``. (The fuzzing found a row with both fields naming the wrong one.)"""
    try:
        listed = bool(images) and _images(record.get("images"), base) == images
    except FieldProblem:
        listed = False
    if listed:
        return [(f"images[{i}]", v) for i, v in enumerate(record["images"])]
    return [("image", record.get("image"))]


Problem = tuple[str | None, str, str]  # (field, category, reason)


def parse_pair_record(record: Any, base_dir: Path) -> tuple[dict[str, Any], list[Problem]]:
    """Validate one row: the fields that parsed (``PreferenceRecord(**values)`` once there is
    no problem and an ``id``) and every problem found. Image paths are resolved against
    ``base_dir``, not opened."""
    problems = check_row_keys(record, FIELDS, REQUIRED)
    if not isinstance(record, dict):
        return {}, problems
    if "image" in record and "images" in record:
        problems.append(("images", INVALID, "give 'image' or 'images', not both"))
    values: dict[str, Any] = {}
    for key, check in _CHECKS.items():
        if key not in record:
            continue
        try:
            values[key] = check(record[key], base_dir)
        except FieldProblem as e:
            problems.append((e.field or key, e.category, e.reason))
    images = values.pop("image", None)
    values["images"] = values.get("images") or images or ()
    return values, problems


def _path(value: Any, base: Path, name: str) -> ImageSource:
    if isinstance(value, dict):  # a Hugging Face image struct in parquet
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        raise FieldProblem(WRONG_TYPE, f"expected an image path, got {json_type(value)}", name)
    if not value.strip():
        raise FieldProblem(EMPTY, "image path must not be empty", name)
    return Path(os.path.abspath(base / value))


def _image(value: Any, base: Path) -> tuple[ImageSource, ...]:
    return () if value is None else (_path(value, base, "image"),)


def _images(value: Any, base: Path) -> tuple[ImageSource, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise FieldProblem(WRONG_TYPE, f"expected a list of image paths, got {json_type(value)}")
    return tuple(_path(v, base, f"images[{i}]") for i, v in enumerate(value))


_CHECKS = {
    "id": check_string,
    "question": check_string,
    "chosen": check_string,
    "rejected": check_string,
    "image": _image,
    "images": _images,
    "choices": check_choices,
    "metadata": check_metadata,
}


def write_pairs(pairs: Iterable[PreferenceRecord], path: str | os.PathLike) -> Path:
    """Write ``pairs`` as JSONL (one ``{"id", "question", "images", "chosen", "rejected",
    "choices", "metadata"}`` per line) and return the path. Images are referenced by their
    path relative to the output file's folder (embedded bytes are written once into
    ``<stem>_images/``), so the file loads back with :func:`load_pairs` from anywhere. Written
    to a temporary name, then moved into place."""
    path = Path(path)
    out_dir = path.parent.absolute()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e) from None
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for p in pairs:
                images = [
                    relative_image(s, out_dir, out_dir / f"{path.stem}_images") for s in p.images
                ]
                row = {
                    "id": p.id,
                    "question": p.question,
                    "images": images,
                    "chosen": p.chosen,
                    "rejected": p.rejected,
                    "choices": list(p.choices) if p.choices else None,
                    "metadata": p.metadata,
                }
                try:
                    f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
                except ValueError as e:
                    raise R1V2Error(f"{path}: pair {p.id!r} cannot be written as JSON: {e}") from e
        os.replace(tmp, path)
    except OSError as e:  # no permission, disk full, an image folder that is a file
        raise write_error(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = [
    "PairsLoadResult",
    "PreferenceRecord",
    "is_pairs_data",
    "load_pairs",
    "parse_pair_record",
    "write_pairs",
]
