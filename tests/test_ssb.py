"""Selective Sample Buffer: what it stores, eviction, sampling law, state, and replay."""

import io
import math

import pytest
import torch

from r1v2.algos.ssb import SelectiveSampleBuffer, replay


def _names(entries):
    return [e.sample for e in entries]


def test_add_keeps_effective_samples_of_every_group():
    """Three groups of 4 in one flat [12] tensor: group 0 all zero, group 1 all non-zero,
    group 2 one non-zero. Stored: the 4 of group 1 and the one of group 2, per sample, with
    their own advantages and step; a None or NaN advantage is never stored."""
    samples = [f"g{g}s{i}" for g in range(3) for i in range(4)]
    adv = torch.tensor([0.0] * 4 + [1.0, -1.0, 0.5, -0.5] + [0.0, 0.0, 2.0, 0.0])
    buf = SelectiveSampleBuffer(capacity=100)
    assert buf.add(samples, adv, step=3) == 5
    assert _names(buf.entries) == ["g1s0", "g1s1", "g1s2", "g1s3", "g2s2"]
    assert [e.advantage for e in buf.entries] == [1.0, -1.0, 0.5, -0.5, 2.0]
    assert {e.step for e in buf.entries} == {3}

    assert buf.add(["a", "b", "c", "d"], [None, math.nan, 1e-7, -2e-6], step=4) == 1
    assert buf.entries[-1].sample == "d"
    with pytest.raises(ValueError, match="flat"):
        buf.add(samples, adv.view(3, 4), step=5)
    with pytest.raises(ValueError, match="12 samples but 4"):
        buf.add(samples, [1.0] * 4, step=5)


def test_capacity_evicts_oldest_first():
    """Capacity 3: adding s0..s4 keeps s2, s3, s4; adding n0, n1 then keeps s4, n0, n1."""
    buf = SelectiveSampleBuffer(capacity=3)
    buf.add([f"s{i}" for i in range(5)], [1.0] * 5, step=0)
    assert _names(buf.entries) == ["s2", "s3", "s4"]
    buf.add(["n0", "n1"], [1.0, -1.0], step=1)
    assert _names(buf.entries) == ["s4", "n0", "n1"] and len(buf) == 3


def test_max_age_checked_at_add_and_at_sample():
    """max_age 2: an entry from step s lives while current - s <= 2. Entries of steps 0, 1;
    add at step 3 drops step 0 (age 3) and keeps step 1 (age 2); sample(step=4) drops step 1."""
    buf = SelectiveSampleBuffer(capacity=10, max_age=2)
    buf.add(["a0"], [1.0], step=0)
    buf.add(["b1"], [1.0], step=1)
    buf.add(["c3"], [1.0], step=3)
    assert _names(buf.entries) == ["b1", "c3"]
    assert _names(buf.sample(5, step=4)) == ["c3"]
    assert len(buf) == 1


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_sampling_frequencies_follow_abs_advantage_power(alpha):
    """Advantages [1, 2, -3, 4]: P(i) = |A_i|^alpha / sum, e.g. alpha 1: [0.1, 0.2, 0.3, 0.4],
    alpha 2: [1, 4, 9, 16] / 30, alpha 0: uniform. 10000 single draws; Pearson's chi-square
    with 3 degrees of freedom must stay below 16.27 (the 0.999 quantile). A wrong law is far
    off: e.g. uniform draws scored against alpha 1 give chi-square ~ 10000 * 0.302 = 3020."""
    adv = [1.0, 2.0, -3.0, 4.0]
    buf = SelectiveSampleBuffer(capacity=10, alpha=alpha, seed=7)
    buf.add(["a", "b", "c", "d"], adv, step=0)
    draws = 10000
    counts = dict.fromkeys("abcd", 0)
    for _ in range(draws):
        (entry,) = buf.sample(1)
        counts[entry.sample] += 1
    weights = [abs(a) ** alpha for a in adv]
    expected = [draws * w / sum(weights) for w in weights]
    chi2 = sum((counts[k] - e) ** 2 / e for k, e in zip("abcd", expected))
    assert chi2 < 16.27, (counts, expected)


def test_sample_is_without_replacement_and_can_remove():
    buf = SelectiveSampleBuffer(capacity=10)
    buf.add(list("abcd"), [1.0, 2.0, 3.0, 4.0], step=0)
    drawn = _names(buf.sample(10))
    assert sorted(drawn) == list("abcd")  # capped at len, each once
    assert len(buf) == 4  # drawing does not remove by default
    taken = _names(buf.sample(2, remove=True))
    assert len(set(taken)) == 2 and len(buf) == 2
    assert not set(taken) & set(_names(buf.entries))
    assert buf.sample(0) == []


def test_state_round_trip_gives_identical_next_draws():
    """Save after a few draws, restore into a buffer with another seed (through torch.save):
    contents equal and the next 20 draws are the same as the original buffer's."""
    buf = SelectiveSampleBuffer(capacity=50, seed=1)
    buf.add([f"x{i}" for i in range(12)], torch.linspace(-3, 3, 12), step=5)
    buf.sample(3)
    blob = io.BytesIO()
    torch.save(buf.state_dict(), blob)
    blob.seek(0)
    other = SelectiveSampleBuffer(capacity=50, seed=999)
    other.load_state_dict(torch.load(blob, weights_only=False))
    assert other.entries == buf.entries
    for _ in range(20):
        assert _names(other.sample(3)) == _names(buf.sample(3))


def _batch():
    """Two groups of 5: group 0 all zero advantage, group 1 [1, -1, 0.5, -0.5, 0].
    Effective 4 of 10 = 0.4."""
    samples = [f"b{i}" for i in range(10)]
    adv = torch.tensor([0.0] * 5 + [1.0, -1.0, 0.5, -0.5, 0.0])
    return samples, adv


def test_replay_fills_zero_slots_up_to_target_ratio():
    """Target 0.6 of 10 = 6 effective; 4 already: need 2. The two first zero slots (0, 1)
    take buffered samples from step 0 with their stored advantages; ratio 0.4 -> 0.6.
    Then the batch's own 4 effective samples join the 3 buffered: size 7."""
    buf = SelectiveSampleBuffer(capacity=100, seed=0)
    buf.add(["old_a", "old_b", "old_c"], [2.0, -1.0, 0.5], step=0)
    stored = {e.sample: e.advantage for e in buf.entries}
    samples, adv = _batch()
    out = replay(samples, adv, buf, step=1)

    assert out.replayed.tolist() == [True, True] + [False] * 8
    assert set(out.samples[:2]) <= {"old_a", "old_b", "old_c"} and out.samples[0] != out.samples[1]
    assert out.samples[2:] == samples[2:]
    assert out.advantages[:2].tolist() == [stored[s] for s in out.samples[:2]]
    torch.testing.assert_close(out.advantages[2:], adv[2:])
    assert out.stats == {
        "effective_ratio_before": 0.4,
        "effective_ratio_after": 0.6,
        "replayed": 2.0,
        "replayed_advantage_sum": sum(stored[s] for s in out.samples[:2]),
        "added": 4.0,
        "buffer_size": 7.0,
    }
    assert adv.tolist() == [0.0] * 5 + [1.0, -1.0, 0.5, -0.5, 0.0]  # caller's tensor untouched


def test_replay_never_draws_the_batch_own_samples():
    """An empty buffer replays nothing (the batch's effective samples are added after the
    draw); the next batch can then replay them."""
    buf = SelectiveSampleBuffer(capacity=100)
    samples, adv = _batch()
    first = replay(samples, adv, buf, step=0)
    assert first.stats["replayed"] == 0.0 and not first.replayed.any()
    assert first.stats["effective_ratio_after"] == 0.4 and len(buf) == 4
    assert first.stats["replayed_advantage_sum"] == 0.0
    second = replay([f"n{i}" for i in range(10)], torch.zeros(10), buf, step=1)
    assert second.stats["replayed"] == 4.0  # need 6, only 4 buffered
    assert set(second.samples[:4]) == {"b5", "b6", "b7", "b8"}
    assert second.stats["replayed_advantage_sum"] == 0.0  # 1 - 1 + 0.5 - 0.5
    assert second.stats["effective_ratio_after"] == 0.4


def test_replay_caps_and_rounding():
    """Target 0.7 of 10 is 7 (not 8 from 7.000000000000001): need 3. A batch already at 0.6
    with target 0.6 draws nothing and leaves the generator where it was."""
    buf = SelectiveSampleBuffer(capacity=100)
    buf.add([f"o{i}" for i in range(6)], [1.0] * 6, step=0)
    samples, adv = _batch()
    out = replay(samples, adv, buf, 0.7, step=1, add_to_buffer=False)
    assert out.stats["replayed"] == 3.0 and out.stats["effective_ratio_after"] == pytest.approx(0.7)
    assert len(buf) == 6

    state = buf.generator.get_state()
    full = torch.tensor([1.0] * 6 + [0.0] * 4)
    out = replay(samples, full, buf, step=2, add_to_buffer=False)
    assert out.stats["replayed"] == 0.0 and out.stats["effective_ratio_after"] == 0.6
    assert torch.equal(buf.generator.get_state(), state)


def test_replays_lean_to_the_larger_advantages_sign():
    """Late in training a mostly solved prompt's group holds seven right answers at
    A = +0.354 and one wrong at A = -2.475 (eq. 6, sample std); draws proportional to |A| pick
    the wrong one with probability 2.475 / (7 * 0.354 + 2.475) = 1/2, so the replays' mean
    advantage is (7 * 0.354^2 - 2.475^2) / (2 * 2.475) = -1.06 where the group's was 0.
    Logged as replayed_advantage_sum; checked here over many draws of one replay."""
    group = torch.tensor([1.0] * 7 + [0.0])
    adv = (group - group.mean()) / group.std()
    assert adv[0].item() == pytest.approx(0.35355, abs=1e-4)
    assert adv[7].item() == pytest.approx(-2.47487, abs=1e-4)
    expected = float((adv.abs() * adv).sum() / adv.abs().sum())
    assert expected == pytest.approx(-1.0607, abs=1e-3)
    total, draws = 0.0, 4000
    for seed in range(draws):
        buf = SelectiveSampleBuffer(capacity=100, seed=seed)
        buf.add([f"s{i}" for i in range(8)], adv, step=0)
        out = replay(["z"] * 10, torch.zeros(10), buf, 0.1, step=1, add_to_buffer=False)
        assert out.stats["replayed"] == 1.0
        total += out.stats["replayed_advantage_sum"]
    assert total / draws == pytest.approx(expected, abs=0.1)
