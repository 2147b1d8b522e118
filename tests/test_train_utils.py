import json
import random

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
    from r1v2.train.grpo import run_summary

    rows = [{"step": 0, "probe_accuracy": 0.25, "hallucination_rate": 0.5}]
    rows += [{"step": s, "reward_mean": float(s), "effective_ratio": 0.7} for s in range(1, 41)]
    rows[5]["effective_ratio"] = 0.625
    rows[-1] |= {"probe_accuracy": 0.5, "hallucination_rate": 0.125}
    text = run_summary(rows, 12.4)
    assert text.startswith("40 steps in 12 s; ")
    assert "reward 10.5 -> 30.5 (mean of the first and last 20 steps)" in text  # 1..20, 21..40
    assert "lowest effective ratio 0.62" in text
    assert "probe accuracy 25.0% -> 50.0% (steps 0 -> 40), hallucination rate 50.0% -> 12.5%" in text
    assert run_summary([], 0.0) == "0 steps in 0 s"
