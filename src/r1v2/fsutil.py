"""Write a whole output folder safely: build it in a temporary sibling, then swap it into place.

A command that writes a folder (``assemble``, ``export``) does::

    check_output_dir(out, overwrite=cfg.overwrite, inputs={"LLM": llm_dir})  # before any work
    ...  # validate and load the inputs
    with replace_dir(out, overwrite=cfg.overwrite) as tmp:
        model.save_pretrained(tmp)

The body writes into ``OUT.tmp-<pid>`` next to ``OUT``. Only when it returns is the folder
swapped in (the old ``OUT`` is renamed to ``OUT.old-<pid>``, the new one renamed to ``OUT``,
then the old one removed). If anything fails before the swap, the temporary folder is removed
and an existing ``OUT`` is left exactly as it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from r1v2.errors import R1V2Error


class OutputDirError(R1V2Error):
    """An output folder that cannot or may not be written (the message names it)."""


def check_output_dir(
    out: str | Path, *, overwrite: bool, inputs: Mapping[str, str | Path] | None = None
) -> Path:
    """Raise :class:`OutputDirError` unless ``out`` may be written; return it as a Path.

    Refused: ``out`` is, is inside, or holds one of ``inputs`` (``{what: path}``, compared
    after resolving symlinks); ``out`` or an ancestor of it exists and is not a folder; ``out``
    is a non-empty folder and ``overwrite`` is false. Touches nothing on disk.
    """
    out = Path(out)
    _refuse_overlap(out, inputs or {})
    ancestor = next((p for p in (out, *out.absolute().parents) if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        where = "" if ancestor == out else f" ({ancestor} is a file)"
        raise OutputDirError(f"{out}: the output path is not a folder{where}")
    try:
        occupied = out.is_dir() and any(out.iterdir())
    except OSError as e:
        raise OutputDirError(f"{out}: cannot read the output folder: {e}") from e
    if occupied and not overwrite:
        raise OutputDirError(f"{out}: output folder is not empty (set overwrite=true)")
    return out


@contextmanager
def replace_dir(out: str | Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``out``; on success, swap it in as ``out``.

    Checks ``out`` with :func:`check_output_dir` first. If the body raises, the temporary
    folder is removed and ``out`` is untouched; an ``OSError`` from the body or the swap
    (disk full, no permission) is raised as :class:`OutputDirError` naming ``out``.
    """
    out = check_output_dir(out, overwrite=overwrite)
    real = out.resolve()  # a symlinked OUT: replace the folder it points to
    tmp = real.with_name(f"{real.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run that had our pid
        tmp.mkdir(parents=True)
        yield tmp
        _swap(tmp, real)
    except OSError as e:
        raise OutputDirError(f"{out}: cannot write the output folder: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _refuse_overlap(out: Path, inputs: Mapping[str, str | Path]) -> None:
    """The closest relation wins: "is" an input, then "is inside" one, then "holds" one."""
    o = out.resolve()
    resolved = {what: (Path(p), Path(p).resolve()) for what, p in inputs.items()}
    relations = (
        ("is the {} input ({})", lambda s: o == s),
        ("is inside the {} input {}", lambda s: s in o.parents),
        ("holds the {} input {}", lambda s: o in s.parents),
    )
    for text, holds in relations:
        for what, (given, s) in resolved.items():
            if holds(s):
                raise OutputDirError(f"{out}: the output folder " + text.format(what, given))


def _swap(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first, removed last."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)  # put the user's folder back
        raise
    shutil.rmtree(old, ignore_errors=True)
    if old.exists():
        raise OutputDirError(f"{out}: written, but the previous folder (moved to {old}) stays")


def check_writable_folder(out: str | Path, key: str = "out") -> Path:
    """Refuse (one line naming ``key``) an output folder that is a file or lies under one, or
    that cannot be written: a probe file is created and removed in it or, when it does not
    exist yet, in its nearest existing ancestor (where the command will create it). Touches
    nothing else, and runs before any work."""
    import tempfile

    out = Path(out)
    ancestor = next((p for p in (out, *out.absolute().parents) if p.exists()), None)
    if ancestor is None:
        return out
    if not ancestor.is_dir():
        under = "" if ancestor == out else f" ({ancestor} is a file)"
        raise OutputDirError(f"{key}={out} is a file, not a folder{under}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".r1v2-write-probe-", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputDirError(
            f"{key}={out}: cannot write in {ancestor}: {e.strerror or e}"
        ) from None
    return out


def check_output_file(
    path: str | Path,
    key: str,
    *,
    overwrite: bool,
    inputs: Mapping[str, str | Path] | None = None,
    sidecars: tuple[str, ...] = (),
) -> Path:
    """Refuse, in one line naming ``key``, an output file the command may not write; run it
    before any work. Refused even with ``overwrite``: ``path`` is a folder, is one of
    ``inputs`` (``{config field: path}``) or lies inside an input folder, or its folder is a
    file or cannot be written. Refused without ``overwrite``: ``path`` exists, or one of its
    ``sidecars`` (suffixes added to its name, e.g. ``".stats.json"``) does. Touches nothing."""
    path = Path(path)
    if path.is_dir():
        raise OutputDirError(f"{key}={path} is a folder: give a file name")
    p = path.resolve()
    for what, given in (inputs or {}).items():
        s = Path(given).resolve()
        if p == s:
            raise OutputDirError(f"{key}={path} is the {what} input: use another path")
        if s in p.parents:
            raise OutputDirError(f"{key}={path} lies inside the {what} input folder {given}")
    ancestor = next((a for a in path.absolute().parents if a.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise OutputDirError(f"{key}={path}: {ancestor} is a file, not a folder")
    if ancestor is not None and not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputDirError(f"{key}={path}: cannot write in {ancestor}: permission denied")
    if not overwrite:
        for name in (path, *(path.with_name(path.name + s) for s in sidecars)):
            if name.exists():
                which = f"{key}={path}" + ("" if name == path else f": {name}")
                raise OutputDirError(
                    f"{which} exists: use another path, or overwrite=true to replace it"
                )
    return path


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling renamed into place: a kill or a
    full disk mid-write leaves the previous file (or none), never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
