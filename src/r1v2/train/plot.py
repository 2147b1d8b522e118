"""``r1v2 plot``: training curves of one or more runs from their ``metrics.jsonl``, as a PNG.

Four panels against the step, one line per run (SSB against plain GRPO on one figure, say):

- reward: ``reward_mean``, a rolling mean over ``window`` steps;
- effective ratio: after replay (solid) and before replay (dashed), rolling means; the RECIPE's
  0.6 target as a dotted line;
- probe accuracy (``probe_accuracy``, logged every ``probe_every`` steps);
- hallucination rate on the probe (``hallucination_rate``).

A panel whose metric no run logged says so instead of staying blank. ``r1v2 grpo`` also writes
``OUTPUT_DIR/metrics.png`` of its own run when it finishes.

The figure goes to ``out`` (``out.png`` when ``out`` has no extension, as matplotlib would
name it), written through a temporary file; a PNG carries the text chunk ``Software: r1v2
plot``, so a later ``r1v2 plot`` may replace it, while any other existing file needs
``overwrite=true``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1v2.config import option
from r1v2.errors import R1V2Error
from r1v2.fsutil import check_output_file, write_atomic
from r1v2.train.metrics import read_metrics

PANELS: tuple[tuple[str, str], ...] = (
    ("reward_mean", "reward (rolling mean)"),
    ("effective_ratio", "effective ratio (solid: after replay, dashed: before)"),
    ("probe_accuracy", "probe accuracy"),
    ("hallucination_rate", "probe hallucination rate"),
)
MARK = "r1v2 plot"  # the "Software" text chunk of the PNGs plot_runs writes


@dataclass
class PlotConfig:
    """``r1v2 plot RUN [RUN ...]``: training curves of GRPO runs."""

    runs: list[str] = option(help="run folders (each with metrics.jsonl) or metrics.jsonl files")
    out: str = option("curves.png", "PNG file to write (.png is added to a name without one)")
    overwrite: bool = option(False, "replace an existing out file that r1v2 plot did not write")
    labels: list[str] | None = option(None, "legend labels, one per run (default: folder names)")
    window: int = option(20, "steps in the rolling mean of the per-step curves")

    def validate(self) -> None:
        if not self.runs:
            raise R1V2Error("name at least one run folder: r1v2 plot runs/grpo [runs/other ...]")
        if self.labels is not None and len(self.labels) != len(self.runs):
            raise R1V2Error(
                f"config field 'labels' has {len(self.labels)} entries for {len(self.runs)} runs"
            )
        if self.window < 1:
            raise R1V2Error(f"config field 'window' must be >= 1, got {self.window}")


def figure_path(out: str | Path) -> Path:
    """The file a figure for ``out`` goes to: ``out``, or ``out.png`` when it has no extension."""
    out = Path(out)
    return out if out.suffix else out.with_name(out.name + ".png")


def written_by_plot(path: Path) -> bool:
    """Whether ``path`` is a PNG that :func:`plot_runs` wrote (its ``Software`` text chunk)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get("Software") == MARK
    except Exception:  # not an image, unreadable: not ours
        return False


def check_out(out: str | Path, overwrite: bool) -> Path:
    """The figure's path, refused in one line before anything is read: an unknown image
    format, a folder, or an existing file that ``r1v2 plot`` did not write (without
    ``overwrite``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = figure_path(out)
    formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise R1V2Error(
            f"out={out}: unknown image format {path.suffix!r} (use one of "
            f"{', '.join('.' + f for f in sorted(formats))})"
        )
    return check_output_file(path, "out", overwrite=overwrite or written_by_plot(path))


def rolling_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of ``key`` over the rows that logged it."""
    points = [(r["step"], float(r[key])) for r in rows if r.get(key) is not None]
    return [s for s, _ in points], [v for _, v in points]


def plot_runs(
    runs: list[str | Path], out: str | Path, labels: list[str] | None = None, window: int = 20
) -> Path:
    """Write the four-panel figure of ``runs`` to ``out`` (see :func:`figure_path`), replacing
    the file there; returns its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    plotted = [key for key, _ in PANELS] + ["effective_ratio_before_replay"]
    data = [read_metrics(r, numbers=plotted) for r in runs]
    labels = labels or [Path(r).name if Path(r).is_dir() else Path(r).parent.name for r in runs]
    fig = Figure(figsize=(11, 7), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    colours = [f"C{i}" for i in range(len(runs))]
    for ax, (key, title) in zip(axes, PANELS):
        drawn = False
        for rows, label, colour in zip(data, labels, colours):
            steps, values = series(rows, key)
            if not steps:
                continue
            drawn = True
            per_step = key in ("reward_mean", "effective_ratio")
            ax.plot(
                steps,
                rolling_mean(values, window) if per_step else values,
                color=colour,
                label=label,
                marker=None if per_step else "o",
                markersize=3,
            )
            if key == "effective_ratio":
                b_steps, before = series(rows, "effective_ratio_before_replay")
                if b_steps:
                    ax.plot(b_steps, rolling_mean(before, window), color=colour, linestyle="--")
        if key == "effective_ratio" and drawn:
            ax.axhline(0.6, color="grey", linestyle=":", linewidth=1)
        if not drawn:
            ax.text(
                0.5,
                0.5,
                f"no run logged {key}",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="grey",
            )
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[2:]:
        ax.set_xlabel("step")
    legend: dict[str, Any] = {}  # label -> handle, over every panel (a run may skip some)
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, handle)
    handles, names = list(legend.values()), list(legend)
    if handles:
        fig.legend(handles, names, loc="upper center", ncol=min(len(names), 4), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path = figure_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix[1:].lower()
    image = io.BytesIO()
    fig.savefig(image, format=fmt, metadata={"Software": MARK} if fmt == "png" else None)
    return write_atomic(path, image.getvalue())  # a kill mid-write leaves the previous figure


def run(cfg: PlotConfig) -> int:
    check_out(cfg.out, cfg.overwrite)  # before any metrics file is read
    path = plot_runs(cfg.runs, cfg.out, cfg.labels, cfg.window)
    print(f"wrote {path}")
    return 0
