"""What the demo checks before it reuses a finished stage (:mod:`r1v2.toy.demo`).

A stage's result (``OUT/results/NAME.json``) records its ``inputs`` (the settings it was made
with and a digest of each folder it read, :func:`file_input`) and its ``outputs`` (a digest of
each folder it wrote). A re-run compares them with the inputs now and the folders on disk.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from r1v2.errors import R1V2Error


def tree_digest(path: Path) -> str | None:
    """A content hash of a file or of every file under a folder (their relative paths and
    bytes); None when ``path`` does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative_to(path).as_posix()}\0{f.stat().st_size}\0".encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def file_input(path: Path) -> dict[str, Any]:
    """An input a stage read from disk, as its result records it."""
    return {"path": str(path), "digest": tree_digest(path)}


def digests(paths: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return {name: file_input(p) for name, p in paths.items()}


def changes(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between the recorded inputs (or outputs) of a stage and those now, as
    ``name (before -> now)``; names only one side has are not compared."""
    out = []
    for name in sorted(recorded.keys() & now.keys()):
        before, after = recorded[name], now[name]
        if isinstance(before, dict) and isinstance(after, dict) and "digest" in after:
            if before.get("digest") != after["digest"]:
                out.append(
                    f"{name} {after['path']} (files changed: digest {before.get('digest')} "
                    f"-> {after['digest']})"
                )
        elif before != after:
            out.append(f"{name} ({_short(before)} -> {_short(after)})")
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_weights(folders: list[Path]) -> None:
    """Refuse a ``*.safetensors`` file under ``folders`` whose header cannot be read (a file
    truncated or overwritten): one line naming it, before any stage loads it."""
    from safetensors import SafetensorError, safe_open

    for folder in folders:
        for f in sorted(Path(folder).glob("*.safetensors")):
            try:
                with safe_open(str(f), "pt"):
                    pass
            except (SafetensorError, OSError) as e:
                raise R1V2Error(
                    f"{f}: cannot read the weights ({e}); remove {folder} to build it again"
                ) from e
