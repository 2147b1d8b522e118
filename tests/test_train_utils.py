import json
import random
import shutil

import numpy as np
import pytest
import torch

from r1v2.errors import R1V2Error
from r1v2.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from r1v2.train.metrics import MetricsLogger, read_metrics
from r1v2.train.sampler import PromptSampler


def _model():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    m[0].weight.requires_grad_(False)  # frozen: not in the checkpoint
    return m


def test_checkpoint_round_trip_weights_rng_and_state(tmp_path):
    m = _model()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = save_checkpoint(
        tmp_path, 5, model=m, trainer_state={"data": {"position": 7}}, meta={"model": "x"}
    )
    expected = (random.random(), np.random.rand(), torch.rand(1).item())

    m2 = _model()
    with torch.no_grad():
        m2[1].weight.zero_()
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    state, meta = load_checkpoint(path, m2)
    assert torch.equal(m2[1].weight, m[1].weight) and torch.equal(m2[0].bias, m[0].bias)
    assert not torch.equal(m2[0].weight, m[0].weight)  # frozen weights are not saved
    assert state == {"data": {"position": 7}} and meta["step"] == 5 and meta["model"] == "x"
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_keep_last_and_latest_ignore_incomplete(tmp_path):
    m = _model()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model=m, trainer_state={}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint-00000002",
        "checkpoint-00000003",
    ]
    # A folder without meta.json (a write that died) is never picked.
    broken = tmp_path / "checkpoint-00000009"
    broken.mkdir()
    assert latest_checkpoint(tmp_path).name == "checkpoint-00000003"
    with pytest.raises(R1V2Error, match="meta.json"):
        load_checkpoint(broken, m)


def test_metrics_logger_truncates_on_resume(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for s in (1, 2, 3):
        log.log(s, {"loss": torch.tensor(0.5 * s), "kl": float("nan")})
    log.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert (
        [r["step"] for r in rows] == [1, 2, 3] and rows[1]["loss"] == 1.0 and rows[0]["kl"] is None
    )
    log = MetricsLogger(tmp_path, resume_step=2, tensorboard=False)
    log.log(3, {"loss": 9.0})
    log.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[2]["loss"] == 9.0


def test_sampler_covers_each_epoch_and_resumes():
    s = PromptSampler(5, seed=0)
    first = s.next(5)
    assert sorted(first) == [0, 1, 2, 3, 4]
    s.next(3)
    state = s.state_dict()
    rest = [s.next(4) for _ in range(3)]
    s2 = PromptSampler(5, seed=0)
    s2.load_state_dict(state)
    assert [s2.next(4) for _ in range(3)] == rest
    assert PromptSampler(5, seed=1).next(5) != first or PromptSampler(5, seed=2).next(5) != first
    assert PromptSampler(4, shuffle=False).next(6) == [0, 1, 2, 3, 0, 1]


def test_sharded_accelerate_setups_are_refused():
    """A config asking accelerate for FSDP or DeepSpeed would otherwise be ignored silently."""
    from r1v2.train.grpo import check_distributed_type

    for kind in ("NO", "MULTI_CPU", "MULTI_GPU"):
        check_distributed_type(kind)
    for kind in ("FSDP", "DEEPSPEED"):
        with pytest.raises(R1V2Error, match=f"asks for {kind}.*multi_gpu.yaml"):
            check_distributed_type(kind)


def test_run_summary_by_hand():
    from r1v2.train.stage import run_summary

    rows = [{"step": 0, "probe_accuracy": 0.25, "hallucination_rate": 0.5}]
    rows += [{"step": s, "reward_mean": float(s), "effective_ratio": 0.7} for s in range(1, 41)]
    rows[5]["effective_ratio"] = 0.625
    rows[-1] |= {"probe_accuracy": 0.5, "hallucination_rate": 0.125}
    text = run_summary(rows, 12.4)
    assert text.startswith("40 steps in 12 s; ")
    assert "reward 10.5 -> 30.5 (mean of the first and last 20 steps)" in text  # 1..20, 21..40
    assert "lowest effective ratio 0.62" in text
    assert (
        "probe accuracy 25.0% -> 50.0% (steps 0 -> 40), hallucination rate 50.0% -> 12.5%" in text
    )
    assert run_summary([], 0.0) == "0 steps in 0 s"


@pytest.fixture
def trained(tmp_path):
    """A base LM and a run folder whose one checkpoint changed the LM head: (base, ckpt, head)."""
    from r1v2.model.policy import Policy
    from r1v2.toy.tiny import tiny_llm

    base = tiny_llm("how many red blue ? 0 1 2".split(), tmp_path / "base", seed=1)
    model = Policy.from_pretrained(base).model
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    ckpt = save_checkpoint(
        tmp_path / "run", 3, model=model, trainer_state={}, meta={"model": str(base)}
    )
    return base, ckpt, model.lm_head.weight.detach().clone()


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_export_applies_the_trained_weights(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    from r1v2.train.export import export

    base, ckpt, head = trained
    before = _tree(base)
    out = export(ckpt.parent, tmp_path / "exported")  # a run folder: its newest checkpoint
    assert torch.equal(AutoModelForCausalLM.from_pretrained(out).lm_head.weight, head)
    assert _tree(base) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["base", "exported", "run"]


@pytest.mark.parametrize(
    "out, message",
    [
        ("base", "is the base model input"),
        ("base/export", "is inside the base model input"),
        ("run/checkpoint-00000003", "is the checkpoint input"),
        ("run", "is the run folder input"),
        ("run/export", "is inside the run folder input"),
        (".", "holds the base model input"),
    ],
)
def test_export_refuses_to_write_over_its_inputs(trained, tmp_path, out, message):
    """Exporting onto the base model used to replace its model.safetensors silently."""
    from r1v2.train.export import export

    base, ckpt, _ = trained
    before = _tree(tmp_path)
    with pytest.raises(R1V2Error, match=message):
        export(ckpt, tmp_path / out, overwrite=True)
    assert _tree(tmp_path) == before


def test_export_base_model_override_is_an_input_too(trained, tmp_path):
    from r1v2.train.export import export

    base, ckpt, _ = trained
    other = shutil.copytree(base, tmp_path / "other")
    with pytest.raises(R1V2Error, match="is the base model input"):
        export(ckpt, other, base_model=other, overwrite=True)


def test_export_replaces_an_occupied_output_only_with_overwrite(trained, tmp_path):
    from r1v2.train.export import export

    _, ckpt, head = trained
    out = tmp_path / "exported"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(R1V2Error, match=r"exported: output folder is not empty \(set overwrite"):
        export(ckpt, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    export(ckpt, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "exported", "run"]


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda c: (c / "trainable.safetensors").unlink(),
            r"trainable\.safetensors: file not found",
        ),
        (lambda c: _truncate(c / "trainable.safetensors"), r"trainable\.safetensors: cannot read"),
        (
            lambda c: (c / "trainable.safetensors").write_bytes(b""),
            r"trainable\.safetensors: cannot",
        ),
        (lambda c: (c / "meta.json").write_text("{not json"), r"meta\.json: invalid JSON"),
        (lambda c: (c / "meta.json").write_text("[1]"), r"meta\.json: expected a JSON object"),
        (lambda c: (c / "meta.json").write_text("{}"), r"meta\.json: no 'model' field"),
    ],
)
def test_export_of_a_broken_checkpoint_names_the_file(trained, tmp_path, damage, message):
    from r1v2.train.export import export

    _, ckpt, _ = trained
    damage(ckpt)
    with pytest.raises(R1V2Error, match=message) as e:
        export(ckpt, tmp_path / "exported")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "exported").exists()


def test_export_of_a_loose_checkpoint_may_write_next_to_it(trained, tmp_path):
    """A checkpoint folder outside a run's layout has no run folder to protect."""
    from r1v2.train.export import export

    _, ckpt, head = trained
    loose = shutil.copytree(ckpt, tmp_path / "loose" / "ckpt")
    out = export(loose, tmp_path / "loose" / "exported")
    assert (out / "model.safetensors").is_file()
    with pytest.raises(R1V2Error, match="is inside the checkpoint input"):
        export(loose, loose / "exported")


def test_metrics_logger_drops_a_torn_last_line_on_resume(tmp_path):
    """A kill mid-write leaves half a JSON line: resuming at step 2 keeps steps 0-2 and drops it."""
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 0, "a": 1}\n{"step": 1, "a": 2}\n{"step": 2, "a": 3}\n{"step": 3, "a'
    )
    logger = MetricsLogger(tmp_path, resume_step=2, tensorboard=False)
    logger.log(3, {"a": 4.0})
    logger.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3]
