"""Per-token log-probabilities without a full float32 ``[B, T, V]`` log-softmax.

Neither pass materialises a float32 tensor of the logits' full size. The forward computes
the logsumexp one chunk of positions at a time; autograd keeps only the input logits (which
the caller holds anyway), the ids and the float32 ``[B, T]`` logsumexp; the backward
recomputes the softmax per chunk. Extra memory: one float32 chunk (``chunk_size * V * 4``
bytes, about 64 MiB by default) in the forward; that plus the gradient itself
(``B * T * V`` in the logits' dtype) in the backward. The naive
``log_softmax(logits.float()).gather(...)`` keeps ``B * T * V * 4`` bytes for the backward
and peaks at two to three times that (see ``bench/logprob_memory.py``).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

CHUNK_ELEMENTS = 1 << 24  # default chunk: 2^24 float32 values = 64 MiB


def _blocks(shape: torch.Size, chunk_size: int):
    """Index pairs ``(slice of B, slice of T)`` covering a ``[B, T]`` grid with at most
    ``chunk_size`` positions each: whole rows, as many as fit, when a row fits (few, large
    blocks for short sequences or a small vocabulary), else one row in pieces."""
    batch, length = shape
    if length <= chunk_size:
        rows_per_block = max(1, chunk_size // max(length, 1))
        for b in range(0, batch, rows_per_block):
            yield slice(b, min(b + rows_per_block, batch)), slice(0, length)
        return
    for b in range(batch):
        for start in range(0, length, chunk_size):
            yield slice(b, b + 1), slice(start, min(start + chunk_size, length))


class _TokenLogprobs(torch.autograd.Function):
    """``logits [B, T, V]``, ``ids [B, T]`` -> ``[B, T]`` float32 log-probs.

    Saves only ``logits``, ``ids`` and the float32 logsumexp ``[B, T]``; the backward
    recomputes the softmax one chunk at a time. Works on strided views (e.g. ``logits[:, :-1]``)
    without copying them.
    """

    @staticmethod
    def forward(ctx, logits, ids, chunk_size, temperature):
        acc = torch.promote_types(logits.dtype, torch.float32)  # float32, or float64 input
        out = torch.empty(ids.shape, dtype=acc, device=logits.device)  # [B, T]
        lse = torch.empty_like(out)  # [B, T]
        for b, rows in _blocks(ids.shape, chunk_size):
            block = logits[b, rows].to(acc, copy=True)  # [n, c, V], never a view
            if temperature != 1.0:
                block.div_(temperature)
            picked = block.gather(-1, ids[b, rows, None]).squeeze(-1)  # [n, c]
            # logsumexp in place (torch.logsumexp would allocate a second [n, c, V] buffer)
            top = block.amax(dim=-1, keepdim=True)  # [n, c, 1]
            top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
            total = block.sub_(top).exp_().sum(dim=-1)  # [n, c]
            lse[b, rows] = total.log_() + top.squeeze(-1)  # [n, c]
            out[b, rows] = picked - lse[b, rows]
            del block
        ctx.save_for_backward(logits, ids, lse)
        ctx.chunk_size = chunk_size
        ctx.temperature = temperature
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        # d out[b, t] / d logits[b, t, v]
        #     = (onehot(ids[b, t])[v] - softmax(logits[b, t] / tau)[v]) / tau
        logits, ids, lse = ctx.saved_tensors
        tau = ctx.temperature
        grad_out = grad_out.to(lse.dtype)  # [B, T]
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)  # [B, T, V]
        for b, rows in _blocks(ids.shape, ctx.chunk_size):
            g = grad_out[b, rows, None] / tau  # [n, c, 1]
            block = logits[b, rows].to(lse.dtype, copy=True)  # [n, c, V], never a view
            if tau != 1.0:
                block.div_(tau)
            block.sub_(lse[b, rows, None]).exp_().mul_(-g)  # [n, c, V]: -softmax * g
            block.scatter_add_(-1, ids[b, rows, None], g)  # [n, c, V]: + onehot * g
            grad[b, rows] = block
            del block
        return grad, None, None, None


def token_logprobs(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    chunk_size: int | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Log-probability of each chosen token under ``logits``, differentiable w.r.t. ``logits``.

    Args:
        logits: ``[B, T, V]`` in any float dtype (not modified).
        token_ids: ``[B, T]`` integer ids; position ``t`` is scored by ``logits[:, t]``
            (shift beforehand when the logits predict the next token).
        chunk_size: positions of ``T`` upcast to float32 at a time; extra memory is about
            ``chunk_size * V * 4`` bytes instead of ``B * T * V * 4``. Default: as many
            positions as fit :data:`CHUNK_ELEMENTS` values (e.g. 110 for V = 152064).
        temperature: the logits are divided by it before the softmax (use the sampling
            temperature so that the log-probs match the sampler's distribution).

    Returns:
        ``[B, T]``: ``logits[b, t, id] / tau - logsumexp(logits[b, t, :] / tau)``, computed
        and returned in float32 (float64 for float64 logits). The gradient w.r.t. ``logits``
        has the logits' dtype.
    """
    if logits.shape[:-1] != token_ids.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and token_ids {tuple(token_ids.shape)} disagree"
        )
    if chunk_size is None:
        chunk_size = max(1, CHUNK_ELEMENTS // max(logits.shape[-1], 1))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got {tuple(logits.shape)}")
    return _TokenLogprobs.apply(logits, token_ids.long(), chunk_size, float(temperature))
