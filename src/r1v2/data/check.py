"""``r1v2 data check``: validate sample and pair files and describe what is in them.

Loads every row in skip mode (so all problems are found, not only the first), then prints
counts by kind, how many samples have images, image statistics from the headers, and every
problem as ``file:line: field 'name': reason``. A file without any row is a problem too.
Image paths that leave the data folder (``../..`` past it, absolute) are warnings by default
(``images_outside=warn``; ``refuse`` makes them problems). Exits 1 when there is any problem;
warnings alone exit 0.

A path whose first row has ``chosen`` or ``rejected`` holds offline MPO pairs
(:mod:`r1v2.data.pairs`, the loader ``r1v2 mpo`` uses): it gets the pairs' own report (pairs
with and without images, mean lengths, pairs whose chosen and rejected responses are the same,
as a warning) and the same problem lines.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from r1v2.config import ConfigError, option
from r1v2.data.images import DEFAULT_MAX_PIXELS
from r1v2.data.loaders import LoadResult, load_samples
from r1v2.data.schema import DataError

EMPTY_FILE = "empty file"  # a problem category: a data file without a single row


@dataclass
class DataCheckConfig:
    paths: list[str] = option(help="data files (.jsonl, .parquet) or folders of them")
    max_pixels: int = option(
        DEFAULT_MAX_PIXELS, "largest image allowed, in pixels (width x height)"
    )
    decode_images: bool = option(
        False, "also decode every image fully (slower; finds files truncated after a valid header)"
    )
    images_outside: Literal["allow", "warn", "refuse"] = option(
        "warn",
        "image paths that leave the data folder (../.. past it, absolute): allow, warn (listed, "
        "still loaded) or refuse (a problem)",
    )

    def validate(self) -> None:
        if not self.paths:
            raise ConfigError("data check needs at least one file or folder")
        if self.max_pixels <= 0:
            raise ConfigError(f"max_pixels must be positive, got {self.max_pixels}")


def describe(result: LoadResult) -> dict[str, Any]:
    """The numbers `data check` prints, for the samples that loaded.

    ``kinds``: {kind: [samples, with images, text-only]}; ``images``: image count (one per
    reference), ``width``/``height`` as (min, median, max) or None without images, ``formats``
    as {format: count}; ``problems`` and ``rows_skipped`` count what did not load.
    """
    kinds: dict[str, list[int]] = {}
    for s in result.samples:
        row = kinds.setdefault(s.kind, [0, 0, 0])
        row[0] += 1
        row[1 if s.images else 2] += 1
    widths = [i.width for i in result.images]
    heights = [i.height for i in result.images]
    return {
        "files": len(result.files),
        "rows": result.rows,
        "samples": len(result.samples),
        "kinds": dict(sorted(kinds.items())),
        "images": len(result.images),
        "width": _spread(widths),
        "height": _spread(heights),
        "formats": dict(Counter(i.format for i in result.images).most_common()),
        "problems": len(result.problems),
        "rows_skipped": len(result.skipped),
        "warnings": len(result.warnings),
    }


def empty_files(result: LoadResult) -> list[DataError]:
    """A problem for each file without a single row (blank lines only, or nothing), unless the
    file could not be read at all (that is a problem already)."""
    reported = {e.file for e in result.problems}
    return [
        DataError("empty file: no rows", file=str(f), category=EMPTY_FILE)
        for f, n in result.rows_per_file.items()
        if n == 0 and str(f) not in reported
    ]


def _spread(values: list[int]) -> tuple[float, float, float] | None:
    if not values:
        return None
    return (min(values), statistics.median(values), max(values))


def describe_pairs(result) -> dict[str, Any]:
    """The numbers `data check` prints for a :class:`~r1v2.data.pairs.PairsLoadResult`:
    ``with_images`` / ``text_only`` pairs, ``images``, mean ``chosen_words`` and
    ``rejected_words`` (None without pairs), ``identical``: ids of the pairs whose chosen and
    rejected responses are the same once stripped (no preference to learn)."""
    pairs = result.pairs
    with_images = sum(bool(p.images) for p in pairs)
    return {
        "files": len(result.files),
        "rows": result.rows,
        "pairs": len(pairs),
        "with_images": with_images,
        "text_only": len(pairs) - with_images,
        "images": sum(len(p.images) for p in pairs),
        "chosen_words": statistics.mean(len(p.chosen.split()) for p in pairs) if pairs else None,
        "rejected_words": statistics.mean(len(p.rejected.split()) for p in pairs)
        if pairs
        else None,
        "identical": [p.id for p in pairs if p.chosen.strip() == p.rejected.strip()],
        "problems": len(result.problems),
        "rows_skipped": len(result.skipped),
    }


def run_data_check(cfg: DataCheckConfig) -> int:
    """Validate ``cfg.paths`` (sample and pair files alike), print the reports, return 1 if any
    problem was found, else 0."""
    samples, pairs = split_pairs(cfg.paths)
    code = check_samples(cfg, samples) if samples else 0
    if pairs:
        if samples:
            print()
        code = max(code, check_pairs(cfg, pairs))
    return code


def split_pairs(paths: list[str]) -> tuple[list[str], list[str]]:
    """``paths`` as (sample paths, pair paths), each data file by its first row; a folder
    holding both (a toy build's ``data/``) is split into its files."""
    from r1v2.data.loaders import find_data_files
    from r1v2.data.pairs import is_pairs_data

    samples: list[str] = []
    pairs: list[str] = []
    for path in paths:
        files = find_data_files(path)
        kinds = [is_pairs_data(f) for f in files]
        if all(kinds) or not any(kinds):
            (pairs if kinds[0] else samples).append(path)
            continue
        for f, is_pairs in zip(files, kinds):
            (pairs if is_pairs else samples).append(str(f))
    return samples, pairs


def check_pairs(cfg: DataCheckConfig, paths: list[str]) -> int:
    """The pairs' report (see :func:`describe_pairs`); 1 if any row has a problem."""
    from r1v2.data.pairs import load_pairs

    result = load_pairs(paths, on_bad="skip", max_pixels=cfg.max_pixels)
    d = describe_pairs(result)
    print(
        f"{d['files']} pairs file(s), {d['rows']} rows: {d['pairs']} pairs loaded, "
        f"{d['rows_skipped']} rows with problems"
    )
    if d["pairs"]:
        print(
            f"pairs with images {d['with_images']} ({d['images']} images), text-only "
            f"{d['text_only']}; mean words: chosen {d['chosen_words']:.1f}, rejected "
            f"{d['rejected_words']:.1f}"
        )
    if d["identical"]:
        ids = d["identical"]
        more = ", ..." if len(ids) > 5 else ""
        print(
            f"warning: {len(ids)} pair(s) with the same chosen and rejected response, "
            f"nothing to prefer: {', '.join(ids[:5])}{more}"
        )
    return _print_problems(result.problems)


def _print_problems(problems: list[DataError]) -> int:
    if not problems:
        print("no problems found")
        return 0
    print(f"{len(problems)} problem(s):")
    for e in problems:
        print(str(e))  # plain print: one problem per line, never wrapped
    reasons = Counter(e.category for e in problems)
    print("by reason: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
    return 1


def check_samples(cfg: DataCheckConfig, paths: list[str]) -> int:
    """The samples' report; 1 if any problem was found."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    result = load_samples(
        paths,
        on_bad="skip",
        max_pixels=cfg.max_pixels,
        decode_images=cfg.decode_images,
        images_outside=cfg.images_outside,
    )
    result.problems += empty_files(result)
    d = describe(result)
    console = Console(highlight=False)
    console.print(
        f"{d['files']} file(s), {d['rows']} rows: {d['samples']} samples loaded, "
        f"{d['rows_skipped']} rows with problems",
        markup=False,
    )
    kinds = Table(title="samples by kind")
    for col in ("kind", "samples", "with images", "text-only"):
        kinds.add_column(col, justify="left" if col == "kind" else "right")
    for kind, counts in d["kinds"].items():
        kinds.add_row(Text(kind), *map(str, counts))  # Text: a kind is never read as markup
    totals = [sum(c[i] for c in d["kinds"].values()) for i in range(3)]
    kinds.add_row("total", *map(str, totals), style="bold")
    console.print(kinds)
    if d["images"]:
        images = Table(title="images (from headers)", show_header=False)
        images.add_column("what")
        images.add_column("value", justify="right")
        images.add_row("images", str(d["images"]))
        images.add_row("width min / median / max", " / ".join(f"{v:g}" for v in d["width"]))
        images.add_row("height min / median / max", " / ".join(f"{v:g}" for v in d["height"]))
        images.add_row("formats", ", ".join(f"{k} {v}" for k, v in d["formats"].items()))
        console.print(images)
    else:
        console.print("no images: every loaded sample is text-only")
    if result.warnings:
        print(f"{d['warnings']} warning(s):")
        for e in result.warnings:
            print(str(e))
    return _print_problems(result.problems)
