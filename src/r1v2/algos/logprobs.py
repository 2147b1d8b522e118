"""Per-token log-probabilities without a full float32 ``[B, T, V]`` log-softmax."""

from __future__ import annotations

import torch


def token_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, *, chunk_size: int = 256
) -> torch.Tensor:
    """Log-probability of each chosen token under ``logits``.

    Args:
        logits: ``[B, T, V]`` in any float dtype (not modified).
        token_ids: ``[B, T]`` integer ids; position ``t`` is scored by ``logits[:, t]``
            (shift beforehand when the logits predict the next token).
        chunk_size: rows of ``T`` upcast to float32 at a time; peak extra memory is about
            ``B * chunk_size * V * 4`` bytes instead of ``B * T * V * 4``.

    Returns:
        ``[B, T]`` float32: ``logits[b, t, id] - logsumexp(logits[b, t, :])``, computed in float32.
    """
    if logits.shape[:-1] != token_ids.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and token_ids {tuple(token_ids.shape)} disagree"
        )
    out = torch.empty(token_ids.shape, dtype=torch.float32, device=logits.device)  # [B, T]
    for start in range(0, logits.shape[1], chunk_size):
        block = logits[:, start : start + chunk_size].float()  # [B, c, V]
        ids = token_ids[:, start : start + chunk_size].unsqueeze(-1)  # [B, c, 1]
        picked = block.gather(-1, ids).squeeze(-1)  # [B, c]
        out[:, start : start + chunk_size] = picked - torch.logsumexp(block, dim=-1)
    return out
