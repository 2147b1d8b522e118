"""Offline prompt filtering on a fixture whose rollouts (and so rewards) are known."""

import json
from types import SimpleNamespace

import pytest
import torch

import r1v2.model.policy as policy_mod
from r1v2.config import resolve
from r1v2.data import Sample, load_samples, write_jsonl
from r1v2.errors import R1V2Error
from r1v2.train.prefilter import PrefilterConfig, classify, prefilter

GOOD = "i see 3 red circles . </think> \\boxed{3}"
BAD = "i see 2 red circles . </think> \\boxed{2}"


class FakePolicy:
    """Answers by a script per prompt: the question text says which completions to return."""

    opens_think = True
    model = torch.nn.Linear(1, 1)  # the rollout engine switches it to eval mode

    def generate(self, items, sampling, *, group_size, batch_size=None):
        texts = []
        for item in items:
            plan = {"always right": [GOOD], "always wrong": [BAD], "mixed": [GOOD, BAD]}[
                item.question
            ]
            texts += [plan[j % len(plan)] for j in range(group_size)]
        return SimpleNamespace(texts=texts)


def test_classify_by_hand():
    assert classify([2.0, 2.0], [1.0, 1.0], 0.0) == "all_correct"
    assert classify([1.0, 1.0], [0.0, 0.0], 0.0) == "all_wrong"
    assert classify([1.0, 2.0], [0.0, 1.0], 0.0) == "kept"
    assert classify([None, 1.0], [None, 0.0], 0.0) == "unscored"
    assert classify([0.5, 0.5], None, 0.0) == "all_equal"


def test_classify_uses_the_trainers_std_floor():
    """Rewards 1.00 and 1.02 (an accuracy tie, reward-model scores 0.02 apart): std 0.01. Under
    a floor of 0.05 GRPO gives the group zero advantages, so the prefilter drops it; with no
    floor it is kept. [0, 1] (std 0.5) is kept either way."""
    assert classify([1.0, 1.02], [1.0, 1.0], 0.05) == "all_correct"
    assert classify([1.0, 1.02], [1.0, 1.0], 0.0) == "kept"
    assert classify([0.0, 1.0], [0.0, 1.0], 0.05) == "kept"


def test_prefilter_keeps_only_mixed_prompts(tmp_path, monkeypatch):
    pool = [
        Sample("a", "always right", (), "3", kind="math"),
        Sample("b", "mixed", (), "3", kind="math"),
        Sample("c", "always wrong", (), "3", kind="math"),
        Sample("d", "mixed", (), "3", kind="math"),
    ]
    write_jsonl(pool, tmp_path / "pool.jsonl")
    monkeypatch.setattr(
        policy_mod.Policy, "from_pretrained", classmethod(lambda cls, *a, **k: FakePolicy())
    )
    out = tmp_path / "kept" / "samples.jsonl"
    cfg = resolve(
        PrefilterConfig,
        None,
        [
            f"data={tmp_path / 'pool.jsonl'}",
            f"out={out}",
            "k=4",
            "progress=false",
            "prompts_per_generate=3",
        ],
    )
    stats = prefilter(cfg)
    assert {k: stats[k] for k in ("kept", "all_correct", "all_wrong", "all_equal")} == {
        "kept": 2,
        "all_correct": 1,
        "all_wrong": 1,
        "all_equal": 0,
    }
    assert [s.id for s in load_samples(out).samples] == ["b", "d"]
    assert json.loads((tmp_path / "kept" / "samples.jsonl.stats.json").read_text())["prompts"] == 4


def test_prefilter_that_keeps_nothing_says_why(tmp_path, monkeypatch):
    write_jsonl([Sample("a", "always wrong", (), "3", kind="math")], tmp_path / "pool.jsonl")
    monkeypatch.setattr(
        policy_mod.Policy, "from_pretrained", classmethod(lambda cls, *a, **k: FakePolicy())
    )
    cfg = resolve(
        PrefilterConfig,
        None,
        [f"data={tmp_path / 'pool.jsonl'}", "progress=false", f"out={tmp_path / 'o.jsonl'}"],
    )
    with pytest.raises(R1V2Error, match="kept no prompt of 1"):
        prefilter(cfg)
