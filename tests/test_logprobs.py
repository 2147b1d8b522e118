"""token_logprobs against its naive twin ``log_softmax(logits.float()).gather(...)``."""

import pytest
import torch

from r1v2.algos.logprobs import token_logprobs


def _naive(logits, ids, temperature=1.0):
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # [B, T, V]
    return logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # [B, T]


def _pair(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(*shape, generator=g)).to(dtype)
    ids = torch.randint(0, shape[-1], shape[:-1], generator=g)
    weights = torch.randn(shape[:-1], generator=g)  # a non-uniform upstream gradient
    return logits, ids, weights


def _forward_backward(fn, logits, ids, weights, **kw):
    x = logits.detach().clone().requires_grad_()
    out = fn(x, ids, **kw)
    (out * weights).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 256])
def test_float32_matches_naive(chunk_size):
    """B=2, T=7 (odd, not a multiple of 3), V=50: values and gradients within float32
    rounding (atol 1e-5 on log-probs of magnitude ~10, 1e-6 on gradients <= 1)."""
    logits, ids, w = _pair((2, 7, 50), torch.float32)
    ours, g_ours = _forward_backward(token_logprobs, logits, ids, w, chunk_size=chunk_size)
    ref, g_ref = _forward_backward(_naive, logits, ids, w)
    assert ours.dtype == torch.float32 and ours.shape == (2, 7)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [2, 3, 7, 256])
def test_blocks_of_several_rows_match_naive(chunk_size):
    """B=5, T=3, V=50 on a strided view (the caller's ``logits[:, :-1]``): a row in pieces
    (2), one row a block (3), two rows a block and a last block of one (7), all rows (256)."""
    logits, ids, w = _pair((5, 4, 50), torch.float32, seed=1)
    ids, w = ids[:, :-1], w[:, :-1]

    def shifted(fn):
        x = logits.detach().clone().requires_grad_()
        out = fn(x[:, :-1], ids) if fn is _naive else fn(x[:, :-1], ids, chunk_size=chunk_size)
        (out * w).sum().backward()
        return out.detach(), x.grad

    ours, g_ours = shifted(token_logprobs)
    ref, g_ref = shifted(_naive)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-6)
    assert not g_ours[:, -1].any()  # the position no token reads gets no gradient


def test_bfloat16_matches_naive():
    """bf16 logits, V=1000: both upcast the same bf16 values to float32, so the log-probs
    agree to float32 rounding (atol 1e-5). The gradients are the same float32 numbers rounded
    to bf16 (relative step 2^-8 = 0.0039), so they agree within one bf16 step: rtol 8e-3 and
    atol 1e-5 for the tiny entries."""
    logits, ids, w = _pair((2, 9, 1000), torch.bfloat16)
    ours, g_ours = _forward_backward(token_logprobs, logits, ids, w, chunk_size=4)
    ref, g_ref = _forward_backward(_naive, logits, ids, w)
    assert ours.dtype == torch.float32 and g_ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(g_ours.float(), g_ref.float(), rtol=8e-3, atol=1e-5)


def test_temperature_matches_naive():
    """Logits divided by tau = 0.7 before the softmax, forward and backward."""
    logits, ids, w = _pair((1, 5, 30), torch.float32, seed=3)
    ours, g_ours = _forward_backward(token_logprobs, logits, ids, w, chunk_size=2, temperature=0.7)
    ref, g_ref = _forward_backward(_naive, logits, ids, w, temperature=0.7)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-6)


def test_gradcheck_float64():
    """Finite differences agree with the custom backward (float64 is computed in float64)."""
    logits, ids, _ = _pair((2, 5, 6), torch.float64, seed=4)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: token_logprobs(x, ids, chunk_size=2, temperature=1.3), (logits,)
    )


def test_by_hand():
    """logits [0, ln 2, ln 5] -> softmax [1, 2, 5] / 8; token 2 has log(5/8) = -0.4700036.
    Gradient w.r.t. the logits: onehot - softmax = [-0.125, -0.25, 1 - 0.625 = 0.375]."""
    logits = torch.tensor([[[0.0, 0.6931472, 1.6094379]]], requires_grad=True)
    out = token_logprobs(logits, torch.tensor([[2]]))
    assert out.item() == pytest.approx(-0.4700036, abs=1e-6)
    out.sum().backward()
    torch.testing.assert_close(
        logits.grad, torch.tensor([[[-0.125, -0.25, 0.375]]]), atol=1e-6, rtol=0
    )


def test_strided_view_grads_flow_to_a_layer_and_input_is_untouched():
    """Next-token scoring: logits[:, :-1] (a non-contiguous view) scored against ids[:, 1:].
    The gradient reaches the weights of the layer that made the logits, equals the naive one,
    the last position gets none, and the logits are not modified (float32 chunks are copies)."""
    torch.manual_seed(5)
    layer = torch.nn.Linear(8, 40)
    hidden = torch.randn(3, 6, 8)
    ids = torch.randint(0, 40, (3, 6))

    grads = []
    for fn in (token_logprobs, _naive):
        layer.zero_grad()
        logits = layer(hidden)  # [3, 6, 40]
        logits.retain_grad()
        before = logits.detach().clone()
        out = fn(logits[:, :-1], ids[:, 1:])  # [3, 5]
        out.sum().backward()
        assert torch.equal(logits.detach(), before)
        assert torch.equal(logits.grad[:, -1], torch.zeros(3, 40))
        grads.append(layer.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_saves_no_full_size_float32_tensor():
    """What autograd keeps for the backward: the logits themselves (bf16, held by the caller
    anyway), the ids and a float32 [B, T] logsumexp, nothing of size [B, T, V] in float32.
    The naive version saves its float32 [B, T, V] log-softmax."""
    b, t, v = 2, 8, 64
    logits = torch.randn(b, t, v, dtype=torch.bfloat16, requires_grad=True)
    ids = torch.randint(0, v, (b, t))

    def saved_by(fn):
        saved = []

        def pack(x):
            saved.append((x.dtype, tuple(x.shape)))
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            fn(logits, ids)
        return saved

    ours = saved_by(token_logprobs)
    assert sorted(ours, key=str) == sorted(
        [(torch.bfloat16, (b, t, v)), (torch.int64, (b, t)), (torch.float32, (b, t))], key=str
    )
    assert (torch.float32, (b, t, v)) in saved_by(_naive)


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="disagree"):
        token_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), temperature=0)


def test_masked_vocabulary_entries():
    """-inf logits (a masked vocabulary slice) give the same values and gradients as the
    naive version, and no NaN; the default chunk size is used."""
    logits, ids, w = _pair((2, 5, 20), torch.float32, seed=6)
    logits[..., 15:] = -torch.inf
    ids = ids % 15
    ours, g_ours = _forward_backward(token_logprobs, logits, ids, w)
    ref, g_ref = _forward_backward(_naive, logits, ids, w)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-6)
    assert torch.equal(g_ours[..., 15:], torch.zeros(2, 5, 5))
