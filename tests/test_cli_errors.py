"""Every error a user can cause ends in one line, ``r1v2 CMD: error: ...``, and exit code 2."""

from __future__ import annotations

import shutil

import pytest
import torch

from r1v2.cli import main
from r1v2.model.policy import Policy
from r1v2.toy.tiny import tiny_llm, tiny_vision
from r1v2.train.checkpoint import save_checkpoint

WORDS = "how many red blue ? 0 1 2 <think> </think>".split()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """vision/, llm/ (also the base model of run/), run/checkpoint-00000001, a file, a full
    folder."""
    root = tmp_path_factory.mktemp("world")
    tiny_vision(root / "vision", image_size=32, patch_size=8, hidden_size=32)
    tiny_llm(WORDS, root / "llm", hidden_size=32)
    model = Policy.from_pretrained(root / "llm").model
    save_checkpoint(
        root / "run", 1, model=model, trainer_state={}, meta={"model": str(root / "llm")}
    )
    (root / "file.txt").write_text("x")
    (root / "full").mkdir()
    (root / "full" / "keep.txt").write_text("mine")
    return root


def _snapshot(root):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def _assert_one_line_error(capsys, command, code, expected):
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"r1v2 {command}: error: "), err
    assert expected in lines[0]
    assert "Traceback" not in err


ASSEMBLE_CASES = {
    "missing vision": (["vision=nope"], "nope: vision encoder checkpoint directory not found"),
    "missing llm": (["llm=nope"], "nope: LLM checkpoint directory not found"),
    "output is the llm": (["out={root}/llm", "overwrite=true"], "output folder is the LLM input"),
    "output inside the vision": (["out={root}/vision/x"], "is inside the vision encoder input"),
    "output holds the inputs": (["out={root}", "overwrite=true"], "holds the vision encoder"),
    "output is a file": (["out={root}/file.txt"], "file.txt: the output path is not a folder"),
    "output under a file": (["out={root}/file.txt/x"], "the output path is not a folder"),
    "existing output": (["out={root}/full"], "full: output folder is not empty"),
    "bad dtype": (["dtype=half"], "config field 'dtype'"),
}


@pytest.mark.parametrize("case", ASSEMBLE_CASES)
def test_assemble_errors(world, capsys, monkeypatch, case):
    monkeypatch.chdir(world)
    overrides, expected = ASSEMBLE_CASES[case]
    args = {"vision": f"{world}/vision", "llm": f"{world}/llm", "out": f"{world}/new"}
    args |= dict(o.format(root=world).split("=", 1) for o in overrides)
    before = _snapshot(world)
    code = main(["assemble", *(f"{k}={v}" for k, v in args.items())])
    _assert_one_line_error(capsys, "assemble", code, expected)
    assert _snapshot(world) == before


EXPORT_CASES = {
    "missing checkpoint": (["checkpoint={root}/nope"], "nope: checkpoint folder not found"),
    "not a run": (["checkpoint={root}/vision"], "vision: no checkpoint here"),
    "output is the base model": (
        ["out={root}/llm", "overwrite=true"],
        "the output folder is the base model input",
    ),
    "output is the run": (["out={root}/run", "overwrite=true"], "is the run folder input"),
    "output is the checkpoint": (
        ["out={root}/run/checkpoint-00000001", "overwrite=true"],
        "is the checkpoint input",
    ),
    "output is a file": (["out={root}/file.txt"], "file.txt: the output path is not a folder"),
    "existing output": (["out={root}/full"], "full: output folder is not empty"),
    "missing base model": (["base_model={root}/nope"], "nope/config.json: base model not found"),
}


@pytest.mark.parametrize("case", EXPORT_CASES)
def test_export_errors(world, capsys, case):
    overrides, expected = EXPORT_CASES[case]
    args = {"checkpoint": f"{world}/run", "out": f"{world}/new"}
    args |= dict(o.format(root=world).split("=", 1) for o in overrides)
    before = _snapshot(world)
    code = main(["export", *(f"--{k}={v}" for k, v in args.items())])
    _assert_one_line_error(capsys, "export", code, expected)
    assert _snapshot(world) == before


def test_broken_checkpoint_is_one_line(world, tmp_path, capsys):
    ckpt = shutil.copytree(world / "run" / "checkpoint-00000001", tmp_path / "run" / "ckpt-1")
    weights = ckpt / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code = main(["export", f"checkpoint={ckpt}", f"out={tmp_path / 'out'}"])
    _assert_one_line_error(capsys, "export", code, f"{weights}: cannot read the trained weights")
    (ckpt / "meta.json").write_text('{"model": ')
    code = main(["export", f"checkpoint={ckpt}", f"out={tmp_path / 'out'}"])
    _assert_one_line_error(capsys, "export", code, f"{ckpt / 'meta.json'}: invalid JSON at line 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_multi_line_message_is_joined_into_one(tmp_path, capsys):
    """A YAML parser's error spans several lines; the CLI prints it as one."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: [unclosed\n")
    code = main(["export", str(bad), "checkpoint=x"])
    _assert_one_line_error(capsys, "export", code, "bad.yaml:")


def test_export_end_to_end_writes_the_trained_model(world, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(world / "run"), "--out", str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    base = AutoModelForCausalLM.from_pretrained(world / "llm")
    got = AutoModelForCausalLM.from_pretrained(out)
    for (name, a), b in zip(base.state_dict().items(), got.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the checkpoint holds the base weights unchanged
