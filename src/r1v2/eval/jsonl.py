"""JSONL files: append-only ones that survive interruption (the response and judge caches), and
a user's JSONL read as text with one-line errors (a responses file)."""

from __future__ import annotations

from pathlib import Path


def complete_lines(path: str | Path) -> list[str]:
    """The lines of ``path`` that were written out in full; a partial last line is left out.

    A process killed mid-write leaves a line without its newline. The file is only ever
    appended to, never cut: the partial line is ended with a newline (if it still is the
    last line when we look again), so the next append starts on a fresh line and readers skip
    the fragment. Cutting it off instead could remove lines another process running on the
    same cache appended after we read it. A missing file has no lines.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        _end_last_line(path)
    return data[:end].decode("utf-8", errors="replace").splitlines()


def _end_last_line(path: Path) -> None:
    """Append a newline to ``path`` if its last byte is not one (append mode: never truncates,
    never writes anywhere but the end). A file we cannot append to is left as it is."""
    try:
        with path.open("a+b") as f:
            f.seek(0, 2)
            if f.tell() == 0:
                return
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")
    except OSError:
        pass


def read_lines(path: str | Path) -> list[str]:
    """The lines of a user's JSONL file (split at ``\\n`` only: a JSON string may hold U+2028).

    Raises R1V2Error naming the file, and the line where there is one, for a file that cannot
    be read, is UTF-16/32 or binary, or is not valid UTF-8 (:func:`r1v2.data.text.read_text`).
    """
    from r1v2.data.text import read_text

    return read_text(path).split("\n")
