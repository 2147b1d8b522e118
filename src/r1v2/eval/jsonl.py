"""JSONL files: append-only ones that survive interruption (the response and judge caches), and
a user's JSONL read as text with one-line errors (a responses file)."""

from __future__ import annotations

from pathlib import Path


def complete_lines(path: str | Path) -> list[str]:
    """The lines of ``path`` that were written out in full; a partial last line is cut off.

    A process killed mid-write leaves a line without its newline: it is removed from the file,
    so the next append starts on a fresh line. A missing file has no lines.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    return data[:end].decode("utf-8", errors="replace").splitlines()


def read_lines(path: str | Path) -> list[str]:
    """The lines of a user's JSONL file (split at ``\\n`` only: a JSON string may hold U+2028).

    Raises R1V2Error naming the file, and the line where there is one, for a file that cannot
    be read, is UTF-16/32 or binary, or is not valid UTF-8 (:func:`r1v2.data.text.read_text`).
    """
    from r1v2.data.text import read_text

    return read_text(path).split("\n")
