"""Loading samples from JSONL and parquet files (or folders of them), and writing them as JSONL.

``load_samples`` validates every row (see ``schema.py`` for the fields) and, unless told not
to, every image's header: it must exist, be an image PIL can identify, and stay under
``max_pixels``. Pixels are not decoded (``decode_images=True`` does, to find files truncated
after a valid header). A problem is a :class:`DataError` naming file, line and field, e.g.
``data/train.jsonl:7: field 'images[0]': file not found: img/3.png``. Lines are 1-based; blank
lines are skipped but counted; for parquet the "line" is the 1-based row number.

``on_bad="error"`` raises the first problem; ``on_bad="skip"`` drops each bad row and reports it
in the :class:`LoadResult`. Ids must be unique across everything loaded in one call; the first
row with an id wins, later ones are problems.

A folder is searched recursively for ``*.jsonl`` and ``*.parquet`` files, skipping hidden
names (starting with "."), in sorted order of their path relative to the folder.

A file in UTF-16/32 or with binary data is one problem naming the file (and line), not a
problem per line. Image paths that leave the data folder (``../..`` past it, or absolute; the
data folder is the folder given, else the data file's own folder) are loaded as they are with
``images_outside="allow"``, listed in ``LoadResult.warnings`` with ``"warn"``, and problems of
their rows with ``"refuse"``.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from r1v2.data.images import (
    DEFAULT_MAX_PIXELS,
    NOT_FOUND,
    ImageError,
    ImageInfo,
    ImageSource,
    describe_source,
    open_image,
    probe_image,
)
from r1v2.data.schema import (
    DUPLICATE,
    MALFORMED,
    UNREADABLE_FILE,
    DataError,
    Sample,
    parse_record,
    sample_to_record,
)
from r1v2.data.text import SNIFF_BYTES, json_loads, sniff
from r1v2.errors import R1V2Error

DATA_SUFFIXES = (".jsonl", ".parquet")
OUTSIDE = "image outside the data folder"  # a problem category, with images_outside="refuse"


@dataclass
class LoadResult:
    """What :func:`load_samples` found.

    ``problems`` holds every problem, in file order (a row may have several); ``skipped`` the
    first problem of each skipped row (or of an unreadable file), so counts by reason add up to
    the rows skipped. ``images`` has one entry per image of each kept sample when images were
    checked (an image used by two samples appears twice).
    """

    samples: list[Sample] = field(default_factory=list)
    problems: list[DataError] = field(default_factory=list)
    skipped: list[DataError] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    rows: int = 0
    images: list[ImageInfo] = field(default_factory=list)
    rows_per_file: dict[Path, int] = field(default_factory=dict)  # non-blank rows of each file
    warnings: list[DataError] = field(default_factory=list)  # images_outside="warn"

    def skipped_by_reason(self) -> dict[str, list[str]]:
        """Skipped rows grouped by reason: ``{"file not found": ["a.jsonl:3", ...], ...}``."""
        out: dict[str, list[str]] = {}
        for e in self.skipped:
            out.setdefault(e.category, []).append(e.where())
        return out

    def summary(self, max_locations: int = 5) -> str:
        """One line: samples loaded, then rows skipped by reason with their first locations."""
        text = (
            f"loaded {len(self.samples)} samples from {len(self.files)} file(s), {self.rows} rows"
        )
        if not self.skipped:
            return text
        parts = []
        for reason, where in sorted(self.skipped_by_reason().items(), key=lambda kv: -len(kv[1])):
            shown = ", ".join(where[:max_locations]) + (
                ", ..." if len(where) > max_locations else ""
            )
            parts.append(f"{len(where)} {reason} ({shown})")
        return f"{text}; skipped {len(self.skipped)}: " + "; ".join(parts)


def find_data_files(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The data files named by ``paths``: files as given, folders searched (see module doc).

    A file named twice is read once. Raises :class:`DataError` for a path that does not exist,
    a file that is not ``.jsonl``/``.parquet``, or a folder without any.
    """
    return [f for f, _ in _find(paths)]


def _find(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """:func:`find_data_files`, each file with its data folder: the folder it was found in, or
    its own folder when named itself."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[tuple[Path, Path]] = []
    seen: set[str] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                (
                    f
                    for f in p.rglob("*")
                    if f.suffix in DATA_SUFFIXES
                    and f.is_file()
                    and not any(part.startswith(".") for part in f.relative_to(p).parts)
                ),
                key=lambda f: f.relative_to(p).as_posix(),
            )
            if not found:
                raise DataError(
                    "no .jsonl or .parquet files in this folder",
                    file=str(p),
                    category=UNREADABLE_FILE,
                )
        elif p.is_file():
            if p.suffix not in DATA_SUFFIXES:
                raise DataError(
                    f"unsupported file type {p.suffix!r} (expected .jsonl or .parquet)",
                    file=str(p),
                    category=UNREADABLE_FILE,
                )
            found = [p]
        else:
            raise DataError("no such file or folder", file=str(p), category=NOT_FOUND)
        for f in found:
            key = os.path.realpath(f)
            if key not in seen:
                seen.add(key)
                out.append((f, p if p.is_dir() else f.parent))
    return out


def load_samples(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    on_bad: Literal["error", "skip"] = "error",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    check_images: bool = True,
    decode_images: bool = False,
    images_outside: Literal["allow", "warn", "refuse"] = "allow",
) -> LoadResult:
    """Load and validate samples from files and folders (see the module docstring).

    ``check_images=False`` touches no image file at all (fastest; problems surface when an image
    is opened). ``decode_images=True`` also decodes every image fully (slow).
    ``images_outside``: what an image path that leaves the data folder is (module docstring).
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    if images_outside not in ("allow", "warn", "refuse"):
        raise ValueError(f"images_outside must be allow, warn or refuse, got {images_outside!r}")
    found = _find(paths)
    result = LoadResult(files=[f for f, _ in found])
    seen_ids: dict[str, str] = {}  # id -> "file:line" of its first row
    probed: dict[ImageSource, ImageInfo | ImageError] = {}
    for file, root in found:
        base_dir = file.parent
        result.rows_per_file[file] = 0
        for line, record in read_rows(file):
            if line is not None:
                result.rows += 1
                result.rows_per_file[file] += 1
            if isinstance(record, DataError):
                errors, sample, infos = [record], None, []
            else:
                outside = [] if images_outside == "allow" else _outside(record, file, line, root)
                if images_outside == "warn":
                    result.warnings.extend(outside)
                errors, sample, infos = _check_row(
                    record,
                    str(file),
                    line,
                    base_dir,
                    seen_ids,
                    probed,
                    max_pixels if check_images else None,
                    decode_images,
                    outside if images_outside == "refuse" else [],
                )
            if errors:
                if on_bad == "error":
                    raise errors[0]
                result.problems.extend(errors)
                result.skipped.append(errors[0])
            else:
                result.samples.append(sample)
                result.images.extend(infos)
    return result


def _check_row(
    record: Any,
    file: str,
    line: int,
    base_dir: Path,
    seen_ids: dict[str, str],
    probed: dict[ImageSource, ImageInfo | ImageError],
    max_pixels: int | None,
    decode: bool,
    refused: list[DataError],
) -> tuple[list[DataError], Sample | None, list[ImageInfo]]:
    """Every problem of one row (``refused``: images outside the data folder, already found),
    its Sample when there is none, and its images' headers."""
    values, problems = parse_record(record, base_dir)
    errors = [DataError(r, file=file, line=line, field=f, category=c) for f, c, r in problems]
    errors += refused
    sid = values.get("id")
    if sid is not None:
        if sid in seen_ids:
            errors.append(
                DataError(
                    f"duplicate id {sid!r} (first at {seen_ids[sid]})",
                    file=file,
                    line=line,
                    field="id",
                    category=DUPLICATE,
                )
            )
        else:
            seen_ids[sid] = f"{file}:{line}"
    infos: list[ImageInfo] = []
    if max_pixels is not None:
        images = values.get("images", ())
        raw = record["images"] if images else []  # the paths as written, for messages
        for i, src in enumerate(images):
            got = probed.get(src)
            if got is None:
                got = probed[src] = _probe(src, max_pixels, decode)
            if isinstance(got, ImageError):
                name = raw[i] if isinstance(raw[i], str) else describe_source(src)
                errors.append(
                    DataError(
                        got.describe(name),
                        file=file,
                        line=line,
                        field=f"images[{i}]",
                        category=got.category,
                    )
                )
            else:
                infos.append(got)
    if errors:
        return errors, None, []
    return [], Sample(**values), infos


def _outside(record: Any, file: Path, line: int, root: Path) -> list[DataError]:
    """A problem for each image path of ``record`` that is absolute or leads out of ``root``
    (checked on the path as written, ``..`` resolved, symlinks not followed)."""
    raw = record.get("images") if isinstance(record, dict) else None
    if not isinstance(raw, (list, tuple)):
        return []
    top = os.path.abspath(root)
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, dict) and not item.get("bytes"):  # a Hugging Face image struct
            item = item.get("path")
        if not isinstance(item, str) or not item.strip():
            continue
        if os.path.isabs(item):
            reason = f"absolute image path: {item}"
        else:
            target = os.path.normpath(os.path.join(os.path.abspath(file.parent), item))
            if target == top or target.startswith(top.rstrip(os.sep) + os.sep):
                continue
            reason = f"image path leaves the data folder ({root}): {item}"
        out.append(
            DataError(reason, file=str(file), line=line, field=f"images[{i}]", category=OUTSIDE)
        )
    return out


def _probe(src: ImageSource, max_pixels: int, decode: bool) -> ImageInfo | ImageError:
    try:
        info = probe_image(src, max_pixels)
        if decode:
            open_image(src, max_pixels).close()
        return info
    except ImageError as e:
        return e


def read_rows(file: Path) -> Iterator[tuple[int | None, Any]]:
    """``(line, record)`` for each row; ``record`` is a DataError for a row that cannot be parsed,
    and ``line`` is None for a file that cannot be read at all."""
    if file.suffix == ".parquet":
        yield from _read_parquet(file)
    else:
        yield from _read_jsonl(file)


def _read_jsonl(file: Path) -> Iterator[tuple[int | None, Any]]:
    try:
        f = open(file, "rb")  # bytes, so a bad UTF-8 sequence names its line
    except OSError as e:
        yield (
            None,
            DataError(f"cannot read: {e.strerror}", file=str(file), category=UNREADABLE_FILE),
        )
        return
    with f:
        found = sniff(f.peek(SNIFF_BYTES)[:SNIFF_BYTES])
        if found is not None:  # UTF-16/32 or binary: one problem for the file, not per line
            reason, where = found
            yield (
                None,
                DataError(reason, file=str(file), line=where, category=UNREADABLE_FILE),
            )
            return
        for line, raw in enumerate(f, 1):
            if line == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield (
                    line,
                    DataError(
                        f"malformed JSON: not valid UTF-8 (byte {e.start + 1})",
                        file=str(file),
                        line=line,
                        category=MALFORMED,
                    ),
                )
                continue
            if not text.strip():
                continue
            try:
                record = json_loads(text)
            except json.JSONDecodeError as e:
                yield (
                    line,
                    DataError(
                        f"malformed JSON: {e.msg} (column {e.colno})",
                        file=str(file),
                        line=line,
                        category=MALFORMED,
                    ),
                )
                continue
            yield line, record


def _read_parquet(file: Path) -> Iterator[tuple[int | None, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row += 1
                yield row, record
    except (OSError, pa.ArrowException) as e:
        where = f" after row {row}" if row else ""
        yield (
            None,
            DataError(f"cannot read parquet{where}: {e}", file=str(file), category=UNREADABLE_FILE),
        )


def write_jsonl(
    samples: Iterable[Sample],
    path: str | os.PathLike,
    *,
    images_dir: str | os.PathLike | None = None,
) -> Path:
    """Write ``samples`` to ``path`` as JSONL, one line per sample, and return the path.

    Image paths are written relative to the output file's folder, so the file loads back
    with :func:`load_samples` from anywhere. Embedded images (bytes) are written as files
    into ``images_dir`` (default: ``<stem>_images`` beside the output), named by a hash of their
    bytes, so equal images are stored once. The file is written to a temporary name and then
    moved into place: a failed write leaves no half file.
    """
    path = Path(path)
    out_dir = path.parent.absolute()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e) from None
    img_dir = Path(images_dir) if images_dir is not None else out_dir / f"{path.stem}_images"
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for s in samples:
                rel = [relative_image(src, out_dir, img_dir) for src in s.images]
                try:
                    line = json.dumps(sample_to_record(s, rel), ensure_ascii=False, allow_nan=False)
                except (TypeError, ValueError) as e:
                    raise DataError(
                        f"sample {s.id!r} cannot be written as JSON: {e}",
                        file=str(path),
                        field="metadata",
                    ) from None
                f.write(line + "\n")
        os.replace(tmp, path)
    except OSError as e:  # no permission, disk full, an image folder that is a file
        raise write_error(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_error(path: Path, e: OSError) -> R1V2Error:
    """A one-line error for an OSError while writing ``path``, naming the path that failed."""
    ancestor = next((p for p in path.absolute().parents if p.exists()), None)
    if path.is_dir():
        reason = "it is a folder"
    elif ancestor is not None and not ancestor.is_dir():
        reason = f"{ancestor} is a file, not a folder"
    else:
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
        reason = f"{e.strerror or e}{where}"
    return R1V2Error(f"{path}: cannot write: {reason}")


_EXTENSIONS = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
}


def relative_image(src: ImageSource, out_dir: Path, img_dir: Path) -> str:
    if isinstance(src, bytes):
        try:  # the header only, for the file name's extension; no size limit of ours here
            fmt = probe_image(src, max_pixels=sys.maxsize).format
            ext = _EXTENSIONS.get(fmt, ".bin" if fmt == "unknown" else f".{fmt.lower()}")
        except ImageError:
            ext = ".bin"  # bytes PIL cannot identify are stored all the same
        target = Path(img_dir).absolute() / (hashlib.sha256(src).hexdigest()[:16] + ext)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(src)
        src = target
    return Path(os.path.relpath(os.path.abspath(src), out_dir)).as_posix()
