"""Generate the synthetic task: samples in memory, or a JSONL file plus PNG images on disk.

Output of :func:`generate` (and ``r1v2 data synth``)::

    OUT/samples.jsonl          one sample per line, keys sorted, no spaces between fields
    OUT/images/<id>.png        one image per sample, referenced as "images/<id>.png"

Each line holds ``id, question, images, answer, choices, kind, metadata``; ``metadata`` has
``source`` ("synthetic"), ``scene`` (the cells as words, row-major), ``grid``, ``image_size``,
``level``, ``qtype``, ``groups`` (the question's groups in order, ``{"colour", "shape"}`` with
null for "any"), ``steps`` (counts + arithmetic operations) and ``trace`` (the reference
reasoning, see :mod:`r1v2.data.synthetic.traces`).

Sample ``i`` of seed ``s`` is drawn from its own generator seeded with ``"s:i"``: it does not
depend on ``n``, so the first 200 samples of a 2000-sample run equal a 200-sample run. The same
arguments give the same bytes (JSONL and PNGs).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1v2.data.synthetic.questions import Question, make_question
from r1v2.data.synthetic.render import IMAGE_SIZE, render
from r1v2.data.synthetic.scene import GRID, Scene, sample_scene
from r1v2.data.synthetic.traces import reference_trace
from r1v2.errors import R1V2Error

SAMPLES_FILE = "samples.jsonl"
IMAGES_DIR = "images"
LEVELS = (1, 2, 3, 4)  # the levels there are
DEFAULT_LEVELS = (1, 2, 3)  # the levels drawn unless asked (level 4 is for harder RL pools)
# The multiple-choice share is ours (the paper's data mix is not published for this task).
CHOICE_FRACTION = 0.25


@dataclass(frozen=True)
class SynthSample:
    """One generated sample in memory: its id, scene and question (images not drawn yet)."""

    id: str
    scene: Scene
    question: Question

    @property
    def answer(self) -> str:
        return self.question.answer(self.scene)

    @property
    def trace(self) -> str:
        return reference_trace(self.scene, self.question)

    def metadata(self, image_size: int = IMAGE_SIZE) -> dict[str, Any]:
        q = self.question
        return {
            "source": "synthetic",
            "scene": self.scene.words(),
            "grid": self.scene.grid,
            "image_size": image_size,
            "level": q.level,
            "qtype": q.qtype,
            "groups": [g.to_dict() for g in q.groups],
            "steps": 2 * len(q.groups) - 1,
            "trace": self.trace,
        }

    def record(self, image: str, image_size: int = IMAGE_SIZE) -> dict[str, Any]:
        """The JSONL row, with ``image`` the image path relative to the JSONL file."""
        return {
            "id": self.id,
            "question": self.question.text,
            "images": [image],
            "answer": self.answer,
            "choices": list(self.question.options) if self.question.options else None,
            "kind": self.question.kind,
            "metadata": self.metadata(image_size),
        }


def _check_args(levels: Sequence[int], choice_fraction: float, grid: int) -> None:
    if not levels or any(lv not in LEVELS for lv in levels):
        raise R1V2Error(
            f"levels must be a non-empty list drawn from {list(LEVELS)}, got {list(levels)}"
        )
    if not 0.0 <= choice_fraction <= 1.0:
        raise R1V2Error(f"choice_fraction must be in [0, 1], got {choice_fraction}")
    if grid < 2:
        raise R1V2Error(f"grid must be at least 2, got {grid}")


def sample_at(
    seed: int,
    index: int,
    *,
    levels: Sequence[int] = DEFAULT_LEVELS,
    choice_fraction: float = CHOICE_FRACTION,
    grid: int = GRID,
) -> SynthSample:
    """Sample ``index`` of seed ``seed``: level ``levels[index % len(levels)]`` (equal shares)."""
    rng = random.Random(f"{seed}:{index}")
    level = levels[index % len(levels)]
    choice = rng.random() < choice_fraction
    scene = sample_scene(rng, level, grid=grid)
    question = make_question(rng, scene, level, choice=choice)
    return SynthSample(sample_id(seed, index), scene, question)


def sample_id(seed: int, index: int) -> str:
    """The id (and image file stem) of sample ``index`` of ``seed``."""
    return f"synth-s{seed}-{index:06d}"


def iter_samples(
    n: int,
    seed: int = 0,
    *,
    levels: Sequence[int] = DEFAULT_LEVELS,
    choice_fraction: float = CHOICE_FRACTION,
    grid: int = GRID,
    start: int = 0,
) -> Iterator[SynthSample]:
    """Samples ``start .. start + n - 1`` of ``seed``, in memory (for text corpora: no images)."""
    _check_args(levels, choice_fraction, grid)
    for index in range(start, start + n):
        yield sample_at(seed, index, levels=levels, choice_fraction=choice_fraction, grid=grid)


def dumps(record: dict[str, Any]) -> str:
    """One JSONL line: sorted keys and fixed separators, so equal records give equal bytes."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def generate(
    n: int,
    seed: int,
    out_dir: str | Path,
    *,
    levels: Sequence[int] = DEFAULT_LEVELS,
    choice_fraction: float = CHOICE_FRACTION,
    image_size: int = IMAGE_SIZE,
    grid: int = GRID,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write ``n`` samples to ``out_dir/samples.jsonl`` and their images to ``out_dir/images/``.

    Returns the JSONL path. Refuses, before drawing anything, to replace an existing
    ``samples.jsonl`` or an image of one of the ``n`` ids unless ``overwrite`` (images of other
    ids already in ``images/`` are left alone). Everything is drawn into temporary names and
    moved into place at the end: an interrupted run leaves the folder as it was. ``progress``
    shows a progress bar.
    """
    if n < 1:
        raise R1V2Error(f"n must be at least 1, got {n}")
    if image_size % grid:
        raise R1V2Error(f"image_size {image_size} is not a multiple of grid {grid}")
    _check_args(levels, choice_fraction, grid)
    out = Path(out_dir)
    path = out / SAMPLES_FILE
    if path.exists() and not overwrite:
        raise R1V2Error(f"{path} exists; pass overwrite=true to replace it")
    images = out / IMAGES_DIR
    if not overwrite and images.is_dir():
        # the ids of seed s are the same whatever the levels or sizes: another set's images
        ours = (images / f"{sample_id(seed, i)}.png" for i in range(n))
        taken = next((p for p in ours if p.exists()), None)
        if taken is not None:
            raise R1V2Error(
                f"{taken} exists (an image of an earlier set with seed {seed}); pass "
                "overwrite=true to replace it, or use another out"
            )
    images.mkdir(parents=True, exist_ok=True)
    staging = images / f".tmp-{os.getpid()}"  # this run's images until every one is drawn
    tmp = out / f".{SAMPLES_FILE}.tmp-{os.getpid()}"
    samples = iter_samples(n, seed, levels=levels, choice_fraction=choice_fraction, grid=grid)
    try:
        staging.mkdir(exist_ok=True)
        drawn = []
        with tmp.open("w", encoding="utf-8", newline="\n") as f:
            for sample in _with_progress(samples, n, progress):
                name = f"{sample.id}.png"
                render(sample.scene, image_size=image_size).save(staging / name, format="PNG")
                f.write(dumps(sample.record(f"{IMAGES_DIR}/{name}", image_size)) + "\n")
                drawn.append(name)
        for name in drawn:
            os.replace(staging / name, images / name)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _with_progress(items: Iterator[SynthSample], n: int, show: bool) -> Iterator[SynthSample]:
    if not show:
        yield from items
        return
    from rich.progress import track

    yield from track(items, total=n, description="generating")
