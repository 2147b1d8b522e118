"""Draw a scene as an RGB image: one flat-coloured shape per occupied cell, no anti-aliasing.

Defaults: 64x64 px, 4x4 grid, so a cell is 16x16 px = 2x2 patches of 8 px, which pixel-shuffle
(downsample 0.5) merges into exactly one image token per cell. PIL's drawing primitives are
deterministic, so the same scene always gives the same pixels (and the same PNG bytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw

from r1v2.data.synthetic.scene import Scene, SceneError

IMAGE_SIZE = 64
BACKGROUND = (255, 255, 255)
RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 40),
    "blue": (30, 60, 220),
}


def render(
    scene: Scene | Sequence[Any] | dict[str, Any],
    *,
    image_size: int = IMAGE_SIZE,
    background: tuple[int, int, int] = BACKGROUND,
) -> Image.Image:
    """The scene as a ``image_size x image_size`` RGB image.

    Each cell is ``image_size / grid`` px wide; its shape fills the cell minus a margin of
    1/8 of the cell on every side (2 px at the defaults). ``image_size`` must be a multiple of
    the grid size.
    """
    scene = Scene.from_any(scene)
    if image_size % scene.grid:
        raise SceneError(f"image_size {image_size} is not a multiple of the grid size {scene.grid}")
    cell = image_size // scene.grid
    margin = max(1, cell // 8)
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    for k, content in enumerate(scene.cells):
        if content is None:
            continue
        colour, shape = content
        top, left = (k // scene.grid) * cell, (k % scene.grid) * cell
        x0, y0 = left + margin, top + margin
        x1, y1 = left + cell - 1 - margin, top + cell - 1 - margin  # inclusive pixel bounds
        fill = RGB[colour]
        if shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:  # triangle, apex up
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return image
