"""The toy reward model: preference pairs, the BT loss, training, saving and loading."""

from __future__ import annotations

import json
import math
import random
import re

import pytest
import torch
from safetensors.torch import load_file

from r1v2.data.synthetic import hallucinations, iter_samples, vocabulary
from r1v2.errors import R1V2Error
from r1v2.model.reward_model import TransformersRewardModel, ValueHeadModel, save_value_head
from r1v2.toy.reward import (
    CALIBRATION_FILE,
    EVAL_SEED_OFFSET,
    HALLUCINATION_KINDS,
    PAIR_KINDS,
    RewardModelConfig,
    bt_loss,
    bt_loss_all_pairs,
    calibration,
    completion,
    cut_at_first_difference,
    fit,
    load_base,
    make_pairs,
    repetitive_response,
    score_pairs,
    train_reward_model,
)

TINY = RewardModelConfig(steps=4, batch_size=2, pairs=8, eval_pairs=6, warmup=1)


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    """A tiny assembled VLM over the synthetic vocabulary: 64 px images, 16 image tokens."""
    from r1v2.model.assemble import assemble
    from r1v2.toy.tiny import tiny_llm, tiny_vision

    root = tmp_path_factory.mktemp("toyrm")
    vision = tiny_vision(root / "vision", image_size=64, patch_size=8, hidden_size=16)
    llm = tiny_llm(vocabulary(), root / "llm", hidden_size=32, num_layers=1)
    return assemble(vision, llm, root / "vlm", verbose=False)


def _sentences(text: str) -> list[str]:
    reasoning = text.partition("</think>")[0]
    return [s.strip() for s in reasoning.split(" .") if s.strip()]


def _collapse_repeats(items: list[str]) -> tuple[list[str], int]:
    """Remove consecutive repeats of runs of 1 or 2 items; also return the longest run found."""
    longest = 1
    for width in (1, 2):
        out: list[str] = []
        i = 0
        while i < len(items):
            block = items[i : i + width]
            k = 1
            while items[i + k * width : i + (k + 1) * width] == block and len(block) == width:
                k += 1
            longest = max(longest, k)
            if k == 1:
                out.append(items[i])
                i += 1
            else:
                out += block
                i += k * width
        items = out
    return items, longest


def test_bt_loss_hand_values():
    """s_c - s_r = 2 and -1: -log s(2) = log(1 + e^-2) = 0.126928,
    -log s(-1) = log(1 + e) = 1.313262; mean 0.720095. Equal scores give log 2."""
    loss = bt_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx(0.720095, abs=1e-6)
    assert bt_loss(torch.tensor([3.0]), torch.tensor([3.0])).item() == pytest.approx(math.log(2))


def test_bt_loss_all_pairs_hand_values():
    """chosen [1, 0], rejected [0, 1]: differences [[1, 0], [0, -1]];
    -log s(1) = 0.313262, -log s(0) = 0.693147 (twice), -log s(-1) = 1.313262;
    mean 3.012818 / 4 = 0.753204. A naive double loop agrees on random scores."""
    loss = bt_loss_all_pairs(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx(0.753204, abs=1e-6)
    c, r = torch.randn(5), torch.randn(5)
    naive = sum(bt_loss(c[i : i + 1], r[j : j + 1]) for i in range(5) for j in range(5)) / 25
    assert loss.dtype == torch.float32
    torch.testing.assert_close(bt_loss_all_pairs(c, r), naive)


def test_cut_at_first_difference():
    chosen = "i see 2 red circles . i see 1 square . 2 + 1 = 3 . </think> \\boxed{3}"
    rejected = "i see 2 red circles . i see 2 squares . 2 + 2 = 4 . </think> \\boxed{4}"
    assert cut_at_first_difference(chosen, rejected) == (
        "i see 2 red circles . i see 1 square .",
        "i see 2 red circles . i see 2 squares .",
    )
    cut = [p for p in make_pairs(60, seed=6, prefix_fraction=1.0) if p.kind != "repetitive"]
    assert all("</think>" not in p.chosen and hallucinations(p.rejected, p.scene) for p in cut)


def test_calibration_hand_values():
    """Means 4 and -2 -> center 1; stds 1 and 3 -> scale sqrt((1 + 9) / 2) = 2.236068."""
    scores = {
        "faithful": {"mean": 4.0, "std": 1.0, "n": 10},
        "hallucinated": {"mean": -2.0, "std": 3.0, "n": 10},
        "repetitive": {"mean": 0.0, "std": 1.0, "n": 3},
    }
    calib = calibration(scores)
    assert calib["rm_center"] == pytest.approx(1.0)
    assert calib["rm_scale"] == pytest.approx(2.236068, abs=1e-6)
    assert calib["faithful"]["mean"] == 4.0


def test_pairs_faithful_hallucinated_repetitive():
    pairs = make_pairs(300, seed=3)
    samples = list(iter_samples(300, seed=3))
    assert {p.kind for p in pairs} == set(PAIR_KINDS)
    for pair, sample in zip(pairs, samples):
        assert pair.scene == sample.scene
        assert pair.chosen == sample.trace.removeprefix("<think> ")
        assert hallucinations(pair.chosen, pair.scene) == []
        if pair.kind in HALLUCINATION_KINDS:
            assert hallucinations(pair.rejected, pair.scene), pair.rejected
        else:
            assert hallucinations(pair.rejected, pair.scene) == []
            collapsed, longest = _collapse_repeats(_sentences(pair.rejected))
            assert longest >= 3, pair.rejected
            assert collapsed == _collapse_repeats(_sentences(pair.chosen))[0]
            tail = "</think>" + pair.chosen.partition("</think>")[2]
            assert pair.rejected.endswith(" . " + tail)


def test_hallucinated_traces_are_self_consistent():
    """The false counts carry through: every sum/difference is right and the boxed answer
    follows from the trace's own counts, so only the image tells the pair apart."""
    pairs = [p for p in make_pairs(200, seed=4) if p.kind in HALLUCINATION_KINDS]
    checked = 0
    for pair in pairs:
        sums = [s for s in _sentences(pair.rejected) if re.fullmatch(r"[\d +-]+ = \d+", s)]
        for sentence in sums:
            left, right = sentence.split(" = ")
            terms = left.split()
            value = int(terms[0])
            for op, term in zip(terms[1::2], terms[2::2]):
                value += int(term) if op == "+" else -int(term)
            assert value == int(right), pair.rejected
            checked += 1
    assert checked > len(pairs)
    # Mostly the answer changes too (a misread cell in a sum of two groups can keep it).
    changed = [p.chosen.split()[-1] != p.rejected.split()[-1] for p in pairs]
    assert sum(changed) > 0.7 * len(pairs)


def test_absent_kind_claims_an_absent_object():
    pairs = [p for p in make_pairs(200, seed=5) if p.kind == "absent"]
    assert pairs
    for pair in pairs:
        false = hallucinations(pair.rejected, pair.scene)
        assert any(c.truth == "0" and c.claimed != "0" for c in false), pair.rejected


def test_repetitive_response_repeats_a_section():
    text = "i see 3 red circles . i see 1 blue square . 3 + 1 = 4 . </think> \\boxed{4}"
    out = repetitive_response(text, random.Random(0))
    sentences = _sentences(out)
    collapsed, longest = _collapse_repeats(sentences)
    assert collapsed == ["i see 3 red circles", "i see 1 blue square", "3 + 1 = 4"]
    assert 3 <= longest <= 5
    assert out.endswith(" . </think> \\boxed{4}")


def test_pairs_deterministic_by_seed():
    assert make_pairs(40, seed=7) == make_pairs(40, seed=7)
    assert make_pairs(40, seed=7) != make_pairs(40, seed=8)


def test_completion_is_reference_trace_after_think():
    sample = next(iter(iter_samples(1, seed=0)))
    assert completion(sample.scene, sample) == sample.trace[len("<think> ") :]


def test_training_lowers_bt_loss_on_training_pairs(vlm):
    """Same init, same pairs: the trained model's BT loss is well below the untrained one's."""
    pairs = make_pairs(8, seed=11)
    base, processor = load_base(vlm)
    torch.manual_seed(0)
    model = ValueHeadModel(base)
    before = bt_loss(*score_pairs(model, processor, pairs)).item()
    cfg = RewardModelConfig(steps=20, batch_size=4, lr=1e-3, warmup=2, nll_weight=0.0)
    losses = fit(model, processor, pairs, cfg, seed=0, progress=False)
    after = bt_loss(*score_pairs(model, processor, pairs)).item()
    assert len(losses) == 20
    assert after < 0.5 * before, (before, after)
    assert after < 0.35


def test_nll_term_is_the_chosen_mean_token_nll(vlm):
    """fit's first loss = BT + w * mean over chosen rows of -(mean completion log-prob),
    computed here from the pooled values; a 'last' head refuses the term."""
    pairs = make_pairs(4, seed=13)
    base, processor = load_base(vlm)
    model = ValueHeadModel(base, pooling="logprob")
    order = list(range(4))
    random.Random("rm-order:0").shuffle(order)
    batch = [pairs[i] for i in order[:2]]
    with torch.no_grad():
        from r1v2.toy.reward import _batch

        pooled = model.pooled(**_batch(model, processor, batch), use_cache=False)[:, 0]  # [4]
        scores = model.head(pooled[:, None]).squeeze(-1)
    want = bt_loss(scores[:2], scores[2:]).item() - 0.5 * pooled[:2].mean().item()
    cfg = RewardModelConfig(steps=1, batch_size=2, lr=0.0, head_lr=0.0, warmup=0, nll_weight=0.5)
    losses = fit(model, processor, pairs, cfg, seed=0, progress=False)
    assert losses[0] == pytest.approx(want, rel=1e-5)
    assert pooled[:2].mean().item() < 0  # a log-probability: the NLL term is positive
    with pytest.raises(ValueError, match="'logprob' head"):
        fit(ValueHeadModel(base), processor, pairs, cfg, seed=0, progress=False)


def test_saved_checkpoint_scores_equal_trained_module(vlm, tmp_path):
    pairs = make_pairs(4, seed=12)
    base, processor = load_base(vlm)
    model = ValueHeadModel(base)
    cfg = RewardModelConfig(steps=3, batch_size=2, warmup=1, nll_weight=0.0)
    fit(model, processor, pairs, cfg, seed=0, progress=False)
    chosen, rejected = score_pairs(model, processor, pairs)
    save_value_head(tmp_path / "rm", model, processor)
    rm = TransformersRewardModel.from_pretrained(tmp_path / "rm")
    inputs = [x for p in pairs for x in p.inputs()]
    loaded = torch.tensor(rm.score(inputs))  # chosen, rejected interleaved
    torch.testing.assert_close(loaded[0::2], chosen, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loaded[1::2], rejected, rtol=1e-5, atol=1e-5)


def test_train_reward_model_end_to_end(vlm, tmp_path):
    """Saved checkpoint + calibration; the loaded RM reproduces the reported held-out scores."""
    out = tmp_path / "rm"
    metrics = train_reward_model(vlm, out, TINY, seed=1, progress=False, log=None)
    calib = json.loads((out / CALIBRATION_FILE).read_text())
    assert calib["rm_center"] == pytest.approx(metrics["rm_center"])
    assert calib["rm_scale"] > 0
    n_rep = sum(p.kind == "repetitive" for p in make_pairs(6, EVAL_SEED_OFFSET + 1))
    assert metrics["scores"]["repetitive"]["n"] == n_rep
    assert metrics["scores"]["hallucinated"]["n"] == 6 - n_rep
    eval_pairs = make_pairs(6, EVAL_SEED_OFFSET + 1)
    rm = TransformersRewardModel.from_pretrained(out)
    chosen = torch.tensor(rm.score([p.inputs()[0] for p in eval_pairs]))
    faithful = metrics["scores"]["faithful"]
    assert chosen.mean().item() == pytest.approx(faithful["mean"], abs=1e-5)
    assert chosen.std(unbiased=False).item() == pytest.approx(faithful["std"], abs=1e-5)
    f, h = metrics["scores"]["faithful"], metrics["scores"]["hallucinated"]
    assert metrics["rm_center"] == pytest.approx((f["mean"] + h["mean"]) / 2)


def test_train_reward_model_deterministic_by_seed(vlm, tmp_path):
    runs, heads = {}, {}
    for name, seed in (("a", 2), ("b", 2), ("c", 3)):
        metrics = train_reward_model(
            vlm, tmp_path / name, TINY, seed=seed, progress=False, log=None
        )
        metrics.pop("train_seconds")
        runs[name] = metrics
        heads[name] = load_file(str(tmp_path / name / "value_head.safetensors"))["weight"]
    assert runs["a"] == runs["b"]
    torch.testing.assert_close(heads["a"], heads["b"], rtol=0, atol=0)
    assert runs["a"]["scores"] != runs["c"]["scores"]
    assert not torch.equal(heads["a"], heads["c"])


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(trainable="head"), "config field trainable: 'head' is not one of adapter, "),
        (dict(pooling="max"), "config field pooling: 'max' is not one of last, logprob"),
        (dict(pairs=0, steps=0), "config field(s) steps, pairs must be >= 1"),
        (dict(repetitive_fraction=1.5), "config field repetitive_fraction must be in [0, 1]"),
        (dict(cross_weight=-1.0), "warmup, cross_weight and nll_weight must be >= 0"),
        (dict(nll_weight=-1.0), "warmup, cross_weight and nll_weight must be >= 0"),
        (dict(pooling="last"), "nll_weight needs pooling=logprob (set nll_weight=0 for a 'last'"),
    ],
)
def test_train_reward_model_refuses_bad_settings_before_loading(tmp_path, bad, message):
    with pytest.raises(R1V2Error) as e:
        train_reward_model(
            tmp_path / "no_vlm",
            tmp_path / "rm",
            RewardModelConfig(**bad),
            seed=0,
            progress=False,
            log=None,
        )
    assert message in str(e.value)
    assert not (tmp_path / "rm").exists()
