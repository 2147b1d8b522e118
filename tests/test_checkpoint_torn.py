"""Torn checkpoints: resume=auto falls back to the newest intact one, resume=PATH and export
refuse a broken one naming the file, and a failed write (disk full) keeps the last good one.

The reference run (GRPO, 3 steps, a checkpoint after each) is the uninterrupted run: a copy
whose checkpoint 3 is damaged resumes from checkpoint 2 and must end with its exact weights.
"""

import errno
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from fixtures.worlds import checkpoint_dir, checkpoint_weights, tiny_world

import r1v2.train.checkpoint as checkpoint_mod
from r1v2.cli import main
from r1v2.config import resolve
from r1v2.errors import R1V2Error
from r1v2.train.checkpoint import check_checkpoint, save_checkpoint
from r1v2.train.grpo import GRPOConfig, train
from r1v2.train.metrics import read_metrics


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny VLM, 24 prompts and ``reference``: a 3-step GRPO run with checkpoints 1, 2, 3."""
    root = tmp_path_factory.mktemp("torn")
    tiny_world(root, 24)
    train(resolve(GRPOConfig, None, _args(root, root / "reference")))
    return root


def _args(world, out, *extra):
    return [
        f"model={world / 'vlm'}",
        f"data={world / 'data'}",
        f"output_dir={out}",
        "max_steps=3",
        "save_steps=1",
        "keep_last=5",
        "prompts_per_step=4",
        "group_size=4",
        "generation.max_new_tokens=12",
        "progress=false",
        "tensorboard=false",
        "prompts_per_generate=2",
        *extra,
    ]


def _same(a, b):
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def _copy(world, tmp_path):
    return Path(shutil.copytree(world / "reference", tmp_path / "run"))


def _truncate(file):
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _randomize(file):
    file.write_bytes(random.Random(0).randbytes(file.stat().st_size))


# name -> (damage done to a checkpoint folder, the file that is then broken)
CASES = {
    "truncated safetensors": (_truncate, "trainable.safetensors"),
    "random bytes safetensors": (_randomize, "trainable.safetensors"),
    "missing safetensors": (Path.unlink, "trainable.safetensors"),
    "truncated trainer_state": (_truncate, "trainer_state.pt"),
    "missing trainer_state": (Path.unlink, "trainer_state.pt"),
    "invalid meta.json": (lambda f: f.write_text('{"step": 3, "model": '), "meta.json"),
    "empty rng file": (lambda f: f.write_bytes(b""), "rng-rank0.pt"),
}


def _damage(ckpt, case):
    damage, name = CASES[case]
    damage(ckpt / name)
    return ckpt / name


@pytest.mark.parametrize("case", CASES)
def test_resume_auto_skips_a_broken_newest_checkpoint(world, tmp_path, capsys, case):
    """Checkpoint 3 damaged: one warning naming the file, then the run resumes from checkpoint
    2 and ends with the uninterrupted run's weights, its log reading like that run's."""
    out = _copy(world, tmp_path)
    broken = _damage(checkpoint_dir(out, 3), case)
    capsys.readouterr()
    train(resolve(GRPOConfig, None, _args(world, out)))
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1, captured.err
    assert warnings[0].startswith(f"warning: skipping a broken checkpoint: {broken}: ")
    assert "starting at step 2 of 3" in captured.out
    assert _same(checkpoint_weights(out, 3), checkpoint_weights(world / "reference", 3))
    assert check_checkpoint(checkpoint_dir(out, 3))["step"] == 3  # rewritten whole
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]


@pytest.mark.parametrize("case", CASES)
def test_resume_path_to_a_broken_checkpoint_names_the_file(world, tmp_path, case):
    out = _copy(world, tmp_path)
    ckpt = checkpoint_dir(out, 3)
    broken = _damage(ckpt, case)
    if case == "invalid meta.json":
        expected = f"{broken}: invalid JSON at line 1"
    elif case.startswith("missing"):
        expected = f"{broken}: missing"
    else:
        expected = f"{broken}: "
    with pytest.raises(R1V2Error) as e:
        train(resolve(GRPOConfig, None, _args(world, tmp_path / "new", f"resume={ckpt}")))
    assert str(e.value).startswith(f"resume={ckpt}: broken checkpoint: {expected}"), e.value
    assert not (tmp_path / "new").exists()


@pytest.fixture
def no_loading_bar():
    """transformers draws a progress bar on stderr while it loads weights; off, stderr holds
    only what r1v2 writes."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


def _one_line_error(capsys, code, expected):
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("r1v2 grpo: error: "), err
    assert expected in lines[0], err
    assert "Traceback" not in err
    return lines[0]


def test_cli_resume_path_to_a_broken_checkpoint_is_one_line(world, tmp_path, capsys):
    out = _copy(world, tmp_path)
    broken = _damage(checkpoint_dir(out, 3), "empty rng file")
    capsys.readouterr()
    code = main(["grpo", *_args(world, tmp_path / "new", f"resume={checkpoint_dir(out, 3)}")])
    _one_line_error(capsys, code, f"{broken}: empty file")


def test_no_intact_checkpoint_is_refused_unless_overwrite(world, tmp_path, capsys):
    """Every checkpoint broken: the folder still holds an earlier run, so resume=auto refuses
    (one line naming each broken file) and changes nothing; overwrite=true starts afresh."""
    out = _copy(world, tmp_path)
    broken = [
        _damage(checkpoint_dir(out, s), c)
        for s, c in (
            (1, "missing trainer_state"),
            (2, "empty rng file"),
            (3, "truncated safetensors"),
        )
    ]
    before = {str(p): p.stat().st_mtime_ns for p in out.rglob("*")}
    capsys.readouterr()
    code = main(["grpo", *_args(world, out)])
    line = _one_line_error(capsys, code, "holds files but no checkpoint to resume")
    assert all(str(f) in line for f in broken) and "overwrite=true" in line
    assert {str(p): p.stat().st_mtime_ns for p in out.rglob("*")} == before
    train(resolve(GRPOConfig, None, _args(world, out, "overwrite=true", "max_steps=1")))
    err = capsys.readouterr().err
    assert all(f"warning: skipping a broken checkpoint: {f}" in err for f in broken)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-00000001"]
    assert [r["step"] for r in read_metrics(out)] == [1]


def test_half_written_checkpoints_of_a_killed_run_are_ignored(world, tmp_path):
    """A kill mid-save leaves a temporary folder (some files, no meta.json); a checkpoint-N
    folder without its files is skipped too. The run resumes from checkpoint 2, exactly."""
    out = _copy(world, tmp_path)
    tmp = out / ".tmp-checkpoint-00000003"
    os.replace(checkpoint_dir(out, 3), tmp)
    for name in ("meta.json", "trainer_state.pt"):
        (tmp / name).unlink()
    _truncate(tmp / "trainable.safetensors")
    checkpoint_dir(out, 4).mkdir()
    shutil.copy(tmp / "rng-rank0.pt", checkpoint_dir(out, 4))
    train(resolve(GRPOConfig, None, _args(world, out)))
    assert _same(checkpoint_weights(out, 3), checkpoint_weights(world / "reference", 3))
    assert not list(out.glob(".tmp-checkpoint-*"))


def test_disk_full_while_saving_keeps_the_last_checkpoint(
    world, tmp_path, capsys, monkeypatch, no_loading_bar
):
    """The disk fills while checkpoint 3's weights are written: the run stops with one line
    naming the folder and the cause, the half-written folder is gone, checkpoint 2 still loads
    and a rerun (disk freed) ends with the uninterrupted run's weights."""
    out = _copy(world, tmp_path)
    shutil.rmtree(checkpoint_dir(out, 3))  # the run stands at step 2

    def disk_full(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\0" * 64)  # part of it made it to the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(checkpoint_mod, "save_file", disk_full)
    capsys.readouterr()
    code = main(["grpo", *_args(world, out)])
    _one_line_error(
        capsys,
        code,
        f"{checkpoint_dir(out, 3)}: cannot write the checkpoint ([Errno {errno.ENOSPC}] "
        f"{os.strerror(errno.ENOSPC)}",
    )
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == [
        "checkpoint-00000001",
        "checkpoint-00000002",
    ]
    assert check_checkpoint(checkpoint_dir(out, 2))["step"] == 2
    monkeypatch.undo()
    train(resolve(GRPOConfig, None, _args(world, out)))
    assert _same(checkpoint_weights(out, 3), checkpoint_weights(world / "reference", 3))


def test_save_fsyncs_every_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = checkpoint_mod._fsync, os.replace
    monkeypatch.setattr(checkpoint_mod, "_fsync", lambda p: events.append(("fsync", p.name)))

    def replace(src, dst):
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_mod.os, "replace", replace)
    model = torch.nn.Linear(3, 2)
    final = save_checkpoint(tmp_path, 7, model=model, trainer_state={"step": 7})
    at = events.index(("replace", final.name))
    before = {name for kind, name in events[:at]}
    assert before == {p.name for p in final.iterdir()} | {".tmp-checkpoint-00000007"}
    assert events[at - 2 : at] == [("fsync", "meta.json"), ("fsync", ".tmp-checkpoint-00000007")]
    assert events[at + 1 :] == [("fsync", tmp_path.name)]
    real_fsync(final / "meta.json")  # the real one works on files and folders
    real_fsync(final)


def test_a_save_behind_a_newer_checkpoint_is_not_pruned(tmp_path):
    """Resumed from checkpoint 2 past a broken checkpoint 3, keep_last=1: the save of step 2
    prunes only what is older (1); the newer 3 does not push the fresh 2 out."""
    model = torch.nn.Linear(3, 2)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model=model, trainer_state={}, keep_last=5)
    (checkpoint_dir(tmp_path, 3) / "trainer_state.pt").write_bytes(b"")
    save_checkpoint(tmp_path, 2, model=model, trainer_state={}, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-00000002",
        "checkpoint-00000003",
    ]
    assert check_checkpoint(checkpoint_dir(tmp_path, 2))["step"] == 2


EXPORT_CASES = {
    "truncated safetensors": "cannot read the trained weights",
    "random bytes safetensors": "cannot read the trained weights",
    "missing safetensors": "file not found",
    "invalid meta.json": "invalid JSON at line 1",
}


@pytest.mark.parametrize("case", EXPORT_CASES)
def test_export_of_a_broken_checkpoint_names_the_file(world, tmp_path, capsys, case):
    """Export reads meta.json and the weights only; either broken is one line naming it, for
    a checkpoint folder and for a run folder (its newest checkpoint)."""
    out = _copy(world, tmp_path)
    broken = _damage(checkpoint_dir(out, 3), case)
    for source in (checkpoint_dir(out, 3), out):
        capsys.readouterr()
        code = main(["export", f"checkpoint={source}", f"out={tmp_path / 'exported'}"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert f"r1v2 export: error: {broken}: {EXPORT_CASES[case]}" in err
    assert not (tmp_path / "exported").exists()


# ---- MPO: the same fallback (stage.prepare_output) ---------------------------------------------


def test_mpo_resume_auto_skips_a_broken_newest_checkpoint(world, tmp_path, capsys):
    from transformers import AutoProcessor, InternVLForConditionalGeneration

    from r1v2.model.reward_model import ValueHeadModel, save_value_head
    from r1v2.train.mpo import MPOConfig
    from r1v2.train.mpo import train as mpo_train

    base = InternVLForConditionalGeneration.from_pretrained(world / "vlm")
    processor = AutoProcessor.from_pretrained(world / "vlm")
    save_value_head(tmp_path / "rm", ValueHeadModel(base, pooling="logprob"), processor)
    args = [
        f"model={world / 'vlm'}",
        f"data={world / 'data'}",
        f"rm_path={tmp_path / 'rm'}",
        "max_steps=2",
        "save_steps=1",
        "keep_last=5",
        "prompts_per_round=4",
        "n=3",
        "generation.max_new_tokens=10",
        "micro_batch_size=2",
        "progress=false",
        "tensorboard=false",
        "prompts_per_generate=2",
        "rules=[]",
        "threshold=0",
        "optim.lr=0.01",
    ]
    full, cut = tmp_path / "full", tmp_path / "cut"
    mpo_train(resolve(MPOConfig, None, [*args, f"output_dir={full}"]))
    shutil.copytree(full, cut)
    broken = _damage(checkpoint_dir(cut, 2), "truncated trainer_state")
    capsys.readouterr()
    mpo_train(resolve(MPOConfig, None, [*args, f"output_dir={cut}"]))
    assert f"warning: skipping a broken checkpoint: {broken}: " in capsys.readouterr().err
    assert _same(checkpoint_weights(full, 2), checkpoint_weights(cut, 2))
