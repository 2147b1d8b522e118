"""The MPO trainer end to end on a tiny random VLM, a tiny reward model and synthetic prompts."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixtures.worlds import checkpoint_weights, tiny_world
from safetensors.torch import load_file

import r1v2.cli as cli
import r1v2.train.mpo as mpo_mod
from r1v2.algos.mpo import bco_loss, dpo_loss, nll_loss, sequence_logratio
from r1v2.config import resolve
from r1v2.data import load_samples
from r1v2.data.pairs import load_pairs
from r1v2.errors import R1V2Error
from r1v2.train.metrics import read_metrics
from r1v2.train.mpo import MPOConfig, TrainPair, mpo_update, train

COMMANDS = [
    cli.Command(
        name="mpo", help="MPO", config="r1v2.train.mpo:MPOConfig", run="r1v2.train.mpo:run"
    ),
    cli.Command(
        name="mpo pairs",
        help="MPO pairs",
        config="r1v2.train.mpo:MPOPairsConfig",
        run="r1v2.train.mpo:run_pairs",
    ),
]
# `python -c RUNNER mpo ...`: the CLI with the mpo commands registered (test-local)
RUNNER = (
    "import sys, r1v2.cli as c; c.COMMANDS += [c.Command(name='mpo', help='MPO', "
    "config='r1v2.train.mpo:MPOConfig', run='r1v2.train.mpo:run')]; sys.exit(c.main())"
)
ROUND_KEYS = {
    "round",
    "epoch",
    "prompts",
    "pairs_built",
    "pairs_kept",
    "no_valid_chosen",
    "score_gap_mean",
    "rm_score_mean",
    "response_length_mean",
    "lr",
    "skipped_steps",
    "step_seconds",
}
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2")
UPDATE_KEYS = {
    "loss",
    "loss_dpo",
    "loss_bco",
    "loss_nll",
    "delta",
    "reward_margin",
    "reward_accuracy",
    "chosen_logratio",
    "rejected_logratio",
    "chosen_reward",
    "rejected_reward",
    "grad_norm",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny VLM, a tiny value-head reward model on it (mean log-prob head), 24 prompts."""
    return tiny_world(tmp_path_factory.mktemp("mpo"), 24, reward_model=True)


def _args(world, out, *extra):
    return [
        f"model={world / 'vlm'}",
        f"data={world / 'data'}",
        f"rm_path={world / 'rm'}",
        f"output_dir={out}",
        "max_steps=3",
        "save_steps=2",
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
        *extra,
    ]


def _cfg(world, out, *extra):
    return resolve(MPOConfig, None, _args(world, out, *extra))


def _adapter(weights):
    """The adapter's tensors, named without the "model." prefix (checkpoints name parameters as
    in named_parameters(), final/ as save_pretrained does)."""
    return {k.removeprefix("model."): v for k, v in weights.items() if "multi_modal_projector" in k}


def _final(out):
    return _adapter(load_file(str(Path(out) / "final" / "model.safetensors")))


def _same(a, b):
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_loop_logs_every_metric_and_checkpoints(world, tmp_path):
    out = tmp_path / "run"
    extra = (f"probe_data={world / 'data'}", "probe_every=2", "probe_size=4")
    train(_cfg(world, out, *extra))
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert set(rows[0]) == {
        "step",
        "probe_accuracy",
        "probe_unscored",
        "hallucination_rate",
        "guard_streak",
    }
    for r in rows[1:]:
        assert ROUND_KEYS | UPDATE_KEYS <= set(r), (ROUND_KEYS | UPDATE_KEYS) - set(r)
        assert r["prompts"] == 4 and r["epoch"] == 1 and r["round"] == r["step"]
        # rules=[] and threshold 0: every prompt gives a pair (3 responses, distinct scores)
        assert r["pairs_built"] == r["pairs_kept"] == 4 and r["score_gap_mean"] > 0
        assert "offline" not in r  # sampled and scored pairs
        assert r["chosen_reward"] == pytest.approx(0.1 * r["chosen_logratio"])
        assert r["reward_margin"] == pytest.approx(r["chosen_reward"] - r["rejected_reward"])
        assert r["loss"] == pytest.approx(0.8 * r["loss_dpo"] + 0.2 * r["loss_bco"] + r["loss_nll"])
    # step 1 is at pi_0: every log-ratio is 0, and so is the shift after it; step 3's shift
    # is the mean of beta * lr over the 16 responses of steps 1-2 (4 pairs each)
    assert rows[1]["chosen_logratio"] == rows[1]["rejected_logratio"] == 0.0
    assert rows[1]["delta"] == rows[2]["delta"] == 0.0
    step2 = 0.1 * 4 * (rows[2]["chosen_logratio"] + rows[2]["rejected_logratio"])
    assert rows[3]["delta"] == pytest.approx(step2 / 16, rel=1e-9) and rows[3]["delta"] != 0
    assert "hallucination_rate" in rows[2] and "hallucination_rate" not in rows[1]
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == [
        "checkpoint-00000002",
        "checkpoint-00000003",
    ]
    before = load_file(str(world / "vlm" / "model.safetensors"))
    after = checkpoint_weights(out, 3)
    assert {k.removeprefix("model.") for k in after} == {
        k for k in before if "multi_modal_projector" in k
    }  # adapter-only
    assert any(not torch.equal(v, before[k.removeprefix("model.")]) for k, v in after.items())
    assert _same(_adapter(after), _final(out))


def test_default_rules_keep_no_pair_from_a_random_policy(world, tmp_path):
    """A random policy never writes a correct boxed answer: no pair passes the rules, nothing
    is trained (the weights stay), and the run goes on."""
    out = tmp_path / "rules"
    train(_cfg(world, out, "rules=[accuracy, format, repetition]", "max_steps=2"))
    rows = read_metrics(out)
    for r in rows:
        assert r["pairs_kept"] == 0 and r["no_valid_chosen"] == 4 and "loss" not in r
        assert r["rule_pass_accuracy"] == 0.0 and r["skipped_steps"] == 0
        assert {"rule_pass_format", "rule_pass_repetition"} <= set(r)
    start = load_file(str(world / "vlm" / "model.safetensors"))
    assert all(
        torch.equal(v, start[k.removeprefix("model.")])
        for k, v in checkpoint_weights(out, 2).items()
    )


# ---- the update: each loss weight is wired -------------------------------------------------------


@pytest.fixture(scope="module")
def pairs_setup(world):
    """A policy whose adapter moved away from pi_0, and 4 pairs of its own sampled responses."""
    from r1v2.model.freeze import set_trainable
    from r1v2.model.policy import Policy
    from r1v2.train.reference import Reference

    policy = Policy.from_pretrained(world / "vlm")
    set_trainable(policy.model, "adapter")
    reference = Reference(policy.model)
    items = load_samples(world / "data").samples[:4]
    cfg = _cfg(world, world / "unused")
    torch.manual_seed(5)
    out = policy.generate(items, cfg.generation, group_size=2)
    ids = [row[m] for row, m in zip(out.completion_ids, out.completion_mask)]
    pairs = [TrainPair(items[i], ids[2 * i], ids[2 * i + 1], "", "") for i in range(4)]
    with torch.no_grad():
        for p in policy.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    start = {k: v.clone() for k, v in policy.model.state_dict().items()}
    return policy, reference, pairs, start


def _hand_gradient(policy, reference, pairs, weights, beta, delta):
    """d/dtheta of sum_k w_k mean_b loss_k, built from the algos losses by hand."""
    prompts, index, ids, mask = mpo_mod.collate_pairs(policy, pairs)
    policy.model.eval()
    with reference.active():
        ref = policy.logprobs(prompts, ids, mask, prompt_index=index)  # [2B, T]
    logps = policy.logprobs(prompts, ids, mask, prompt_index=index)  # [2B, T]
    lr = sequence_logratio(logps, ref, mask)  # [2B]
    b = len(pairs)
    terms = {
        "dpo": lambda: dpo_loss(lr[:b], lr[b:], beta).mean(),
        "bco": lambda: bco_loss(lr[:b], lr[b:], beta, delta).mean(),
        "nll": lambda: nll_loss(logps[:b], mask[:b]).mean(),
    }
    loss = sum(w * terms[k]() for k, w in weights.items())
    params = [p for p in policy.model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize(
    "weights",
    [
        {"dpo": 1.0},
        {"bco": 1.0},
        {"nll": 1.0},
        {"dpo": 0.8, "bco": 0.0, "nll": 0.0},
        {"dpo": 0.8, "bco": 0.2, "nll": 1.0},
    ],
    ids=["dpo", "bco", "nll", "zero-weights", "mpo"],
)
def test_each_loss_weight_is_wired(world, pairs_setup, weights):
    """One plain SGD step (lr 1, no clipping) of mpo_update over 4 pairs in micro-batches of
    3 and 1 moves the adapter by minus the gradient of the hand-built loss sum_k w_k mean_b
    loss_k at delta = 0.15 (the shift's mean before the step); a zero weight adds nothing.
    The single-term gradients differ from one another, so a miswired weight would fail."""
    from r1v2.algos.mpo import RunningMean

    policy, reference, pairs, start = pairs_setup
    policy.model.load_state_dict(start)
    shift = RunningMean()
    shift.update_from_sums(0.3, 2)  # mean 0.15
    want = _hand_gradient(policy, reference, pairs, weights, 0.1, 0.15)
    cfg = _cfg(world, world / "unused", "micro_batch_size=3", "optim.max_grad_norm=0")
    cfg.loss.weights = weights
    params = [p for p in policy.model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    metrics, stepped = mpo_update(
        policy,
        pairs,
        cfg=cfg,
        optimizer=optimizer,
        scheduler=scheduler,
        params=params,
        shift=shift,
        reference=reference,
    )
    assert stepped and metrics["delta"] == pytest.approx(0.15)
    for p, b, g in zip(params, before, want):
        torch.testing.assert_close(b - p.detach(), g, rtol=1e-4, atol=1e-7)
    assert {k for k in metrics if k.startswith("loss_")} == {
        f"loss_{k}" for k, w in weights.items() if w
    }
    # the shift took the step's 8 responses: (0.3 + 0.1 * sum lr) / (2 + 8)
    lr_sum = 4 * (metrics["chosen_logratio"] + metrics["rejected_logratio"])
    assert shift.count == 10 and shift.mean == pytest.approx((0.3 + 0.1 * lr_sum) / 10)
    if weights == {"dpo": 1.0}:  # the terms' gradients do differ
        other = _hand_gradient(policy, reference, pairs, {"bco": 1.0}, 0.1, 0.15)
        assert max((a - b).abs().max() for a, b in zip(other, want)) > 1e-6


def test_micro_batch_split_does_not_change_the_step(world, pairs_setup):
    """4 pairs in micro-batches of 1 or 4: the same step (plain SGD, lr 1: the weights move by
    the accumulated gradient itself) and the same logged metrics."""
    from r1v2.algos.mpo import RunningMean

    policy, reference, pairs, start = pairs_setup
    results = []
    for micro in (1, 4):
        policy.model.load_state_dict(start)
        cfg = _cfg(world, world / "unused", f"micro_batch_size={micro}")
        params = [p for p in policy.model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        shift = RunningMean()
        metrics, _ = mpo_update(
            policy,
            pairs,
            cfg=cfg,
            optimizer=optimizer,
            scheduler=scheduler,
            params=params,
            shift=shift,
            reference=reference,
        )
        results.append(([p.detach().clone() for p in params], metrics, shift.mean))
    (w1, m1, d1), (w4, m4, d4) = results
    for a, b in zip(w1, w4):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for key in UPDATE_KEYS:
        assert m1[key] == pytest.approx(m4[key], rel=1e-5, abs=1e-7), key
    assert d1 == pytest.approx(d4, rel=1e-5)  # float32 log-probs, padded differently


def test_micro_batches_deal_whole_micro_batches_to_processes():
    """10 pairs in micro-batches of 3 -> [0:3] [3:6] [6:9] [9:10]; two processes take two
    each, three processes 1, 1 and 2 (the same micro-batches as one process)."""
    whole = mpo_mod.micro_batches(10, 3)
    assert whole == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 10)]
    assert mpo_mod.micro_batches(10, 3, 2, 0) + mpo_mod.micro_batches(10, 3, 2, 1) == whole
    assert [len(mpo_mod.micro_batches(10, 3, 3, r)) for r in range(3)] == [1, 1, 2]
    assert mpo_mod.micro_batches(1, 3, 2, 0) == [] and mpo_mod.micro_batches(1, 3, 2, 1) == [
        slice(0, 1)
    ]


# ---- checkpoints and resume ----------------------------------------------------------------------


def test_delta_and_round_state_round_trip_through_a_checkpoint(world, tmp_path):
    """epochs=2: step 1 is the first pass over round 1's pairs, so checkpoint 1 is mid-round.
    It holds the shift (2 x 4 responses seen) and the round (its pairs, one epoch done); a
    run resumed from it ends with the weights, shift and log of an uninterrupted run."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    common = ("epochs=2", "save_steps=1", "keep_last=5")
    train(_cfg(world, full, *common, "max_steps=3"))
    train(_cfg(world, cut, *common, "max_steps=1"))
    state = torch.load(cut / "checkpoint-00000001" / "trainer_state.pt", weights_only=False)
    assert state["shift"] == {"count": 8, "total": 0.0}  # step 1 is at pi_0: all lr are 0
    rnd = state["round"]
    assert (rnd.index, rnd.epochs_done, len(rnd.pairs)) == (1, 1, 4)
    assert all(
        isinstance(p.chosen, torch.Tensor) and p.chosen_score >= p.rejected_score for p in rnd.pairs
    )
    train(_cfg(world, cut, *common, "max_steps=3"))  # resume=auto
    assert _same(checkpoint_weights(full, 3), checkpoint_weights(cut, 3))
    a = torch.load(full / "checkpoint-00000003" / "trainer_state.pt", weights_only=False)
    b = torch.load(cut / "checkpoint-00000003" / "trainer_state.pt", weights_only=False)
    assert a["shift"] == b["shift"] and a["shift"]["count"] == 24 and a["shift"]["total"] != 0
    assert a["round"].index == b["round"].index == 2
    rows_a, rows_b = read_metrics(full), read_metrics(cut)
    assert [r["step"] for r in rows_b] == [1, 2, 3]
    assert [(r["round"], r["epoch"]) for r in rows_b] == [(1, 1), (1, 2), (2, 1)]
    for ra, rb in zip(rows_a, rows_b):
        assert ra["loss"] == rb["loss"] and ra["delta"] == rb["delta"]


def test_a_new_run_never_touches_an_earlier_one_and_resume_checks_the_config(world, tmp_path):
    out = tmp_path / "run"
    train(_cfg(world, out, "max_steps=1", "save_steps=1"))
    log = (out / "metrics.jsonl").read_text()
    with pytest.raises(R1V2Error, match="holds an earlier run.*overwrite=true"):
        train(_cfg(world, out, "resume=never"))
    with pytest.raises(R1V2Error, match=r"threshold \(0.0 -> 1.0\)"):
        train(_cfg(world, out, "threshold=1"))
    with pytest.raises(R1V2Error, match="not a reward model"):  # validated before removing
        train(_cfg(world, out, "resume=never", "overwrite=true", f"rm_path={tmp_path / 'no'}"))
    assert (out / "metrics.jsonl").read_text() == log
    train(_cfg(world, out, "resume=never", "overwrite=true", "max_steps=2"))
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-00000002"]


def test_bad_configs_are_clear(world, tmp_path):
    with pytest.raises(R1V2Error, match="'n' must be >= 2"):
        _cfg(world, tmp_path, "n=1")
    with pytest.raises(R1V2Error, match=r"loss.weights: unknown loss\(es\) kto"):
        resolve(MPOConfig, None, [("loss.weights", {"kto": 1.0})])
    with pytest.raises(R1V2Error, match="at least one above 0"):
        resolve(MPOConfig, None, [("loss.weights", {"dpo": 0.0})])
    with pytest.raises(R1V2Error, match="rules"):
        _cfg(world, tmp_path, "rules=[style]")


# ---- the hallucination guard in a run ------------------------------------------------------------


def _scripted_probe(monkeypatch, rates, accuracies):
    """The probe returns these values in turn (steps 0, 1, 2, ...)."""
    calls = iter(zip(rates, accuracies))

    def fake(engine, items, *, max_new_tokens):
        rate, acc = next(calls)
        return {"probe_accuracy": acc, "probe_unscored": 0.0, "hallucination_rate": rate}

    monkeypatch.setattr(mpo_mod, "greedy_probe", fake)


@pytest.mark.parametrize("action", ["stop", "rollback"])
def test_guard_stops_or_rolls_back_a_run_whose_hallucination_rate_rises(
    world, tmp_path, monkeypatch, action, capsys
):
    """Probe every step: rates 0.2 (start), 0.2, 0.4, 0.5 with tolerance 0.1, patience 2 ->
    the guard fires at step 3 of 6. Accuracy is best at step 1. stop: final/ holds step 3's
    weights; rollback: step 1's (the checkpoint written at step 1 holds them too)."""
    _scripted_probe(monkeypatch, [0.2, 0.2, 0.4, 0.5], [0.3, 0.6, 0.4, 0.2])
    out = tmp_path / action
    extra = (
        f"probe_data={world / 'data'}",
        "probe_every=1",
        "probe_size=2",
        "max_steps=6",
        "save_steps=1",
        "keep_last=10",
        f"guard.action={action}",
        "guard.tolerance=0.1",
        "guard.patience=2",
    )
    cfg = _cfg(world, out, *extra)
    mpo_mod.run(cfg)
    printed = capsys.readouterr().out
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert [r["guard_streak"] for r in rows] == [0, 0, 1, 2]
    event = rows[-1]["guard_event"]
    assert "at step 3" in event and event in printed and f"; {event}" in printed  # summary too
    restored = checkpoint_weights(out, 1 if action == "rollback" else 3)
    assert _same(_final(out), _adapter(restored))
    assert not _same(
        checkpoint_weights(out, 1), checkpoint_weights(out, 2)
    )  # the run did move after step 1
    if action == "rollback":
        assert "restored to step 1" in event and _same(
            checkpoint_weights(out, 3), checkpoint_weights(out, 1)
        )
    # resumed, the run ends at once (the guard stays fired) ...
    train(cfg)
    assert "guard.action=off to continue" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(out)][-1] == 3
    # ... unless the guard is turned off (a resumable change); other guard changes are refused
    if action == "stop":
        with pytest.raises(R1V2Error, match="no best weights to roll back to"):
            train(_cfg(world, out, *extra, "guard.action=rollback"))
    with pytest.raises(R1V2Error, match=r"guard.patience \(2 -> 3\)"):
        train(_cfg(world, out, *extra, "guard.action=off", "guard.patience=3"))
    _scripted_probe(monkeypatch, [0.5, 0.5, 0.5], [0.1, 0.1, 0.1])
    train(_cfg(world, out, *extra, "guard.action=off", "max_steps=5"))
    assert [r["step"] for r in read_metrics(out)][-1] == 5


# ---- offline pairs and the CLI -------------------------------------------------------------------


def _offline_pairs(world, path):
    """The toy's pairs over the 24 prompts: chosen = the reference trace, rejected = a
    repetitive copy of it, images relative to the file."""
    from r1v2.toy.reward import repetitive_response

    rng = random.Random(0)
    rows = []
    for s in load_samples(world / "data").samples:
        trace = s.metadata["trace"].removeprefix("<think> ")
        rows.append(
            {
                "id": s.id,
                "question": s.question,
                "choices": s.choices,
                "image": os.path.relpath(s.images[0], path.parent),
                "chosen": trace,
                "rejected": repetitive_response(trace, rng),
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_offline_pairs_train_without_generating(world, tmp_path, monkeypatch):
    """Plain DPO on 5 offline pairs per round, 2 epochs: step 1 is at pi_0 (loss log 2), step
    2 revisits the same pairs after one update, which made the chosen traces likelier than
    the repetitive ones; step 3 is the next round (the next 5 pairs of the file)."""
    file = _offline_pairs(world, tmp_path / "pairs" / "toy.jsonl")
    monkeypatch.setattr(mpo_mod, "round_pairs", None)  # never called offline
    out = tmp_path / "offline"
    train(
        _cfg(
            world,
            out,
            f"data={file}",
            f"rm_path={tmp_path / 'none'}",
            "max_steps=3",
            "prompts_per_round=5",
            "epochs=2",
            "optim.lr=0.001",
            "loss.weights={dpo: 1}",
        )
    )
    rows = read_metrics(out)
    assert [(r["pairs_kept"], r["round"], r["epoch"]) for r in rows] == [
        (5, 1, 1),
        (5, 1, 2),
        (5, 2, 1),
    ]
    assert rows[0]["score_gap_mean"] is None and "rule_pass_accuracy" not in rows[0]
    assert all(r["offline"] == 1.0 for r in rows)  # the report tells offline runs by it
    assert rows[0]["loss"] == pytest.approx(0.693147, abs=1e-6) and rows[0]["reward_margin"] == 0
    assert rows[1]["loss"] < rows[0]["loss"] and rows[1]["reward_margin"] > 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(file.read_text().replace('"chosen"', '"chosn"', 1))
    with pytest.raises(R1V2Error, match=r"bad.jsonl:1: field 'chosn': unknown field"):
        train(_cfg(world, tmp_path / "o2", f"data={bad}"))


def test_resume_refuses_pairs_that_changed(world, tmp_path):
    """A run on offline pairs, then the file's chosen and rejected swapped: resuming is
    refused in one line naming the data (it continued at step 2 on the swapped pairs
    before); the unchanged file resumes."""
    file = _offline_pairs(world, tmp_path / "pairs" / "toy.jsonl")
    out = tmp_path / "run"
    args = [f"data={file}", f"rm_path={tmp_path / 'none'}", "prompts_per_round=4"]
    train(_cfg(world, out, *args, "max_steps=1", "save_steps=1"))
    original = file.read_text()
    rows = [json.loads(line) for line in original.splitlines()]
    swapped = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]
    file.write_text("".join(json.dumps(r) + "\n" for r in swapped))
    with pytest.raises(R1V2Error, match=r"trained on other data: the rows of .*toy.jsonl changed"):
        train(_cfg(world, out, *args, "max_steps=2"))
    file.write_text(original)
    train(_cfg(world, out, *args, "max_steps=2"))
    assert [r["step"] for r in read_metrics(out)] == [1, 2]


def test_cli_mpo_pairs_then_mpo_on_them(world, tmp_path, monkeypatch, capsys):
    """`r1v2 mpo pairs` writes the pairs of one round in the offline layout (they load back);
    `r1v2 mpo` trains on that file and on the prompt pool, and prints its summary."""
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, *COMMANDS])
    common = [
        f"model={world / 'vlm'}",
        f"rm_path={world / 'rm'}",
        "prompts_per_round=4",
        "n=3",
        "generation.max_new_tokens=10",
        "rules=[]",
        "threshold=0",
    ]
    file = tmp_path / "elsewhere" / "pairs.jsonl"
    args = ["mpo", "pairs", f"data={world / 'data'}", f"out={file}", *common]
    assert cli.main(args) == 0
    pairs = load_pairs(file).pairs
    assert len(pairs) == 4 and all(p.images[0].is_file() for p in pairs)
    assert json.loads(file.read_text().splitlines()[0])["images"][0].startswith("../")
    meta = pairs[0].metadata
    assert meta["score_gap"] == pytest.approx(meta["chosen_score"] - meta["rejected_score"])
    assert json.loads((file.parent / "pairs.jsonl.stats.json").read_text())["pairs_kept"] == 4
    assert cli.main(args) == 2 and "overwrite=true" in capsys.readouterr().err
    # the same pairs as round 1 of an online run with these settings
    online = tmp_path / "online"
    assert (
        cli.main(
            [
                "mpo",
                f"data={world / 'data'}",
                f"output_dir={online}",
                "max_steps=1",
                "progress=false",
                "tensorboard=false",
                *common,
            ]
        )
        == 0
    )
    state = torch.load(online / "checkpoint-00000001" / "trainer_state.pt", weights_only=False)
    assert [p.chosen_text for p in state["round"].pairs] == [p.chosen for p in pairs]
    assert "done: 1 steps in" in capsys.readouterr().out
    offline = tmp_path / "offline"
    assert (
        cli.main(
            [
                "mpo",
                f"data={file}",
                f"output_dir={offline}",
                "max_steps=2",
                "progress=false",
                "tensorboard=false",
                *common,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"offline pairs {file}" in printed and "2 rounds, 8 pairs kept" in printed
    assert (offline / "final" / "config.json").is_file()
    assert cli.main(["mpo", f"output_dir={offline}", "loss.beta=0"]) == 2


# ---- resume after SIGKILL ------------------------------------------------------------------------


def _env():
    """The subprocesses import the r1v2 this test imported (not whatever is installed)."""
    src = str(Path(mpo_mod.__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}


def _cli(world, out, *extra):
    env = _env()
    cmd = [sys.executable, "-c", RUNNER, "mpo", *_args(world, out, *extra)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(world, tmp_path):
    """Bitwise on the CPU: killed once checkpoint 3 exists (mid-round: steps 3-4 are round 2
    with epochs=2), resumed, the run ends with the uninterrupted run's weights, BCO shift and
    log."""
    extra = (
        "max_steps=6",
        "save_steps=1",
        "epochs=2",
        "keep_last=10",
        "generation.max_new_tokens=16",
    )
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert _cli(world, full, *extra).wait() == 0
    proc = _cli(world, cut, *extra)
    deadline = time.time() + 300
    while not (cut / "checkpoint-00000003" / "meta.json").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "checkpoint-00000006").exists(), "the run finished before it was killed"
    resumed = _cli(world, cut, *extra)
    log = resumed.communicate()[0].decode()
    assert resumed.returncode == 0, log
    assert "starting at step 0 " not in log and "done: 6 steps in " in log
    assert _same(checkpoint_weights(full, 6), checkpoint_weights(cut, 6))
    a = torch.load(full / "checkpoint-00000006" / "trainer_state.pt", weights_only=False)
    b = torch.load(cut / "checkpoint-00000006" / "trainer_state.pt", weights_only=False)
    assert a["shift"] == b["shift"]
    rows_a, rows_b = read_metrics(full), read_metrics(cut)
    assert [r["step"] for r in rows_b] == list(range(1, 7))
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_micro_batches(world, tmp_path):
    """torchrun with 2 processes: each builds the pairs of 2 of the round's 4 prompts, the
    pairs are gathered, and each trains on 1 of the 2 micro-batches of 2 pairs; one process
    builds all 4 and takes both micro-batches. Same pairs, shift and weights (only the float
    summation order of the gradient differs), over 3 steps with epochs=2 and the full loss."""
    script = tmp_path / "run_mpo.py"
    script.write_text(RUNNER.replace("; ", "\n") + "\n")
    env = _env()
    extra = ("epochs=2", "save_steps=1", "keep_last=5", "generation.max_new_tokens=16")
    runs = {}
    for name, launcher in (("one", [sys.executable]), ("two", [*TORCHRUN])):
        out = tmp_path / name
        cmd = [*launcher, str(script), "mpo", *_args(world, out, *extra)]
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.returncode == 0, proc.stdout.decode()
        runs[name] = out
    one, two = runs["one"], runs["two"]
    assert (two / "checkpoint-00000003" / "rng-rank1.pt").is_file()  # two processes ran
    a = torch.load(one / "checkpoint-00000003" / "trainer_state.pt", weights_only=False)
    b = torch.load(two / "checkpoint-00000003" / "trainer_state.pt", weights_only=False)
    assert [p.chosen_text for p in a["round"].pairs] == [p.chosen_text for p in b["round"].pairs]
    assert a["shift"]["count"] == b["shift"]["count"] == 24
    assert a["shift"]["total"] == pytest.approx(b["shift"]["total"], rel=1e-5)
    wa, wb = checkpoint_weights(one, 3), checkpoint_weights(two, 3)
    start = _adapter(load_file(str(world / "vlm" / "model.safetensors")))
    moved = max((wa[k] - start[k.removeprefix("model.")]).abs().max() for k in wa)
    assert moved > 1e-4
    for k in wa:
        assert (wa[k] - wb[k]).abs().max() < 1e-6, k
    for ra, rb in zip(read_metrics(one), read_metrics(two)):
        assert ra["pairs_kept"] == rb["pairs_kept"] == 4
        for key in ("loss", "reward_margin", "chosen_logratio", "delta"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-7), key
