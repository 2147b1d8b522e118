"""`r1v2 plot`: the rolling mean by hand, clear errors for bad metrics files, the CLI end to end."""

import json

import pytest

from r1v2.cli import main
from r1v2.errors import R1V2Error
from r1v2.train.metrics import read_metrics
from r1v2.train.plot import rolling_mean, series


def _run(folder, n=30, ssb=True):
    """A metrics.jsonl as r1v2 grpo writes it: a step-0 probe row, then one row per step."""
    folder.mkdir(parents=True)
    rows = [{"step": 0, "probe_accuracy": 0.4, "hallucination_rate": 0.6}]
    for step in range(1, n + 1):
        row = {
            "step": step,
            "reward_mean": 1 + step / n,
            "effective_ratio": 0.65 if ssb else 0.5,
            "effective_ratio_before_replay": 0.5,
        }
        if step % 10 == 0:
            row |= {"probe_accuracy": 0.4 + step / 100, "hallucination_rate": 0.6 - step / 100}
        rows.append(row)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_rolling_mean_by_hand():
    assert rolling_mean([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert rolling_mean([1.0, 2.0, 3.0, 4.0], 3) == [1.0, 1.5, 2.0, 3.0]
    assert rolling_mean([5.0], 10) == [5.0]


def test_series_keeps_the_rows_that_logged_the_key(tmp_path):
    rows = read_metrics(_run(tmp_path / "a"))
    steps, values = series(rows, "probe_accuracy")
    assert steps == [0, 10, 20, 30] and values == pytest.approx([0.4, 0.5, 0.6, 0.7])
    assert series(rows, "reward_mean")[0] == list(range(1, 31))


def test_bad_metrics_files_name_file_and_line(tmp_path):
    with pytest.raises(R1V2Error, match="metrics.jsonl: file not found"):
        read_metrics(tmp_path)
    bad = tmp_path / "metrics.jsonl"
    bad.write_text('{"step": 1}\n{"step": 2, oops}\n')
    with pytest.raises(R1V2Error, match=r"metrics.jsonl:2: malformed JSON"):
        read_metrics(tmp_path)
    bad.write_text('{"step": 1}\n\n{"reward_mean": 1.0}\n')
    with pytest.raises(R1V2Error, match=r"metrics.jsonl:3: field 'step'"):
        read_metrics(bad)


def test_plot_command_writes_a_png_of_several_runs(tmp_path, capsys, monkeypatch):
    """Each panel holds one line per run with that run's values: reward the rolling mean over
    20 steps of 1 + step / 30 (step 30: mean of steps 11..30 = 1 + 20.5 / 30 = 1.6833333),
    the effective ratio after replay (0.65 with SSB, 0.5 without) and before it (dashed, 0.5),
    probe accuracy 0.4, 0.5, 0.6, 0.7 and hallucination rate 0.6, 0.5, 0.4, 0.3 at steps 0, 10,
    20, 30."""
    from matplotlib.figure import Figure

    figures = []
    savefig = Figure.savefig

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    a, b = _run(tmp_path / "ssb"), _run(tmp_path / "plain", ssb=False)
    out = tmp_path / "figs" / "curves.png"
    assert (
        main(["plot", str(a), str(b), "--labels", "SSB", "--labels", "plain", "--out", str(out)])
        == 0
    )
    assert f"wrote {out}" in capsys.readouterr().out
    data = out.read_bytes()
    assert data[:4] == b"\x89PNG" and len(data) > 10_000

    reward, ratio, accuracy, hallucination = figures[0].axes[:4]
    assert [line.get_label() for line in reward.get_lines()] == ["SSB", "plain"]
    for line in reward.get_lines():
        assert list(line.get_xdata()) == list(range(1, 31))
        assert line.get_ydata()[-1] == pytest.approx(1 + 20.5 / 30)
    solid = [ln for ln in ratio.get_lines() if ln.get_linestyle() == "-"]
    dashed = [ln for ln in ratio.get_lines() if ln.get_linestyle() == "--"]
    assert [ln.get_ydata()[-1] for ln in solid] == pytest.approx([0.65, 0.5])
    assert [ln.get_ydata()[-1] for ln in dashed] == pytest.approx([0.5, 0.5])
    for line in accuracy.get_lines():
        assert list(line.get_xdata()) == [0, 10, 20, 30]
        assert list(line.get_ydata()) == pytest.approx([0.4, 0.5, 0.6, 0.7])
    for line in hallucination.get_lines():
        assert list(line.get_ydata()) == pytest.approx([0.6, 0.5, 0.4, 0.3])

    # A run with probe rows only still plots (its empty panels say so).
    probe_only = tmp_path / "probe"
    probe_only.mkdir()
    (probe_only / "metrics.jsonl").write_text('{"step": 0, "probe_accuracy": 0.5}\n')
    assert main(["plot", str(probe_only), "--out", str(tmp_path / "p.png")]) == 0

    assert main(["plot", str(a), "--labels", "x", "--labels", "y"]) == 2
    assert "'labels' has 2 entries for 1 runs" in capsys.readouterr().err
