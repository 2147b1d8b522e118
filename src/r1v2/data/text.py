"""Reading user files as UTF-8 text, with one-line errors for those that are not.

Every text input of the project (sample and pair JSONL, benchmark JSON/JSONL, responses files,
YAML configs) is UTF-8; a leading UTF-8 byte-order mark is dropped. A file in UTF-16 or UTF-32
(as some Windows editors save), or binary data, is refused with a :class:`DataError` that names
the file, and the line where there is one, instead of a ``UnicodeDecodeError`` traceback.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

from r1v2.data.schema import UNREADABLE_FILE, DataError

SNIFF_BYTES = 8192  # how much of a file's start is looked at for UTF-16/32 and binary data

_BOMS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def sniff(head: bytes) -> tuple[str, int | None] | None:
    """Why a file starting with ``head`` is not UTF-8 text, as ``(reason, line)``; None when it
    may be. Found: a UTF-16/32 byte-order mark, UTF-16 without one (every other byte NUL), and
    binary data (any NUL byte: UTF-8 text holds none, and JSON or YAML never do)."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return f"the file is {name} text (byte-order mark); save it as UTF-8", None
    nul = head.find(b"\x00")
    if nul < 0:
        return None
    even, odd = head[0::2].count(0), head[1::2].count(0)
    if len(head) >= 4 and max(even, odd) >= len(head) // 2 - 1 and min(even, odd) == 0:
        return (
            "the file looks like UTF-16 text (a NUL byte between characters); save it as UTF-8",
            None,
        )
    line = head.count(b"\n", 0, nul) + 1
    return "binary data, not text (a NUL byte); expected UTF-8 text", line


def decode_utf8(data: bytes, file: str | Path) -> str:
    """``data`` (the whole content of ``file``) as text; raises :class:`DataError` naming the
    file, and the line when there is one, for UTF-16/32, binary data or invalid UTF-8."""
    found = sniff(data[:SNIFF_BYTES])
    if found is not None:
        reason, line = found
        raise DataError(reason, file=str(file), line=line, category=UNREADABLE_FILE)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"not valid UTF-8 (byte {column} of the line)",
            file=str(file),
            line=line,
            category=UNREADABLE_FILE,
        ) from None


def read_text(path: str | Path) -> str:
    """The text of ``path`` (see :func:`decode_utf8`); an unreadable file is a DataError too."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DataError(
            f"cannot read: {e.strerror or e}", file=str(path), category=UNREADABLE_FILE
        ) from None
    return decode_utf8(data, path)


def json_loads(text: str) -> Any:
    """``json.loads`` that fails only with ``json.JSONDecodeError``: also for nesting too deep
    for the parser (a RecursionError) and an integer over Python's 4300-digit conversion limit
    (a plain ValueError), at position 0 since the parser does not say where."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None
    except ValueError as e:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise json.JSONDecodeError(f"number too long ({str(e).split(':')[0]})", text, 0) from None
