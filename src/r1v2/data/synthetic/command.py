"""``r1v2 data synth``: write the synthetic visual-reasoning task to a folder."""

from __future__ import annotations

from dataclasses import dataclass

from r1v2.config import ConfigError, option
from r1v2.data.synthetic.generate import CHOICE_FRACTION, DEFAULT_LEVELS, LEVELS, generate
from r1v2.data.synthetic.render import IMAGE_SIZE
from r1v2.data.synthetic.scene import GRID

PROGRESS_FROM = 1000  # show a progress bar from this many samples on


@dataclass
class SynthConfig:
    out: str = option(help="folder to write samples.jsonl and images/ into (created if missing)")
    n: int = option(1000, "number of samples")
    seed: int = option(0, "random seed; the same seed and options give the same bytes")
    levels: list[int] = option(
        list(DEFAULT_LEVELS),
        "difficulty levels to draw, in equal shares: 1 = count one group, 2 = sum, difference "
        "or comparison of two groups, 3 = arithmetic over three groups, 4 = over four groups",
    )
    choice_fraction: float = option(
        CHOICE_FRACTION, "share of multiple-choice questions (answer is a letter A-D)"
    )
    image_size: int = option(IMAGE_SIZE, "image width and height in pixels (a multiple of grid)")
    grid: int = option(GRID, "cells per side of the board")
    overwrite: bool = option(False, "replace an existing samples.jsonl in the output folder")

    def validate(self) -> None:
        if self.n < 1:
            raise ConfigError(f"n must be at least 1, got {self.n}")
        if not self.levels or any(lv not in LEVELS for lv in self.levels):
            raise ConfigError(
                f"levels must be a non-empty list drawn from {list(LEVELS)}, got {self.levels}"
            )
        if not 0.0 <= self.choice_fraction <= 1.0:
            raise ConfigError(f"choice_fraction must be in [0, 1], got {self.choice_fraction}")
        if self.grid < 2 or self.image_size % self.grid:
            raise ConfigError(
                f"image_size ({self.image_size}) must be a multiple of grid ({self.grid}), grid >= 2"
            )


def run_synth(cfg: SynthConfig) -> int:
    """Generate the samples and say where they went."""
    from r1v2.fsutil import check_writable_folder

    check_writable_folder(cfg.out, "out")
    path = generate(
        cfg.n,
        cfg.seed,
        cfg.out,
        levels=cfg.levels,
        choice_fraction=cfg.choice_fraction,
        image_size=cfg.image_size,
        grid=cfg.grid,
        overwrite=cfg.overwrite,
        progress=cfg.n >= PROGRESS_FROM,
    )
    print(f"wrote {cfg.n} samples to {path} (images in {path.parent / 'images'})")
    return 0
