"""GRPO advantages (eq. 6) and the clipped policy loss (eq. 8) against hand-computed values."""

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r1v2.algos.grpo import group_advantages, group_stats, kl_penalty, loss_normalizer, policy_loss

LN = math.log


# ---------------------------------------------------------------- group_advantages


def test_advantages_by_hand():
    """Group [1, 0, 0, 0]: mean 0.25, population var (0.75^2 + 3 * 0.25^2) / 4 = 0.1875,
    std = sqrt(0.1875) = 0.4330127; A = 0.75 / 0.4330127 = sqrt(3) = 1.7320508 and
    -0.25 / 0.4330127 = -1/sqrt(3) = -0.5773503. Group [2, 2, 2, 2] is constant: all 0."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(rewards, 4, eps=0.0)
    s3 = math.sqrt(3.0)
    expected = torch.tensor([s3, -1 / s3, -1 / s3, -1 / s3, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)
    assert adv.dtype == torch.float32 and adv.shape == (8,)
    # with the default eps the value moves by about eps / std relative: 1.7320508 * (1 - 2.3e-6)
    torch.testing.assert_close(group_advantages(rewards, 4)[0], torch.tensor(s3), atol=1e-5, rtol=0)


def test_advantages_scale_none_subtracts_mean_only():
    """[1, 0, 0, 0] minus its mean 0.25 -> [0.75, -0.25, -0.25, -0.25]."""
    adv = group_advantages([1.0, 0.0, 0.0, 0.0], 4, scale="none")
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]), rtol=0, atol=1e-7)


def test_zero_variance_groups_are_exactly_zero():
    """0.1 * 3 / 3 is not exactly 0.1 in floating point, yet a constant group must give 0.0
    exactly (not 1e-17 / eps), also with scale='none'; a group of one is constant too."""
    for scale in ("std", "none"):
        adv = group_advantages(torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7]), 3, scale=scale)
        assert torch.equal(adv, torch.zeros(6))
    assert torch.equal(group_advantages([5.0, -1.0], 1), torch.zeros(2))


def test_none_and_nan_rewards_are_excluded():
    """Group [1, None, 0, 1]: scored {1, 0, 1}, mean 2/3, population var
    (2 * (1/3)^2 + (2/3)^2) / 3 = 2/9, std = 0.4714045; A(1) = (1/3) / 0.4714045 = 1/sqrt(2),
    A(0) = -(2/3) / 0.4714045 = -sqrt(2); the unscored one gets 0. A NaN in a tensor is the
    same as None. Group [None, 1, None, None] has one scored reward: all 0. All-None: all 0."""
    r2 = 1 / math.sqrt(2.0)
    expected = torch.tensor([r2, 0.0, -2 * r2, r2] + [0.0] * 8)
    as_list = [1.0, None, 0.0, 1.0, None, 1.0, None, None, None, None, None, None]
    as_tensor = torch.tensor([math.nan if r is None else r for r in as_list])
    for rewards in (as_list, as_tensor):
        adv = group_advantages(rewards, 4, eps=0.0)
        assert not torch.isnan(adv).any()
        torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)


def test_advantages_do_not_modify_input_and_check_group_size():
    rewards = torch.tensor([1.0, math.nan, 0.0, 2.0])
    before = rewards.clone()
    group_advantages(rewards, 2)
    assert torch.equal(rewards.isnan(), before.isnan())
    assert torch.equal(rewards.nan_to_num(), before.nan_to_num())
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(rewards, 3)


def _naive_advantages(rewards, group_size, eps):
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        scored = [r for r in group if r is not None]
        if len(scored) < 2 or len(set(scored)) == 1:
            out += [0.0] * len(group)
            continue
        mean = statistics.fmean(scored)
        std = statistics.pstdev(scored)
        out += [0.0 if r is None else (r - mean) / (std + eps) for r in group]
    return out


@settings(max_examples=200, deadline=None)
@given(
    group_size=st.integers(1, 6),
    data=st.data(),
)
def test_advantages_match_python_loop(group_size, data):
    """Vectorised advantages equal a per-group Python loop (statistics.pstdev)."""
    prompts = data.draw(st.integers(1, 4))
    value = st.one_of(
        st.none(),
        st.sampled_from([0.0, 1.0, 0.5, -1.0]),
        st.floats(-10, 10, allow_nan=False, allow_subnormal=False),
    )
    rewards = data.draw(
        st.lists(value, min_size=prompts * group_size, max_size=prompts * group_size)
    )
    got = group_advantages(rewards, group_size, eps=1e-6)
    want = torch.tensor(_naive_advantages(rewards, group_size, 1e-6), dtype=torch.float32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_group_stats_by_hand():
    """Groups [1, 0] (varies), [1, 1] (constant), [None, 0] (one scored: constant).
    reward_mean = (1 + 0 + 1 + 1 + 0) / 5 = 0.6; unscored 1; 2 of 3 groups all-zero;
    effective samples 2 of 6."""
    stats = group_stats([1.0, 0.0, 1.0, 1.0, None, 0.0], 2)
    assert stats["reward_mean"] == pytest.approx(0.6)
    assert stats["unscored"] == 1
    assert stats["zero_variance_frac"] == pytest.approx(2 / 3)
    assert stats["effective_ratio"] == pytest.approx(2 / 6)


def test_std_floor_zeroes_nearly_tied_groups_by_hand():
    """Group [0.5, 0.5002]: std 0.0001, below the floor 0.01 -> both 0 (without the floor eq. 6
    gives +-0.0001 / (0.0001 + 1e-6) = +-0.990). Group [0, 1]: std 0.5 >= 0.01 ->
    -0.5 / (0.5 + 1e-6), +0.5 / (0.5 + 1e-6) = -+0.999998. group_stats counts the first group
    as zero-variance: effective 2 of 4."""
    rewards = [0.5, 0.5002, 0.0, 1.0]
    raw = group_advantages(rewards, 2)
    assert raw[0].item() == pytest.approx(-0.0001 / (0.0001 + 1e-6), rel=1e-3)
    floored = group_advantages(rewards, 2, std_floor=0.01)
    assert floored[:2].tolist() == [0.0, 0.0]
    torch.testing.assert_close(floored[2:], torch.tensor([-0.5, 0.5]) / (0.5 + 1e-6))
    stats = group_stats(rewards, 2, std_floor=0.01)
    assert stats["effective_ratio"] == 0.5 and stats["zero_variance_frac"] == 0.5
    assert group_stats(rewards, 2)["effective_ratio"] == 1.0


# ---------------------------------------------------------------- policy_loss


def _logps(log_ratios, old=-1.0):
    """old_logps filled with ``old`` and logps = old + log_ratio (NaN stays NaN)."""
    lr = torch.tensor(log_ratios, dtype=torch.float32)
    old_logps = torch.full_like(lr, old)
    return (old_logps + lr).requires_grad_(), old_logps


def test_clipping_on_both_sides_by_hand():
    """eps = 0.2 both sides.
    seq 0, A = +1: rho 1.5 -> min(1.5, 1.2) = 1.2 (clipped high); rho 1.0 -> 1.0.
        token losses -1.2, -1.0; sequence mean -1.1.
    seq 1, A = -1: rho 0.5 -> min(-0.5, -0.8) = -0.8 (clipped low); rho 1.1 -> -1.1.
        token losses 0.8, 1.1; sequence mean 0.95.
    loss = (-1.1 + 0.95) / 2 = -0.075.
    clip_frac_low = clip_frac_high = 1/4; ratio_mean = (1.5 + 1 + 0.5 + 1.1) / 4 = 1.025.
    approx_kl = mean(rho - 1 - ln rho) = (0.0945349 + 0 + 0.1931472 + 0.0046898) / 4 = 0.0730930.
    Gradient d loss / d logps = -rho * A / (2 sequences * 2 tokens) where not clipped:
        [[0, -0.25], [0, 0.275]]."""
    logps, old = _logps([[LN(1.5), 0.0], [LN(0.5), LN(1.1)]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss, m = policy_loss(logps, old, torch.tensor([1.0, -1.0]), mask)
    torch.testing.assert_close(loss, torch.tensor(-0.075), rtol=0, atol=1e-6)
    assert m["clip_frac_low"].item() == pytest.approx(0.25)
    assert m["clip_frac_high"].item() == pytest.approx(0.25)
    assert m["clip_frac"].item() == pytest.approx(0.5)
    assert m["ratio_mean"].item() == pytest.approx(1.025, abs=1e-6)
    assert m["approx_kl"].item() == pytest.approx(0.0730930, abs=1e-6)
    assert m["tokens"].item() == 4 and m["sequences"].item() == 2
    loss.backward()
    torch.testing.assert_close(
        logps.grad, torch.tensor([[0.0, -0.25], [0.0, 0.275]]), rtol=0, atol=1e-6
    )


def test_pessimistic_side_is_not_clipped():
    """A = +1 with rho 0.5: min(0.5, 0.8) = 0.5, loss -0.5, gradient -rho * A = -0.5.
    A = -1 with rho 1.5: min(-1.5, -1.2) = -1.5, loss 1.5, gradient -rho * A = 1.5.
    Neither counts as clipped. loss = (-0.5 + 1.5) / 2 = 0.5; grads / 2 sequences."""
    logps, old = _logps([[LN(0.5)], [LN(1.5)]])
    loss, m = policy_loss(logps, old, torch.tensor([1.0, -1.0]), torch.ones(2, 1, dtype=torch.bool))
    torch.testing.assert_close(loss, torch.tensor(0.5), rtol=0, atol=1e-6)
    assert m["clip_frac"].item() == 0.0
    loss.backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[-0.25], [0.75]]), rtol=0, atol=1e-6)


def test_asymmetric_clip_range():
    """rho 1.25 with A = +1: clip_high 0.2 clips to 1.2 (loss -1.2); clip_high 0.28 leaves
    1.25 (loss -1.25). rho 0.85 with A = -1: clip_low 0.1 clips to 0.9 (loss 0.9); clip_low
    0.2 leaves 0.85 (loss 0.85)."""
    mask = torch.ones(1, 1, dtype=torch.bool)
    hi, old = _logps([[LN(1.25)]])
    lo, old_lo = _logps([[LN(0.85)]])
    pos, neg = torch.tensor([1.0]), torch.tensor([-1.0])
    cases = [
        (hi, old, pos, dict(clip_high=0.2), -1.2, 1.0),
        (hi, old, pos, dict(clip_high=0.28), -1.25, 0.0),
        (lo, old_lo, neg, dict(clip_low=0.1), 0.9, 1.0),
        (lo, old_lo, neg, dict(clip_low=0.2), 0.85, 0.0),
    ]
    for logps, old_logps, adv, kw, want, frac in cases:
        loss, m = policy_loss(logps, old_logps, adv, mask, **kw)
        assert loss.item() == pytest.approx(want, abs=1e-6), kw
        assert m["clip_frac"].item() == frac


@pytest.mark.parametrize(
    "estimator, want, grad",
    [
        # d = ref - logp = [-0.5, 1.0]; k1 = -d = [0.5, -1.0], mean -0.25; dk1/dlogp = 1.
        ("k1", -0.25, [1.0, 1.0]),
        # k2 = d^2 / 2 = [0.125, 0.5], mean 0.3125; dk2/dlogp = -d = [0.5, -1.0].
        ("k2", 0.3125, [0.5, -1.0]),
        # k3 = e^d - 1 - d = [0.6065307 - 0.5, 2.7182818 - 2] = [0.1065307, 0.7182818],
        # mean 0.4124062; dk3/dlogp = 1 - e^d = [0.3934693, -1.7182818].
        ("k3", 0.4124062, [0.3934693, -1.7182818]),
    ],
)
def test_kl_estimators_by_hand(estimator, want, grad):
    """logps [-1, -2], ref [-1.5, -1], old = logps (rho = 1) and A = 0, so the loss is
    kl_coef * mean_t KL_t with kl_coef = 0.1; its gradient is 0.1 * dKL/dlogp / 2 tokens."""
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, m = policy_loss(
        logps,
        logps.detach(),
        torch.zeros(1),
        mask,
        ref_logps=ref,
        kl_coef=0.1,
        kl_estimator=estimator,
    )
    assert m["kl"].item() == pytest.approx(want, abs=1e-6)
    assert loss.item() == pytest.approx(0.1 * want, abs=1e-7)
    assert m["pg_loss"].item() == 0.0
    loss.backward()
    torch.testing.assert_close(logps.grad, 0.05 * torch.tensor([grad]), rtol=0, atol=1e-6)


def test_padding_in_middle_and_end_and_aggregations_differ():
    """eps 0.2; NaN sits in every padded position (it must not leak).
    seq 0, mask [1, 0, 1, 1], A = +1, rho [1.3, -, 1.0, 0.9]: min(1.3, 1.2) = 1.2 (clipped
        high), then 1.0, 0.9; token losses -1.2, -1.0, -0.9; sum -3.1, mean -1.0333333.
    seq 1, mask [1, 1, 0, 0], A = -0.5, rho [2.0, 1.0]: min(-1.0, -0.6) = -1.0 (not clipped:
        rho > 1 + eps with A < 0 keeps the pessimistic term) -> 1.0; then 0.5; sum 1.5,
        mean 0.75.
    seq-mean-token-mean = (-1.0333333 + 0.75) / 2 = -0.1416667;
    token-mean = (-3.1 + 1.5) / 5 = -0.32. clip_frac_high = 1/5, clip_frac_low = 0.
    Gradient -rho * A / normaliser on unclipped tokens (0 on the clipped one and on padding):
    seq-mean-token-mean divides by |y| * 2 sequences: seq 0 [0, -, -1.0 / 6, -0.9 / 6],
    seq 1 [2.0 * 0.5 / 4, 0.5 / 4]; token-mean divides by 5 tokens."""
    nan = math.nan
    mask = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -0.5])
    by_seq = [[0.0, 0.0, -1.0 / 6, -0.9 / 6], [0.25, 0.125, 0.0, 0.0]]
    by_token = [[0.0, 0.0, -0.2, -0.18], [0.2, 0.1, 0.0, 0.0]]
    for aggregation, want, grad in (
        ("seq-mean-token-mean", -0.1416667, by_seq),
        ("token-mean", -0.32, by_token),
    ):
        logps, old = _logps([[LN(1.3), nan, 0.0, LN(0.9)], [LN(2.0), 0.0, nan, nan]])
        ref = old.clone()
        ref[~mask] = nan
        loss, m = policy_loss(
            logps, old, adv, mask, aggregation=aggregation, ref_logps=ref, kl_coef=0.0
        )
        assert loss.item() == pytest.approx(want, abs=1e-6), aggregation
        assert m["tokens"].item() == 5
        assert m["clip_frac_high"].item() == pytest.approx(1 / 5)
        assert m["clip_frac_low"].item() == 0.0
        loss.backward()
        torch.testing.assert_close(logps.grad, torch.tensor(grad), rtol=0, atol=1e-6)
        assert torch.equal(logps.grad[~mask], torch.zeros(3))


def test_empty_mask_rows_give_no_nan():
    """Sequence 1 has no counted token (and NaN log-probs): the loss equals sequence 0 alone,
    rho 1.5 with A = 1 -> min(1.5, 1.2) = 1.2 -> -1.2. An all-empty batch gives 0."""
    logps, old = _logps([[LN(1.5), 0.0], [math.nan, math.nan]])
    mask = torch.tensor([[True, False], [False, False]])
    for aggregation in ("seq-mean-token-mean", "token-mean"):
        loss, m = policy_loss(logps, old, torch.tensor([1.0, 1.0]), mask, aggregation=aggregation)
        assert loss.item() == pytest.approx(-1.2, abs=1e-6)
        assert m["sequences"].item() == 1
    empty = torch.zeros(2, 2, dtype=torch.bool)
    loss, m = policy_loss(logps, old, torch.tensor([1.0, -1.0]), empty, ref_logps=old, kl_coef=0.5)
    assert loss.item() == 0.0 and all(torch.isfinite(v).all() for v in m.values())
    loss.backward()
    assert torch.equal(logps.grad, torch.zeros(2, 2))


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean"])
def test_micro_batch_normalizer_matches_full_batch(aggregation):
    """Three micro-batches of two sequences, each divided by the whole batch's count, give the
    same summed loss and gradient as one pass over six (random values, random padding)."""
    g = torch.Generator().manual_seed(1)
    n, t = 6, 5
    base = torch.randn(n, t, generator=g) - 2.0
    old = base + 0.3 * torch.randn(n, t, generator=g)
    ref = base + 0.3 * torch.randn(n, t, generator=g)
    adv = torch.randn(n, generator=g)
    lengths = torch.tensor([5, 1, 3, 0, 4, 2])
    mask = torch.arange(t)[None, :] < lengths[:, None]
    kw = dict(aggregation=aggregation, kl_coef=0.05)

    full = base.clone().requires_grad_()
    loss_full, _ = policy_loss(full, old, adv, mask, ref_logps=ref, **kw)
    loss_full.backward()

    parts = [slice(0, 2), slice(2, 4), slice(4, 6)]
    total = sum(loss_normalizer(mask[p], aggregation) for p in parts)
    assert total == (5 if aggregation == "seq-mean-token-mean" else 15)
    micro = base.clone().requires_grad_()
    summed = 0.0
    for p in parts:
        loss, _ = policy_loss(
            micro[p], old[p], adv[p], mask[p], ref_logps=ref[p], normalizer=total, **kw
        )
        loss.backward()
        summed += loss.item()
    assert summed == pytest.approx(loss_full.item(), abs=1e-6)
    torch.testing.assert_close(micro.grad, full.grad, rtol=1e-6, atol=1e-7)


def test_loss_is_pg_plus_kl_and_inputs_untouched():
    g = torch.Generator().manual_seed(2)
    logps = torch.randn(3, 4, generator=g).requires_grad_()
    old, ref = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    keep = (logps.detach().clone(), old.clone(), ref.clone())
    mask = torch.ones(3, 4, dtype=torch.bool)
    loss, m = policy_loss(logps, old, torch.randn(3, generator=g), mask, ref_logps=ref, kl_coef=0.3)
    assert loss.item() == pytest.approx((m["pg_loss"] + 0.3 * m["kl"]).item(), abs=1e-6)
    for a, b in zip(keep, (logps.detach(), old, ref)):
        assert torch.equal(a, b)


def test_policy_loss_rejects_bad_arguments():
    logps = torch.zeros(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    adv = torch.zeros(2)
    with pytest.raises(ValueError, match="ref_logps"):
        policy_loss(logps, logps, adv, mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="bool"):
        policy_loss(logps, logps, adv, mask.float())
    with pytest.raises(ValueError, match="aggregation"):
        policy_loss(logps, logps, adv, mask, aggregation="sum")
    with pytest.raises(ValueError, match="kl_estimator"):
        policy_loss(logps, logps, adv, mask, ref_logps=logps, kl_estimator="k4")
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(logps, logps, torch.zeros(3), mask)


def test_kl_clip_bounds_the_log_ratio():
    """d = ref - logp = 12 and -12, clip 10: k3 = e^10 - 1 - 10 = 22015.4658 and e^-10 - 1 + 10 =
    9.0000454; unclipped k3(12) = e^12 - 13 = 162741.79. Beyond the clip the gradient is 0."""
    logps = torch.tensor([[0.0, -12.0]], requires_grad=True)
    ref = torch.tensor([[12.0, -24.0]])
    kl = kl_penalty(logps, ref, "k3", clip=10.0)
    expected = torch.tensor([[math.exp(10) - 11, math.exp(-10) + 9]])
    torch.testing.assert_close(kl, expected, rtol=1e-6, atol=1e-6)
    kl.sum().backward()
    assert torch.equal(logps.grad, torch.zeros_like(logps))
    unclipped = kl_penalty(logps.detach(), ref, "k3")
    assert unclipped[0, 0].item() == pytest.approx(math.exp(12) - 13, rel=1e-6)
