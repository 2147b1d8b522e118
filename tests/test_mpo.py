"""MPO losses (eqs. 2-5), the running BCO shift and its cross-process merge, by hand.

Notation in the docstrings: nls(z) = -log sigmoid(z) = log(1 + e^-z).
"""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from r1v2.algos.mpo import (
    DEFAULT_WEIGHTS,
    MPOLoss,
    RunningMean,
    all_reduce_sums,
    bco_loss,
    bco_rewards,
    dpo_loss,
    mpo_loss,
    nll_loss,
    sequence_logratio,
)

NAN = math.nan


def _batch():
    """Two pairs: lr_c = [1, -2], lr_r = [0, 0]; chosen tokens with padding in the middle
    (row 0: mask [1, 0, 1]) and at the end (row 1: mask [1, 0, 0]), NaN in padded slots."""
    chosen = torch.tensor([1.0, -2.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0], requires_grad=True)
    logps = torch.tensor([[-1.0, NAN, -3.0], [-0.5, NAN, NAN]], requires_grad=True)
    mask = torch.tensor([[True, False, True], [True, False, False]])
    return chosen, rejected, logps, mask


def test_dpo_by_hand():
    """beta 0.5: z = 0.5 * (1 - 0) = 0.5 and 0.5 * (-2 - 0) = -1.
    nls(0.5) = log(1 + e^-0.5) = 0.4740770; nls(-1) = log(1 + e) = 1.3132617.
    d/d lr_c of nls(beta (lr_c - lr_r)) = -beta * sigmoid(-z): row 0: -0.5 * 0.3775407 = -0.1887703."""
    chosen, rejected, _, _ = _batch()
    loss = dpo_loss(chosen, rejected, 0.5)
    torch.testing.assert_close(loss, torch.tensor([0.4740770, 1.3132617]), rtol=0, atol=1e-6)
    loss[0].backward()
    assert chosen.grad[0].item() == pytest.approx(-0.1887703, abs=1e-6)
    assert rejected.grad[0].item() == pytest.approx(0.1887703, abs=1e-6)


def test_bco_by_hand():
    """beta 0.5, delta 0.25.
    row 0: nls(0.5 * 1 - 0.25) + nls(-(0.5 * 0 - 0.25)) = nls(0.25) + nls(0.25)
           = 2 * 0.5759394 = 1.1518788.
    row 1: nls(0.5 * -2 - 0.25) + nls(0.25) = nls(-1.25) + 0.5759394
           = 1.5019291 + 0.5759394 = 2.0778685.
    delta 0 in row 0: nls(0.5) + nls(0) = 0.4740770 + 0.6931472 = 1.1672242 (the shift matters)."""
    chosen, rejected, _, _ = _batch()
    torch.testing.assert_close(
        bco_loss(chosen, rejected, 0.5, 0.25),
        torch.tensor([1.1518788, 2.0778685]),
        rtol=0,
        atol=1e-6,
    )
    assert bco_loss(chosen, rejected, 0.5, torch.tensor(0.0))[0].item() == pytest.approx(
        1.1672242, abs=1e-6
    )


def test_nll_by_hand():
    """row 0: -(-1 - 3) / 2 tokens = 2.0; row 1: -(-0.5) / 1 = 0.5; an empty row gives 0.
    Gradient: -1 / |y| on counted tokens, 0 (not NaN) on padding."""
    _, _, logps, mask = _batch()
    loss = nll_loss(logps, mask)
    torch.testing.assert_close(loss, torch.tensor([2.0, 0.5]), rtol=0, atol=1e-7)
    loss.sum().backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[-0.5, 0.0, -0.5], [-1.0, 0.0, 0.0]]))
    empty = nll_loss(torch.tensor([[NAN, NAN]]), torch.zeros(1, 2, dtype=torch.bool))
    assert empty.item() == 0.0


def test_sequence_logratio_ignores_padding():
    """row 0: (-1 - -2) + (-3 - -1) = 1 - 2 = -1 over mask [1, 0, 1]; NaN in the pad is ignored."""
    logps = torch.tensor([[-1.0, NAN, -3.0]])
    ref = torch.tensor([[-2.0, 5.0, -1.0]])
    out = sequence_logratio(logps, ref, torch.tensor([[True, False, True]]))
    torch.testing.assert_close(out, torch.tensor([-1.0]))


def test_mpo_loss_default_weights_by_hand():
    """beta 0.5, delta 0.25, the batch above:
    dpo mean = (0.4740770 + 1.3132617) / 2 = 0.8936693
    bco mean = (1.1518788 + 2.0778685) / 2 = 1.6148737
    nll mean = (2.0 + 0.5) / 2 = 1.25
    loss = 0.8 * 0.8936693 + 0.2 * 1.6148737 + 1.0 * 1.25 = 2.2879102.
    reward margin = mean(0.5 * [1 - 0, -2 - 0]) = -0.25; accuracy 1/2.

    Gradients (s = sigmoid; each mean over 2 pairs puts 1/2 in front of its weight):
    d/d lr_c = 0.4 * (-b s(-b (lr_c - lr_r))) + 0.1 * (-b s(-(b lr_c - d)))
        row 0: 0.4 * -0.1887703 + 0.1 * -0.2189117 = -0.0973993
        row 1: 0.4 * -0.3655293 + 0.1 * -0.3886499 = -0.1850767
    d/d lr_r = 0.4 * b s(-b (lr_c - lr_r)) + 0.1 * b s(b lr_r - d)
        row 0: 0.4 * 0.1887703 + 0.1 * 0.2189117 = 0.0973993
        row 1: 0.4 * 0.3655293 + 0.1 * 0.2189117 = 0.1681029
    d/d logps (NLL only) = 0.5 * -1 / |y| on counted tokens: [[-0.25, 0, -0.25], [-0.5, 0, 0]]."""
    chosen, rejected, logps, mask = _batch()
    loss, m = mpo_loss(chosen, rejected, logps, mask, beta=0.5, delta=0.25)
    assert DEFAULT_WEIGHTS == {"dpo": 0.8, "bco": 0.2, "nll": 1.0}
    assert loss.item() == pytest.approx(2.2879102, abs=1e-6)
    assert m["dpo"].item() == pytest.approx(0.8936693, abs=1e-6)
    assert m["bco"].item() == pytest.approx(1.6148737, abs=1e-6)
    assert m["nll"].item() == pytest.approx(1.25, abs=1e-6)
    assert m["delta"].item() == 0.25
    assert m["reward_margin"].item() == pytest.approx(-0.25)
    assert m["reward_accuracy"].item() == 0.5
    loss.backward()
    torch.testing.assert_close(
        chosen.grad, torch.tensor([-0.0973993, -0.1850767]), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(
        rejected.grad, torch.tensor([0.0973993, 0.1681029]), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(
        logps.grad, torch.tensor([[-0.25, 0.0, -0.25], [-0.5, 0.0, 0.0]]), rtol=0, atol=1e-7
    )


def test_mpo_loss_weights_select_and_scale_terms():
    """Only the named terms are computed: {"nll": 2} gives 2 * 1.25 = 2.5 and no dpo/bco
    metrics; {"dpo": 1, "bco": 0.5} gives 0.8936693 + 0.5 * 1.6148737 = 1.7011061."""
    chosen, rejected, logps, mask = _batch()
    loss, m = mpo_loss(chosen, rejected, logps, mask, beta=0.5, delta=0.25, weights={"nll": 2.0})
    assert loss.item() == pytest.approx(2.5) and "dpo" not in m and "bco" not in m
    loss, _ = mpo_loss(
        chosen, rejected, logps, mask, beta=0.5, delta=0.25, weights={"dpo": 1.0, "bco": 0.5}
    )
    assert loss.item() == pytest.approx(1.7011061, abs=1e-6)
    with pytest.raises(ValueError, match="valid"):
        mpo_loss(chosen, rejected, logps, mask, weights={"ipo": 1.0})


def test_mpo_micro_batch_normalizer_matches_full_batch():
    """Two micro-batches of one pair, each divided by the 2 pairs of the batch, accumulate the
    same gradient as the full batch."""
    chosen, rejected, logps, mask = _batch()
    full, _ = mpo_loss(chosen, rejected, logps, mask, beta=0.5, delta=0.25)
    full.backward()
    want = [t.grad.clone() for t in (chosen, rejected, logps)]
    for t in (chosen, rejected, logps):
        t.grad = None
    for i in (0, 1):
        part, _ = mpo_loss(
            chosen[i : i + 1],
            rejected[i : i + 1],
            logps[i : i + 1],
            mask[i : i + 1],
            beta=0.5,
            delta=0.25,
            normalizer=2,
        )
        part.backward()
    for t, w in zip((chosen, rejected, logps), want):
        torch.testing.assert_close(t.grad, w)


def test_mpo_objective_uses_previous_shift_then_updates():
    """beta 0.5. Call 1: lr_c [1], lr_r [0]; delta = 0 (nothing seen yet); afterwards the
    shift has seen beta * [1, 0] = [0.5, 0]: mean 0.25, count 2.
    Call 2: lr_c [3, 1], lr_r [1, -1]; its BCO uses delta 0.25:
        nls(1.5 - 0.25) + nls(-(0.5 - 0.25)) = 0.2519 + 0.8259 = 1.0778685
        nls(0.5 - 0.25) + nls(-(-0.5 - 0.25)) = 0.5759 + 0.3869 = 0.9628104, mean 1.0203395.
    Then the shift is count-weighted: (0.5 + 0 + 1.5 + 0.5 + 0.5 - 0.5) / 6 = 2.5 / 6
    = 0.4166667 (the mean of the two batch means would be 0.375)."""
    objective = MPOLoss(beta=0.5, weights={"bco": 1.0})
    _, m1 = objective(
        torch.tensor([1.0]),
        torch.tensor([0.0]),
        torch.zeros(1, 1),
        torch.ones(1, 1, dtype=torch.bool),
    )
    assert m1["delta"].item() == 0.0
    assert objective.shift.mean == pytest.approx(0.25) and objective.shift.count == 2
    loss, m2 = objective(
        torch.tensor([3.0, 1.0]),
        torch.tensor([1.0, -1.0]),
        torch.zeros(2, 1),
        torch.ones(2, 1, dtype=torch.bool),
    )
    assert m2["delta"].item() == 0.25
    assert loss.item() == pytest.approx(1.0203395, abs=1e-6)
    assert objective.shift.mean == pytest.approx(2.5 / 6)
    assert objective.shift.count == 6

    resumed = MPOLoss(beta=0.5, weights={"bco": 1.0})
    resumed.load_state_dict(objective.state_dict())
    assert resumed.shift.mean == objective.shift.mean and resumed.shift.count == 6


def test_bco_rewards_are_detached_and_concatenated():
    chosen, rejected, _, _ = _batch()
    r = bco_rewards(chosen, rejected, 0.5)
    assert not r.requires_grad
    torch.testing.assert_close(r, torch.tensor([0.5, -1.0, 0.0, 0.0]))


def test_running_mean_merge_equals_one_pass():
    """[1, 2, 3] then [4]: (1 + 2 + 3 + 4) / 4 = 2.5. Merging A = {1, 2, 3} with B = {4, 10}
    gives (6 + 14) / 5 = 4.0, the same as one pass over all five values."""
    rm = RunningMean()
    assert rm.mean == 0.0 and rm.count == 0
    rm.update(torch.tensor([1.0, 2.0, 3.0]))
    rm.update([4.0])
    assert rm.mean == pytest.approx(2.5) and rm.count == 4

    a, b, one = RunningMean(), RunningMean(), RunningMean()
    a.update([1.0, 2.0, 3.0])
    b.update(torch.tensor([[4.0, 10.0]]))
    one.update([1.0, 2.0, 3.0, 4.0, 10.0])
    a.merge(b)
    assert (a.mean, a.count) == (one.mean, one.count) == (4.0, 5)
    c = RunningMean()
    c.update_from_sums(20.0, 5)
    assert c.mean == 4.0

    restored = RunningMean()
    restored.load_state_dict(a.state_dict())
    assert (restored.total, restored.count) == (20.0, 5)
    assert all_reduce_sums(20.0, 5) == (20.0, 5)  # no process group: unchanged


def _dist_worker(rank, store_path, out_path):
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    try:
        rm = RunningMean()
        values = torch.tensor([1.0, 2.0, 3.0]) if rank == 0 else torch.tensor([4.0, 10.0])
        rm.update(values, sync=True)
        torch.save(rm.state_dict(), f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_running_mean_sync_across_two_processes(tmp_path):
    """Rank 0 sees [1, 2, 3], rank 1 sees [4, 10]; after update(sync=True) both hold the
    global sums (20, 5), mean 4.0, like one pass over all values."""
    out = tmp_path / "state"
    args = (str(tmp_path / "store"), str(out))
    # fork: the children need no fresh interpreter (and no re-import of torch)
    mp.start_processes(_dist_worker, args=args, nprocs=2, join=True, start_method="fork")
    for rank in (0, 1):
        assert torch.load(f"{out}.{rank}") == {"total": 20.0, "count": 5}
