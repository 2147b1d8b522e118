"""Append-only JSONL files that survive interruption (the response and judge caches)."""

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
