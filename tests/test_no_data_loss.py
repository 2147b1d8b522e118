"""Nothing a user had is deleted, truncated or overwritten without overwrite=true (issue 14).

Each test puts something of the user's (or of another run) where a command writes, runs the
command, and checks the refusal (one line, exit 2, naming the field) came before any work and
left the file as it was; or that an interrupted write leaves the previous file whole.
"""

import importlib
import json
import pathlib

import pytest
import torch
from fixtures.eval_benchmarks import write_jsonl

import r1v2.train.mpo as mpo_mod
import r1v2.train.prefilter as prefilter_mod
from r1v2.cli import main
from r1v2.config import resolve
from r1v2.data import Sample
from r1v2.data import write_jsonl as write_samples
from r1v2.data.synthetic import generate
from r1v2.errors import R1V2Error
from r1v2.eval.harness import ResponseCache
from r1v2.eval.jsonl import complete_lines
from r1v2.eval.report import write_reports
from r1v2.train.checkpoint import save_checkpoint
from r1v2.train.metrics import MetricsLogger
from r1v2.train.prefilter import PrefilterConfig, prefilter
from r1v2.train.stage import prepare_output

MINE = "the user's own file\n"


def _one_line(capsys, code, command, *expected):
    """Exit 2, one stderr line ``r1v2 COMMAND: error: ...`` holding each of ``expected``."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"r1v2 {command}: error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], err
    return lines[0]


def _no_work(monkeypatch, module):
    """Make ``module.load_pool`` (the first piece of work of prefilter and mpo pairs) fail the
    test if it is reached."""

    def load_pool(path):
        raise AssertionError(f"work started (load_pool({path})) before out= was checked")

    monkeypatch.setattr(module, "load_pool", load_pool)


# ---- r1v2 plot -------------------------------------------------------------------------------


def _metrics_run(folder):
    folder.mkdir(parents=True)
    rows = [{"step": s, "reward_mean": s / 10, "effective_ratio": 0.5} for s in range(1, 6)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_plot_says_the_file_it_wrote(tmp_path, capsys):
    """--out DIR (no extension; here an existing folder): matplotlib writes DIR.png, and that
    is the path printed (it printed DIR before)."""
    run = _metrics_run(tmp_path / "run")
    (tmp_path / "DIR").mkdir()
    assert main(["plot", str(run), "--out", str(tmp_path / "DIR")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'DIR.png'}"
    assert (tmp_path / "DIR.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DIR", "DIR.png", "run"]


def test_plot_keeps_a_file_it_did_not_write(tmp_path, capsys):
    """An existing file of the user's: refused (one line naming out=), untouched; overwrite
    replaces it; a figure r1v2 plot wrote is replaced without overwrite (re-plotting)."""
    run = _metrics_run(tmp_path / "run")
    mine = tmp_path / "curves.png"
    mine.write_text(MINE)
    code = main(["plot", str(run), "--out", str(mine)])
    _one_line(capsys, code, "plot", f"out={mine} exists", "overwrite=true")
    assert mine.read_text() == MINE
    assert main(["plot", str(run), "--out", str(mine), "--overwrite"]) == 0
    assert mine.read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(run), "--out", str(mine)]) == 0  # ours now: re-plot is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "run"]  # no temp left


def test_plot_unknown_format_is_one_line(tmp_path, capsys):
    run = _metrics_run(tmp_path / "run")
    code = main(["plot", str(run), "--out", str(tmp_path / "curves.foo")])
    _one_line(capsys, code, "plot", "out=", "unknown image format '.foo'")
    assert not (tmp_path / "curves.foo").exists()


# ---- r1v2 prefilter --------------------------------------------------------------------------


def _pool(tmp_path):
    pool = [Sample("a", "q", (), "3", kind="math"), Sample("b", "q", (), "3", kind="math")]
    return write_samples(pool, tmp_path / "pool.jsonl")


def _prefilter_cfg(tmp_path, out, *extra):
    overrides = [f"data={_pool(tmp_path)}", f"out={out}", "k=2", "progress=false", *extra]
    return resolve(PrefilterConfig, None, overrides)


def test_prefilter_refuses_an_existing_out_before_any_work(tmp_path, monkeypatch):
    _no_work(monkeypatch, prefilter_mod)
    out = tmp_path / "kept.jsonl"
    out.write_text(MINE)
    with pytest.raises(R1V2Error, match=rf"^out={out} exists: .*overwrite=true"):
        prefilter(_prefilter_cfg(tmp_path, out))
    assert out.read_text() == MINE
    stats = tmp_path / "other.jsonl.stats.json"  # the stats file beside it counts too
    stats.write_text(MINE)
    with pytest.raises(R1V2Error, match=rf"^out={tmp_path / 'other.jsonl'}: {stats} exists"):
        prefilter(_prefilter_cfg(tmp_path, tmp_path / "other.jsonl"))
    assert stats.read_text() == MINE


def test_prefilter_refuses_the_pool_as_out_even_with_overwrite(tmp_path, monkeypatch):
    _no_work(monkeypatch, prefilter_mod)
    pool = _pool(tmp_path)
    before = pool.read_bytes()
    with pytest.raises(R1V2Error, match=rf"^out={pool} is the data input"):
        prefilter(_prefilter_cfg(tmp_path, pool, "overwrite=true"))
    assert pool.read_bytes() == before


def test_prefilter_cli_out_is_a_folder_is_one_line(tmp_path, monkeypatch, capsys):
    _no_work(monkeypatch, prefilter_mod)
    folder = tmp_path / "folder"
    folder.mkdir()
    code = main(["prefilter", f"data={_pool(tmp_path)}", f"out={folder}", "overwrite=true"])
    _one_line(capsys, code, "prefilter", f"out={folder} is a folder")


# ---- r1v2 mpo pairs --------------------------------------------------------------------------


def test_mpo_pairs_checks_out_before_any_work(tmp_path, monkeypatch, capsys):
    """A folder as out, a file under a file, or the prompt pool itself: refused before the pool
    loads (before, a folder or a path under a file failed only when the pairs were written,
    after every rollout)."""
    _no_work(monkeypatch, mpo_mod)
    pool = _pool(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text(MINE)
    cases = {
        tmp_path / "folder": "is a folder",
        tmp_path / "file.txt" / "pairs.jsonl": f"{tmp_path / 'file.txt'} is a file, not a folder",
        pool: "is the data input",
    }
    for out, expected in cases.items():
        code = main(["mpo", "pairs", f"data={pool}", f"out={out}", "overwrite=true"])
        _one_line(capsys, code, "mpo pairs", f"out={out}", expected)
    assert (tmp_path / "file.txt").read_text() == MINE
    stats = tmp_path / "pairs.jsonl.stats.json"
    stats.write_text(MINE)
    code = main(["mpo", "pairs", f"data={pool}", f"out={tmp_path / 'pairs.jsonl'}"])
    _one_line(capsys, code, "mpo pairs", f"{stats} exists", "overwrite=true")
    assert stats.read_text() == MINE


# ---- r1v2 eval -------------------------------------------------------------------------------


def _eval(tmp_path, responses, *extra):
    rows = [{"ID": f"q{i}", "Problem": f"{i} + 1?", "Answer": i + 1} for i in range(2)]
    bench = write_jsonl(tmp_path / "aime.jsonl", rows)
    resp = write_jsonl(
        tmp_path / responses,
        [{"id": f"q{i}", "run": 0, "response": f"\\boxed{{{i + 1}}}"} for i in range(2)],
    )
    argv = ["eval", "--bench", f"aime={bench}", "--responses", str(resp)]
    return main([*argv, "--out", str(tmp_path / "out"), *extra])


def test_eval_keeps_another_evaluations_results(tmp_path, capsys):
    """out holds results.json of system A: evaluating system B there is refused before any
    work (one line saying what differs) and A's reports stay; the same evaluation may run
    again; overwrite=true replaces them."""
    assert _eval(tmp_path, "a.jsonl") == 0
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"results.json", "results.md", "results.png", "scores.jsonl"}
    capsys.readouterr()
    code = _eval(tmp_path, "b.jsonl")
    line = _one_line(capsys, code, "eval", f"out={out} holds the results of another evaluation")
    assert "a.jsonl" in line and "b.jsonl" in line and "overwrite=true" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _eval(tmp_path, "a.jsonl") == 0  # the same evaluation again: its own reports
    assert _eval(tmp_path, "b.jsonl", "--overwrite") == 0
    assert json.loads((out / "results.json").read_text())["responses"].endswith("b.jsonl")


def test_eval_keeps_report_files_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.md").write_text(MINE)
    code = _eval(tmp_path, "a.jsonl")
    _one_line(capsys, code, "eval", "report files not from r1v2 eval (results.md)")
    assert (out / "results.md").read_text() == MINE


def test_eval_reports_interrupted_mid_write_leave_the_previous_ones(tmp_path, monkeypatch):
    """A failure while scores.jsonl is written (a kill, a full disk) leaves the previous
    scores.jsonl whole; it used to be truncated, then half written."""
    import r1v2.eval.report as report_mod

    doc = {"benchmarks": {}, "model": "m", "responses": None, "settings": {}}
    out = tmp_path / "out"
    scores = {"aime": [{"id": f"q{i}", "correct": 1.0} for i in range(3)]}
    write_reports(out, doc, scores)
    before = (out / "scores.jsonl").read_bytes()
    calls = []
    clean = report_mod.clean_json

    def dying(value):
        calls.append(value)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return clean(value)

    monkeypatch.setattr(report_mod, "clean_json", dying)
    with pytest.raises(KeyboardInterrupt):
        write_reports(out, doc, {"aime": [{"id": "x", "correct": 0.0}] * 3})
    assert (out / "scores.jsonl").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [
        "results.json",
        "results.md",
        "results.png",
        "scores.jsonl",
    ]


def test_cache_reader_never_cuts_lines_another_run_appended(tmp_path, monkeypatch):
    """Two evaluations share a cache file; a killed third left a partial line. Run A reads the
    file; run B appends a complete line before A goes on. Cutting the partial line off at the
    length A read would remove B's line too: the file is only ever appended to."""
    path = tmp_path / "cache.jsonl"
    first = json.dumps({"id": "q0", "run": 0, "response": "a"}) + "\n"
    path.write_text(first + '{"id": "q1", "ru')
    other = json.dumps({"id": "q2", "run": 0, "response": "b"}) + "\n"
    read_bytes = pathlib.Path.read_bytes

    def read_then_other_run_appends(self):
        data = read_bytes(self)
        with open(self, "a") as f:
            f.write("\n" + other)  # run B: ends the partial line, appends its own
        return data

    monkeypatch.setattr(pathlib.Path, "read_bytes", read_then_other_run_appends)
    assert complete_lines(path) == [first.strip()]
    monkeypatch.undo()
    assert path.read_text().endswith(other)
    assert set(ResponseCache(path).responses) == {("q0", 0), ("q2", 0)}


def test_torn_cache_line_is_ended_not_cut(tmp_path):
    """A killed run's partial last line stays in the file (ended by a newline); the next
    append starts on a fresh line and both readers skip the fragment."""
    path = tmp_path / "cache.jsonl"
    data = json.dumps({"id": "q0", "run": 0, "response": "a"}) + '\n{"id": "q1", "ru'
    path.write_text(data)
    cache = ResponseCache(path)
    assert path.read_text() == data + "\n"
    cache.add([("q1", 0, "b")])
    assert ResponseCache(path).responses == {("q0", 0): "a", ("q1", 0): "b"}


# ---- metrics.jsonl ---------------------------------------------------------------------------


def _metrics(folder, steps):
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps({"step": s, "loss": float(s)}) + "\n" for s in steps)
    (folder / "metrics.jsonl").write_text(text)
    return text


def test_fresh_run_keeps_an_earlier_runs_metrics(tmp_path):
    """A new run (resume_step=0) into a folder holding metrics.jsonl used to cut it down to its
    step-0 rows silently."""
    text = _metrics(tmp_path, [0, 1, 2, 3])
    with pytest.raises(R1V2Error, match="metrics.jsonl holds the metrics of an earlier run"):
        MetricsLogger(tmp_path, tensorboard=False)
    assert (tmp_path / "metrics.jsonl").read_text() == text


def test_resume_rewrite_of_metrics_interrupted_leaves_the_log_whole(tmp_path, monkeypatch):
    """Resuming at step 2 rewrites metrics.jsonl without steps 3+; a kill mid-rewrite used to
    leave it truncated (write_text empties the file first)."""
    text = _metrics(tmp_path, [0, 1, 2, 3])

    def killed_mid_write(self, data, *args, **kwargs):
        with open(self, "w") as f:
            f.write(data[:5])
        raise KeyboardInterrupt

    monkeypatch.setattr(pathlib.Path, "write_text", killed_mid_write)
    import r1v2.fsutil as fsutil_mod

    def kill_at_rename(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(fsutil_mod.os, "replace", kill_at_rename)
    with pytest.raises(KeyboardInterrupt):
        MetricsLogger(tmp_path, resume_step=2, tensorboard=False)
    monkeypatch.undo()
    assert (tmp_path / "metrics.jsonl").read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


# ---- grpo / mpo: resume=PATH into another run's folder -------------------------------------


def _checkpoint(folder, step=1):
    model = torch.nn.Linear(2, 2)
    return save_checkpoint(folder, step, model=model, trainer_state={"step": step})


def test_resume_from_another_folder_into_an_occupied_output_dir(tmp_path):
    """resume=A/checkpoint-1 with output_dir=B, B holding run B: refused (its metrics would be
    cut to step 1 and its checkpoints pruned); overwrite=true replaces B once everything is
    validated; an empty B, or a checkpoint of B itself, go ahead as before."""
    ckpt = _checkpoint(tmp_path / "A")
    b = tmp_path / "B"
    text = _metrics(b, [0, 1, 2, 3, 4, 5])
    _checkpoint(b, 5)
    with pytest.raises(R1V2Error, match=rf"^output_dir={b} holds an earlier run and resume="):
        prepare_output(b, str(ckpt), overwrite=False)
    assert (b / "metrics.jsonl").read_text() == text
    assert prepare_output(b, str(ckpt), overwrite=True) == (ckpt, True)
    assert prepare_output(tmp_path / "empty", str(ckpt), overwrite=False) == (ckpt, False)
    own = _checkpoint(b, 3)  # rewinding a run within its own folder: as before
    assert prepare_output(b, str(own), overwrite=False) == (own, False)


def test_cli_resume_from_another_folder_is_one_line(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "A")
    b = tmp_path / "B"
    text = _metrics(b, [0, 1, 2])
    for command in ("grpo", "mpo"):
        argv = [f"model={tmp_path / 'none'}", f"data={tmp_path / 'none'}", "device=cpu"]
        code = main([command, *argv, f"output_dir={b}", f"resume={ckpt}"])
        _one_line(capsys, code, command, f"output_dir={b} holds an earlier run", "overwrite=true")
    assert (b / "metrics.jsonl").read_text() == text


# ---- r1v2 data synth -------------------------------------------------------------------------


def test_synth_keeps_the_images_of_an_earlier_set(tmp_path, capsys):
    """Set 1 (level 1) was written, its samples.jsonl renamed; set 2 (level 3, same seed: the
    same ids) used to redraw set 1's images in place. Refused naming the first image."""
    out = tmp_path / "d"
    generate(3, 0, out, levels=[1])
    (out / "samples.jsonl").rename(out / "train.jsonl")
    before = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    code = main(["data", "synth", "--out", str(out), "--n", "3", "--levels", "3"])
    _one_line(capsys, code, "data synth", str(out / "images" / "synth-s0-000000.png"), "exists")
    assert {p.name: p.read_bytes() for p in (out / "images").iterdir()} == before
    assert not (out / "samples.jsonl").exists()


def test_synth_interrupted_with_overwrite_leaves_the_old_set_whole(tmp_path, monkeypatch):
    """overwrite=true, killed at the third of four samples: the earlier set (its JSONL and
    every image) is as it was, and no temporary file is left."""
    # the module (the package exports a function of the same name)
    gen_mod = importlib.import_module("r1v2.data.synthetic.generate")
    out = tmp_path / "d"
    generate(4, 0, out, levels=[1])
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    render, calls = gen_mod.render, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return render(*args, **kwargs)

    monkeypatch.setattr(gen_mod, "render", dying)
    with pytest.raises(KeyboardInterrupt):
        generate(4, 0, out, levels=[3], overwrite=True)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in out.rglob("*") if p.is_dir()) == ["images"]


# ---- r1v2 toy build and demo summary --------------------------------------------------------


def test_toy_build_keeps_folders_it_did_not_build(tmp_path, monkeypatch):
    import r1v2.toy.build as build_mod

    out = tmp_path / "toy"
    mine = out / "data" / "train" / "mine.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text(MINE)
    monkeypatch.setattr(build_mod, "STAGES", ("data",))
    cfg = resolve(
        build_mod.ToyBuildConfig,
        None,
        [f"out={out}", "data.train_size=2", "data.test_size=2", "progress=false"],
    )
    try:
        build_mod.build(cfg, log=lambda _: None)
    except R1V2Error:
        pass
    assert mine.is_file() and mine.read_text() == MINE


def test_toy_build_killed_mid_stage_rebuilds_its_own_folders(tmp_path, monkeypatch):
    """A stage begun by an earlier call (its folders half written) is rebuilt, not refused."""
    import r1v2.toy.build as build_mod

    out = tmp_path / "toy"
    real = build_mod._build_data

    def dies(cfg, out_dir):
        (out_dir / "data" / "train").mkdir(parents=True)
        (out_dir / "data" / "train" / "half.png").write_bytes(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(build_mod, "STAGES", ("data",))
    cfg = resolve(
        build_mod.ToyBuildConfig,
        None,
        [f"out={out}", "data.train_size=2", "data.test_size=2", "progress=false"],
    )
    monkeypatch.setattr(build_mod, "_build_data", dies)
    with pytest.raises(KeyboardInterrupt):
        build_mod.build(cfg, log=lambda _: None)
    monkeypatch.setattr(build_mod, "_build_data", real)
    record = build_mod.build(cfg, log=lambda _: None)
    assert record["stages"]["data"]["built"] is True
    assert not (out / "data" / "train" / "half.png").exists()
    assert (out / "data" / "train" / "samples.jsonl").is_file()


def test_demo_summary_keeps_a_file_it_did_not_write(tmp_path, capsys):
    (tmp_path / "run" / "results").mkdir(parents=True)
    mine = tmp_path / "table.md"
    mine.write_text(MINE)
    code = main(["demo", "summary", str(tmp_path / "run"), "--out", str(mine)])
    assert mine.read_text() == MINE
    _one_line(capsys, code, "demo summary", f"out={mine}", "overwrite=true")
