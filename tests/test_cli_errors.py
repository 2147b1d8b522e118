"""Every error a user can cause ends in one line, ``r1v2 CMD: error: ...``, and exit code 2."""

from __future__ import annotations

import os
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


# ---- bad inputs of every command: filesystem, encodings, the wrong kind of model ---------------
#
# Each case is one command line; the error is one line ``r1v2 CMD: error: ...`` with exit
# code 2, no traceback. Training commands must refuse before the model loads (setup checks
# output_dir, the data and probe_data first): Policy.from_pretrained fails the test if called.


@pytest.fixture(scope="module")
def inputs(world):
    """world plus: data/ (synthetic samples with scenes), noscene/ (the same without),
    UTF-16 and binary sample, responses and config files."""
    import json

    assert main(["data", "synth", f"--out={world}/data", "--n=4"]) == 0
    rows = [json.loads(x) for x in (world / "data" / "samples.jsonl").read_text().splitlines()]
    (world / "noscene").mkdir()
    with open(world / "noscene" / "samples.jsonl", "w") as f:
        for r in rows:
            r["metadata"].pop("scene")
            r["images"] = [f"../data/{r['images'][0]}"]
            f.write(json.dumps(r) + "\n")
    text = (world / "data" / "samples.jsonl").read_text()
    (world / "u16.jsonl").write_text(text, encoding="utf-16")
    (world / "bin.jsonl").write_bytes(b'{"id": "a"}\n' + bytes(range(256)))
    response = json.dumps({"id": rows[0]["id"], "run": 0, "response": "1"}) + "\n"
    (world / "responses16.jsonl").write_text(response, encoding="utf-16")
    (world / "responses-bin.jsonl").write_bytes(bytes(range(256)))
    (world / "u16.yaml").write_text("seed: 1\n", encoding="utf-16")
    (world / "bin.yaml").write_bytes(b"seed: 1\n\x00\x01")
    (world / "empty.jsonl").write_text("")
    return world


TRAIN = ["model={root}/llm", "data={root}/data", "device=cpu", "output_dir={root}/new-run"]
EVAL = ["--bench", "samples={root}/data", "--out", "{root}/new-eval"]
BAD_INPUTS = {
    # output folder
    "grpo output_dir is a file": (
        ["grpo", *TRAIN, "output_dir={root}/file.txt"],
        "output_dir={root}/file.txt is a file, not a folder",
    ),
    "grpo output_dir under a file": (
        ["grpo", *TRAIN, "output_dir={root}/file.txt/run"],
        "({root}/file.txt is a file)",
    ),
    "mpo output_dir is a file": (
        ["mpo", *TRAIN, "output_dir={root}/file.txt"],
        "is a file, not a folder",
    ),
    "mpo output_dir under a file": (
        ["mpo", *TRAIN, "output_dir={root}/file.txt/run"],
        "({root}/file.txt is a file)",
    ),
    # probe data without scenes
    "grpo probe_data without scenes": (
        ["grpo", *TRAIN, "probe_data={root}/noscene"],
        "probe_data={root}/noscene: sample 'synth-s0-000000' has no 'scene' in its metadata",
    ),
    "mpo probe_data without scenes": (
        ["mpo", *TRAIN, "probe_data={root}/noscene"],
        "has no 'scene' in its metadata",
    ),
    "grpo probe_data empty": (["grpo", *TRAIN, "probe_data={root}/empty.jsonl"], "no samples"),
    # encodings
    "grpo data is UTF-16": (
        ["grpo", *TRAIN, "data={root}/u16.jsonl"],
        "{root}/u16.jsonl: the file is UTF-16 text (byte-order mark); save it as UTF-8",
    ),
    "grpo data is binary": (
        ["grpo", *TRAIN, "data={root}/bin.jsonl"],
        "{root}/bin.jsonl:2: binary data, not text (a NUL byte)",
    ),
    "mpo data is UTF-16": (
        ["mpo", *TRAIN, "data={root}/u16.jsonl"],
        "u16.jsonl: the file is UTF-16",
    ),
    "grpo config is UTF-16": (["grpo", "{root}/u16.yaml"], "{root}/u16.yaml: the file is UTF-16"),
    "grpo config is binary": (["grpo", "{root}/bin.yaml"], "{root}/bin.yaml:2: binary data"),
    "eval benchmark is UTF-16": (
        ["eval", *EVAL, "--bench", "pope={root}/u16.jsonl", "--responses", "{root}/x.jsonl"],
        "{root}/u16.jsonl: the file is UTF-16",
    ),
    "eval samples are binary": (
        ["eval", "--bench", "samples={root}/bin.jsonl", "--responses", "{root}/x.jsonl"]
        + ["--out", "{root}/new-eval"],
        "{root}/bin.jsonl:2: binary data",
    ),
    "eval responses are UTF-16": (
        ["eval", *EVAL, "--responses", "{root}/responses16.jsonl"],
        "{root}/responses16.jsonl: the file is UTF-16",
    ),
    "eval responses are binary": (
        ["eval", *EVAL, "--responses", "{root}/responses-bin.jsonl"],
        "{root}/responses-bin.jsonl:1: binary data",
    ),
    # the wrong kind of checkpoint
    "grpo model is a vision encoder": (
        ["grpo", *TRAIN, "model={root}/vision"],
        "{root}/vision: InternVLVisionModel is neither a causal LM nor a vision-language model",
    ),
    "mpo model is a vision encoder": (
        ["mpo", *TRAIN, "model={root}/vision"],
        "a vision encoder alone is an input of `r1v2 assemble`",
    ),
    "chat model is a vision encoder": (
        ["chat", "--model", "{root}/vision", "how many ?"],
        "neither a causal LM nor a vision-language model",
    ),
    # --out of other commands
    "data synth out is a file": (
        ["data", "synth", "--out", "{root}/file.txt", "--n=2"],
        "file.txt",
    ),
    "eval out is a file": (
        ["eval", "--bench", "samples={root}/data", "--responses", "{root}/x.jsonl"]
        + ["--out", "{root}/file.txt"],
        "file.txt",
    ),
}
# Cases whose fix lies in a file this change may not touch; strict: they fail loudly once fixed.
NOT_YET: dict[str, str] = {}
COMMANDS = ("data synth", "grpo", "mpo", "eval", "chat")


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=NOT_YET[c]))
        if c in NOT_YET
        else c
        for c in BAD_INPUTS
    ],
)
def test_bad_inputs_are_one_line_errors(inputs, capsys, monkeypatch, case):
    argv, expected = BAD_INPUTS[case]
    argv = [a.format(root=inputs) for a in argv]
    command = next(c for c in COMMANDS if " ".join(argv).startswith(c))
    if "vision" not in case:  # every other check comes before the model loads

        def loaded(*args, **kwargs):
            raise AssertionError(f"{case}: the model loaded before the input was checked")

        monkeypatch.setattr(Policy, "from_pretrained", loaded)
    before = _snapshot(inputs)
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    _assert_one_line_error_text(captured.err, command, code, expected.format(root=inputs))
    assert _snapshot(inputs) == before  # nothing written


def _assert_one_line_error_text(err: str, command: str, code: int, expected: str) -> None:
    """Exit 2 and one error line, the last (eval first says what it loaded, one line each)."""
    lines = err.splitlines()
    assert code == 2, err
    assert sum(": error: " in line for line in lines) == 1, err
    assert lines[-1].startswith(f"r1v2 {command}: error: "), err
    assert expected in lines[-1], err


def test_read_only_output_folder_is_refused_before_the_model_loads(inputs, capsys, monkeypatch):
    """Tests run as root, where a read-only folder is still writable: the probe file's creation
    is made to fail as it does for another user (EACCES)."""
    import tempfile

    real = tempfile.mkstemp
    locked = inputs / "locked"
    locked.mkdir()

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 (tempfile's name)
        if dir is not None and os.path.abspath(dir) == str(locked):
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(Policy, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    for command in ("grpo", "mpo"):
        for out in (locked, locked / "run"):  # the folder itself, or its nearest ancestor
            args = [a.format(root=inputs) for a in TRAIN] + [f"output_dir={out}"]
            code = main([command, *args])
            _assert_one_line_error_text(
                capsys.readouterr().err,
                command,
                code,
                f"output_dir={out}: cannot write in {locked}: Permission denied",
            )
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_without_root(inputs, capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        args = [a.format(root=inputs) for a in TRAIN] + [f"output_dir={locked}/run"]
        code = main(["grpo", *args])
        _assert_one_line_error_text(
            capsys.readouterr().err, "grpo", code, f"cannot write in {locked}"
        )
    finally:
        locked.chmod(0o700)


# ---- r1v2 data check: encodings, empty files, images outside the data folder ------------------


def _check(capsys, *args) -> tuple[int, list[str]]:
    code = main(["data", "check", *map(str, args)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out.splitlines()


def test_data_check_reports_utf16_binary_and_empty_files(inputs, capsys):
    code, lines = _check(capsys, inputs / "u16.jsonl", inputs / "bin.jsonl", inputs / "empty.jsonl")
    assert code == 1
    assert (
        f"{inputs}/u16.jsonl: the file is UTF-16 text (byte-order mark); save it as UTF-8" in lines
    )
    assert f"{inputs}/bin.jsonl:2: binary data, not text (a NUL byte); expected UTF-8 text" in lines
    assert f"{inputs}/empty.jsonl: empty file: no rows" in lines
    assert "3 problem(s):" in lines
    assert "by reason: unreadable file 2, empty file 1" in lines


def test_data_check_warns_about_images_outside_the_data_folder(inputs, capsys, tmp_path):
    import json

    sub = tmp_path / "pool"
    sub.mkdir()
    rows = [json.loads(x) for x in (inputs / "data" / "samples.jsonl").read_text().splitlines()]
    image = inputs / "data" / rows[0]["images"][0]
    inside = sub / "img.png"
    inside.write_bytes(image.read_bytes())
    paths = [os.path.relpath(image, sub), str(image), "img.png", "x/../img.png"]
    with open(sub / "s.jsonl", "w") as f:
        for row, path in zip(rows, paths, strict=True):
            f.write(json.dumps(row | {"images": [path]}) + "\n")

    code, lines = _check(capsys, sub)
    assert code == 0  # warnings alone
    assert lines[-4:] == [
        "2 warning(s):",
        f"{sub}/s.jsonl:1: field 'images[0]': image path leaves the data folder ({sub}): "
        f"{paths[0]}",
        f"{sub}/s.jsonl:2: field 'images[0]': absolute image path: {image}",
        "no problems found",
    ]
    code, lines = _check(capsys, sub, "images_outside=refuse")
    assert code == 1
    assert "by reason: image outside the data folder 2" in lines
    assert lines[0] == "1 file(s), 4 rows: 2 samples loaded, 2 rows with problems"
    code, lines = _check(capsys, sub, "images_outside=allow")
    assert code == 0 and "warning(s):" not in " ".join(lines)
    # a folder given: its subfolders' files may use images anywhere inside it
    nested = tmp_path / "nested"
    (nested / "a").mkdir(parents=True)
    (nested / "img.png").write_bytes(image.read_bytes())
    (nested / "a" / "s.jsonl").write_text(json.dumps(rows[0] | {"images": ["../img.png"]}) + "\n")
    code, lines = _check(capsys, nested)
    assert code == 0 and "warning(s):" not in " ".join(lines)
    code, lines = _check(capsys, nested / "a" / "s.jsonl")  # the file alone: its own folder
    assert code == 0 and "1 warning(s):" in lines


# ---- the helpers behind those messages -------------------------------------------------------


def test_text_errors_name_file_and_line(tmp_path):
    from r1v2.data.schema import DataError
    from r1v2.data.text import read_text

    cases = {
        "utf8.txt": ("ok\nü\n".encode(), None),
        "bom.txt": (b"\xef\xbb\xbfok\n", None),
        "utf16le.txt": ("ab\n".encode("utf-16-le"), "looks like UTF-16 text"),
        "utf32.txt": ("ab\n".encode("utf-32"), "the file is UTF-32 text (byte-order mark)"),
        "latin1.txt": ("a\nb\nçé\n".encode("latin-1"), ":3: not valid UTF-8 (byte 1 of the line)"),
        "nul.txt": (b"a\nb\nc\x00d\n", ":3: binary data, not text (a NUL byte)"),
    }
    for name, (data, expected) in cases.items():
        (tmp_path / name).write_bytes(data)
        if expected is None:
            assert read_text(tmp_path / name).startswith("ok")
            continue
        with pytest.raises(DataError) as e:
            read_text(tmp_path / name)
        assert str(e.value).startswith(f"{tmp_path / name}"), str(e.value)
        assert expected in str(e.value)
    with pytest.raises(DataError, match="nope.txt: cannot read: No such file"):
        read_text(tmp_path / "nope.txt")


def test_writing_samples_or_pairs_under_a_file_is_one_line(world, tmp_path):
    from r1v2.data.loaders import write_jsonl
    from r1v2.data.pairs import PreferenceRecord, write_pairs
    from r1v2.data.schema import Sample
    from r1v2.errors import R1V2Error

    sample = Sample("a", "q", (), "1")
    pair = PreferenceRecord("a", "q", "c", "r")
    for write, item in ((write_jsonl, sample), (write_pairs, pair)):
        target = world / "file.txt" / "sub" / "out.jsonl"
        with pytest.raises(R1V2Error, match=rf"^{target}: cannot write: {world}/file.txt is a "):
            write([item], target)
        (tmp_path / "dir.jsonl").mkdir(exist_ok=True)
        with pytest.raises(R1V2Error, match=r"dir.jsonl: cannot write: it is a folder$"):
            write([item], tmp_path / "dir.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.jsonl"]  # no temporary left
