"""``r1v2 demo`` reuses a finished stage only while what it was made from is unchanged.

The demo's own stage logic runs on a toy world whose builders, trainers and evaluation are
replaced by quick fakes that write real files (safetensors weights, data rows): the reuse
checks read only files, so every case takes a second, not the minutes of a ``--fast`` run.
The real pipeline end to end is ``tests/test_demo.py::test_demo_fast_end_to_end``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import r1v2.toy.build as toy_build
import r1v2.toy.demo as demo
from r1v2.config import resolve
from r1v2.errors import R1V2Error
from r1v2.toy.report import seed_summary, write_report


def _weights(folder: Path, *values: float) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.tensor(values)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    return {}


def _rows(folder: Path, n: int, seed: int, name: str = "samples.jsonl") -> None:
    """``n`` rows of levels 1-4 in turn (the demo splits them by level)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        json.dumps({"question": f"q{i} of seed {seed}", "metadata": {"level": i % 4 + 1}})
        for i in range(n)
    ]
    (folder / name).write_text("\n".join(rows) + "\n")


def _md5(folder: Path) -> str:
    return hashlib.md5((folder / "model.safetensors").read_bytes()).hexdigest()


def _fake_data(cfg, out):
    _rows(out / "data" / "train", cfg.data.train_size, cfg.seed)
    _rows(out / "data" / "test", cfg.data.test_size, cfg.seed + 1)
    return {}


def _fake_train(cfg):
    """A trainer: final weights from the seed and the start model's bytes."""
    start = hashlib.md5((Path(cfg.model) / "model.safetensors").read_bytes()).digest()
    return _final(Path(cfg.output_dir), cfg.seed, start[0])


def _final(run: Path, *values: float) -> Path:
    _weights(run / "final", *values)
    return run


def _fake_eval(cfg, model):
    rows = (cfg.toy_dir / "data" / "test" / "samples.jsonl").read_text().splitlines()
    n = len(rows[: cfg.budget.eval_size])
    return {"model": str(model), "n": n, "accuracy": 0.5, "hallucination_rate": 0.25}


@pytest.fixture(scope="module")
def fakes():
    from r1v2.train import grpo, mpo

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(toy_build, "_build_data", _fake_data)
        mp.setattr(
            toy_build,
            "write_reference_pairs",
            lambda t, p, n, **kw: _rows(p, n, 0, "pairs.jsonl") or {},
        )
        mp.setattr(toy_build, "train_lm", lambda out, c, seed, **kw: _weights(out, seed))
        mp.setattr(toy_build, "train_vision", lambda out, c, seed, **kw: _weights(out, seed, 1))
        mp.setattr(toy_build, "_build_vlm", lambda c, out: _weights(out / "vlm", c.seed, 2))
        rm = {"accuracy_hallucinated": 0.9, "accuracy_repetitive": 1.0}
        mp.setattr(toy_build, "_build_rm", lambda c, out: _weights(out / "rm", c.seed, 3) or rm)
        mp.setattr(mpo, "train", _fake_train)
        mp.setattr(grpo, "train", _fake_train)
        mp.setattr(demo, "evaluate_model", _fake_eval)
        yield


def _cfg(out: Path, seed: int = 0) -> demo.DemoConfig:
    values = {"out": str(out), "fast": True, "progress": False, "seed": seed}
    return resolve(demo.DemoConfig, None, list(values.items()))


@pytest.fixture(scope="module")
def finished(fakes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "demo"
    demo.run_demo(_cfg(out))
    return out


@pytest.fixture
def out(finished, tmp_path) -> Path:
    """A copy of the finished seed-0 demo (moved whole: the same stages)."""
    copy = tmp_path / "demo"
    shutil.copytree(finished, copy)
    return copy


def _error(out: Path, seed: int = 0) -> str:
    with pytest.raises(R1V2Error) as e:
        demo.run_demo(_cfg(out, seed))
    assert "\n" not in str(e.value)
    return str(e.value)


def _result(out: Path, name: str) -> dict:
    return json.loads((out / "results" / f"{name}.json").read_text())


def test_a_moved_demo_reuses_every_stage_and_names_its_own_toy(out, capsys):
    demo.run_demo(_cfg(out))
    assert capsys.readouterr().out.count("done earlier") == 5  # toy, data, assembled, mpo, grpo
    assert _result(out, "toy")["toy"] == str(out / "toy")
    assert f"Toy world `{out / 'toy'}`" in (out / "report.md").read_text()


def test_a_seed_change_redoes_every_stage_and_the_final_model(out):
    """Refused at the toy (it may be the user's), then at MPO; once the folders named are
    removed, every stage is seed 1's, ``model/`` the new GRPO's weights."""
    seed0 = _md5(out / "model")
    assert _error(out, seed=1).startswith(f"toy={out / 'toy'} holds a toy build with other")
    shutil.rmtree(out / "toy")
    message = _error(out, seed=1)
    assert message.startswith(f"{out / 'results' / 'mpo.json'} was trained with other settings")
    assert "seed (0 -> 1)" in message and f"remove that file and {out / 'runs' / 'mpo'}" in message
    assert _result(out, "toy")["seed"] == 1 and _result(out, "assembled")["inputs"]
    for name in ("mpo", "grpo"):
        (out / "results" / f"{name}.json").unlink()
        shutil.rmtree(out / "runs" / name)
    demo.run_demo(_cfg(out, seed=1))
    assert _md5(out / "model") == _md5(out / "runs" / "grpo" / "final") != seed0
    assert _result(out, "grpo")["config"]["seed"] == 1


def test_a_changed_test_set_is_refused_not_mixed_into_one_table(out):
    test = out / "toy" / "data" / "test" / "samples.jsonl"
    test.write_text("".join(test.read_text().splitlines(keepends=True)[:30]))
    message = _error(out)
    assert message.startswith(f"{test.parent} changed since {out / 'results' / 'toy.json'}")
    assert f"remove {test.parent} to make it again" in message
    # Without the toy's record the assembled model is scored again; MPO, trained and scored
    # on the 40 rows, is refused: no table of 30 and 40.
    (out / "results" / "toy.json").unlink()
    message = _error(out)
    assert _result(out, "assembled")["n"] == 30
    assert message.startswith(f"{out / 'results' / 'mpo.json'} was trained with other inputs")
    assert f"probe_data {test.parent} (files changed" in message


def test_a_final_model_whose_run_was_removed_is_trained_again_and_copied(out, capsys):
    shutil.rmtree(out / "model")
    shutil.rmtree(out / "runs" / "grpo")
    demo.run_demo(_cfg(out))
    assert f"[grpo] {out / 'runs' / 'grpo' / 'final'} is missing" in capsys.readouterr().out
    assert _md5(out / "model") == _md5(out / "runs" / "grpo" / "final")


def test_model_folder_with_weights_the_demo_did_not_copy_is_refused(out):
    _weights(out / "model", 7.0)
    assert _error(out).startswith(f"{out / 'model'} holds other weights than the final model")


def test_broken_results_and_weights_are_one_line_naming_the_file(out):
    toy = out / "results" / "toy.json"
    kept = toy.read_text()
    toy.write_text("{}")
    assert _error(out).startswith(f"{toy}: field 'toy' missing; remove it")
    with pytest.raises(R1V2Error, match="toy.json: field 'toy' missing"):
        write_report(out)
    toy.write_text(kept)
    (out / "results" / "assembled.json").write_text("[1, 2]")
    assert _error(out).startswith(
        f"{out / 'results' / 'assembled.json'}: not a demo stage result (a JSON object "
        "expected, got list)"
    )


def test_truncated_toy_weights_are_one_line_naming_the_file(out):
    weights = out / "toy" / "vlm" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    assert _error(out).startswith(f"{weights}: cannot read the weights")
    (out / "results" / "toy.json").unlink()  # not even the toy's record: still refused
    assert _error(out).startswith(f"{weights}: cannot read the weights")


def _seed_demo(folder: Path, seed: int, acc: float) -> Path:
    toy = {"toy": str(folder / "toy"), "rm_accuracy_hallucinated": 0.9, "inputs": {"seed": seed}}
    demo.write_result(folder, "toy", toy)
    demo.write_result(folder, "grpo", {"accuracy": acc, "hallucination_rate": 0.1, "n": 40})
    return folder


def test_summary_refuses_a_folder_or_a_seed_named_twice(tmp_path):
    a, b = _seed_demo(tmp_path / "a", 0, 0.5), _seed_demo(tmp_path / "b", 0, 0.6)
    with pytest.raises(R1V2Error, match=f"^{a} and {a} are the same demo folder"):
        seed_summary([a, a, a])
    with pytest.raises(R1V2Error, match=f"^{a} and {b} are both seed 0; two runs of one seed"):
        seed_summary([a, b])
    c = _seed_demo(tmp_path / "c", 1, 0.7)
    assert "| 60.0% +- 14.1% |" in "\n".join(seed_summary([a, c]))
    cli = [sys.executable, "-m", "r1v2", "demo", "summary", str(a), str(a), str(a)]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "are the same demo folder" in done.stderr and "Traceback" not in done.stderr
