"""The demo's split of the toy world's training data by level, as real training data comes.

Reference traces (the offline preference pairs MPO trains on) exist for the easier questions
only; the harder prompts come with their answers alone, the verifiable pool GRPO trains on.
:func:`split_by_level` writes both folders from a toy build (``TOY/data/pairs`` and
``TOY/data/train``): the pairs of ``pair_levels`` and the prompts of ``pool_levels``, each
row as the build wrote it, its image paths rewritten relative to the new folder, so nothing
is drawn or copied twice and a demo folder moved whole still reads its images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from r1v2.errors import R1V2Error
from r1v2.fsutil import write_atomic

PAIRS_FILE = "pairs.jsonl"
SAMPLES_FILE = "samples.jsonl"


def rows_of_levels(path: Path, levels: Collection[int]) -> list[dict[str, Any]]:
    """The rows of a JSON Lines file whose ``metadata.level`` is in ``levels``, each with its
    image paths made absolute (they are relative to the file's folder)."""
    keep = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            level = row["metadata"]["level"]
        except (ValueError, KeyError, TypeError) as e:
            raise R1V2Error(
                f"{path}:{n}: field 'metadata.level': missing or unreadable ({e.__class__.__name__}"
                "; not a toy build row)"
            ) from e
        if level in levels:
            row["images"] = [str((path.parent / p).absolute()) for p in row.get("images", [])]
            keep.append(row)
    return keep


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    """Write ``rows`` to ``path`` (through a temporary file renamed into place), their
    (absolute) image paths made relative to its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({**r, "images": [os.path.relpath(p, path.parent) for p in r["images"]]})
        for r in rows
    ]
    write_atomic(path, "".join(line + "\n" for line in lines))


def split_by_level(
    toy: Path,
    pairs_dir: Path,
    pool_dir: Path,
    pair_levels: Collection[int],
    pool_levels: Collection[int],
) -> dict[str, int]:
    """``pairs_dir/pairs.jsonl``: the toy's pairs of ``pair_levels``; ``pool_dir/samples.jsonl``:
    its training prompts of ``pool_levels``. Returns how many rows each holds; a level that
    leaves either empty is refused (a toy built without it)."""
    pairs = rows_of_levels(toy / "data" / "pairs" / PAIRS_FILE, set(pair_levels))
    pool = rows_of_levels(toy / "data" / "train" / SAMPLES_FILE, set(pool_levels))
    for name, rows, levels in (("pairs", pairs, pair_levels), ("pool", pool, pool_levels)):
        if not rows:
            raise R1V2Error(
                f"{toy}: no {name} rows of levels {sorted(levels)} (build the toy with them: "
                "r1v2 toy build 'levels=[1,2,3,4]')"
            )
    write_rows(pairs, pairs_dir / PAIRS_FILE)
    write_rows(pool, pool_dir / SAMPLES_FILE)
    return {"pairs": len(pairs), "pool": len(pool)}
