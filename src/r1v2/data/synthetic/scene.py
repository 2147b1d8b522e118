"""Grid scenes: cells, groups of objects, the scene in words, and random scenes.

A scene is a ``grid x grid`` board (default 4x4) read in row-major order; cell ``k`` (1-based)
sits at row ``(k - 1) // grid``, column ``(k - 1) % grid``. Each cell is empty or holds one object
with a colour in :data:`COLOURS` and a shape in :data:`SHAPES`.

The scene in words (:func:`scene_text`) has one word per cell in the same order, e.g.
``scene : redcircle empty bluesquare ...``: the vision encoder turns each cell into exactly one
image token (64 px image, patch 8, pixel-shuffle 0.5), so image token ``k`` and cell word ``k``
describe the same cell.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from r1v2.errors import R1V2Error

COLOURS: tuple[str, ...] = ("red", "green", "blue")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
EMPTY = "empty"
GRID = 4

# Objects per scene by level, inclusive (min, max). Sparser scenes at level 3 keep its traces,
# which list the cells of three groups, near 60 words.
OBJECTS_PER_LEVEL: dict[int, tuple[int, int]] = {1: (3, 10), 2: (3, 9), 3: (3, 8), 4: (4, 8)}

Cell = tuple[str, str] | None  # (colour, shape) or None for an empty cell


class SceneError(R1V2Error, ValueError):
    """A scene description that cannot be read (wrong length, unknown colour or shape)."""


def cell_word(cell: Cell) -> str:
    """``("red", "circle")`` -> ``"redcircle"``; ``None`` -> ``"empty"``."""
    return EMPTY if cell is None else cell[0] + cell[1]


def _parse_cell(entry: Any) -> Cell:
    if entry is None or entry == EMPTY:
        return None
    if isinstance(entry, str):
        for colour in COLOURS:
            if entry.startswith(colour) and entry[len(colour) :] in SHAPES:
                return (colour, entry[len(colour) :])
    elif isinstance(entry, (list, tuple)) and len(entry) == 2:
        colour, shape = entry
        if colour in COLOURS and shape in SHAPES:
            return (colour, shape)
    raise SceneError(
        f"scene cell {entry!r} is not 'empty', null, a word like 'redcircle' or a "
        f"[colour, shape] pair with colour in {COLOURS} and shape in {SHAPES}"
    )


@dataclass(frozen=True)
class Scene:
    """A ``grid x grid`` board; ``cells`` in row-major order, ``None`` for an empty cell."""

    cells: tuple[Cell, ...]
    grid: int = GRID

    def __post_init__(self) -> None:
        if len(self.cells) != self.grid * self.grid:
            raise SceneError(
                f"a {self.grid}x{self.grid} scene has {self.grid * self.grid} cells, "
                f"got {len(self.cells)}"
            )

    @classmethod
    def from_any(cls, scene: Scene | Sequence[Any] | dict[str, Any]) -> Scene:
        """Read a scene as stored in sample metadata, or return a :class:`Scene` as is.

        Accepted: a ``Scene``; a list of ``grid**2`` cells, each ``"redcircle"``/``"empty"``,
        ``[colour, shape]`` or ``None``; a sample's metadata dict holding such a list under
        ``"scene"`` (and optionally ``"grid"``).
        """
        if isinstance(scene, Scene):
            return scene
        grid = None
        if isinstance(scene, dict):
            grid = scene.get("grid")
            if "scene" not in scene:
                raise SceneError("metadata has no 'scene' entry")
            scene = scene["scene"]
        if isinstance(scene, str) or not isinstance(scene, Sequence):
            raise SceneError(f"a scene is a list of cells, got {type(scene).__name__}")
        cells = tuple(_parse_cell(e) for e in scene)
        if grid is None:
            grid = math.isqrt(len(cells))
            if grid * grid != len(cells):
                raise SceneError(
                    f"a scene lists grid x grid cells (16 for 4x4), got {len(cells)} cells"
                )
        return cls(cells, grid)

    def words(self) -> list[str]:
        """One word per cell, row-major: ``["redcircle", "empty", ...]`` (the stored form)."""
        return [cell_word(c) for c in self.cells]


@dataclass(frozen=True)
class Group:
    """A kind of object: a colour and/or a shape (``None`` = any). Both None = every object."""

    colour: str | None = None
    shape: str | None = None

    def matches(self, cell: Cell) -> bool:
        if cell is None:
            return False
        return (self.colour is None or cell[0] == self.colour) and (
            self.shape is None or cell[1] == self.shape
        )

    def cells(self, scene: Scene) -> list[int]:
        """1-based indices of the cells holding a member of the group, in row-major order."""
        return [k + 1 for k, cell in enumerate(scene.cells) if self.matches(cell)]

    def count(self, scene: Scene) -> int:
        return sum(self.matches(cell) for cell in scene.cells)

    def overlaps(self, other: Group) -> bool:
        """True when some object belongs to both groups."""
        colour_ok = self.colour is None or other.colour is None or self.colour == other.colour
        shape_ok = self.shape is None or other.shape is None or self.shape == other.shape
        return colour_ok and shape_ok

    def phrase(self, n: int = 2) -> str:
        """The group in words, singular when ``n == 1``: ``red circles``, ``red object``, ``squares``."""
        noun = self.shape or "object"
        if n != 1:
            noun += "s"
        return f"{self.colour} {noun}" if self.colour else noun

    def to_dict(self) -> dict[str, str | None]:
        return {"colour": self.colour, "shape": self.shape}

    @classmethod
    def from_dict(cls, d: dict[str, str | None]) -> Group:
        return cls(d.get("colour"), d.get("shape"))


def scene_text(scene: Scene | Sequence[Any] | dict[str, Any]) -> str:
    """The scene in words, one per cell in row-major order: ``scene : redcircle empty ...``."""
    return "scene : " + " ".join(Scene.from_any(scene).words())


def sample_scene(rng: random.Random, level: int = 1, *, grid: int = GRID) -> Scene:
    """A random scene: a level-dependent number of objects in distinct cells, kinds uniform.

    The object count is uniform in :data:`OBJECTS_PER_LEVEL` (scaled by ``grid**2 / 16`` for
    other grid sizes); each object's colour and shape are uniform and independent.
    """
    lo, hi = OBJECTS_PER_LEVEL[level]
    size = grid * grid
    scale = size / 16
    lo, hi = max(1, round(lo * scale)), min(size, round(hi * scale))
    n = rng.randint(lo, hi)
    cells: list[Cell] = [None] * size
    for k in rng.sample(range(size), n):
        cells[k] = (rng.choice(COLOURS), rng.choice(SHAPES))
    return Scene(tuple(cells), grid)
