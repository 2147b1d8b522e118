"""GRPO maths (RECIPE.md section 3): group-relative advantages, eq. (6), and the clipped
policy loss with an optional KL penalty, eq. (8).

Conventions: rewards and advantages are per sample, shape ``[N]`` with ``N = prompts * G`` in
group-major order (the G responses of prompt 0, then those of prompt 1, ...). Per-token
tensors are ``[N, T]``; ``mask`` is bool, True = the token counts.

Gradient accumulation: :func:`policy_loss` takes a ``normalizer``. Pass the count of the
whole batch (sum of :func:`loss_normalizer` over every micro-batch, and over processes when
data-parallel); each micro-batch's loss is then its sum divided by that global count, so the
accumulated gradient equals the gradient of one pass over the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

Scale = Literal["std", "none"]
Aggregation = Literal["seq-mean-token-mean", "token-mean"]
KLEstimator = Literal["k1", "k2", "k3"]

AGGREGATIONS = ("seq-mean-token-mean", "token-mean")
KL_ESTIMATORS = ("k1", "k2", "k3")


def _as_rewards(rewards: torch.Tensor | Sequence[float | None]) -> torch.Tensor:
    """Rewards as a float64 ``[N]`` tensor, None turned into NaN (= not scored)."""
    if isinstance(rewards, torch.Tensor):
        return rewards.detach().to(torch.float64).flatten()  # [N]
    values = [math.nan if r is None else float(r) for r in rewards]
    return torch.tensor(values, dtype=torch.float64)  # [N]


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[N]`` -> ``[P, G]``; raises when N is not a multiple of G."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into groups of {group_size} "
            "(expected prompts * group_size, group-major)"
        )
    return rewards.view(-1, group_size)  # [P, G]


def group_advantages(
    rewards: torch.Tensor | Sequence[float | None],
    group_size: int,
    scale: Scale = "std",
    eps: float = 1e-6,
    std_floor: float = 0.0,
) -> torch.Tensor:
    """Group-relative advantages, eq. (6): ``A_i = (r_i - mean_g) / (std_g + eps)``.

    Args:
        rewards: ``[N]`` tensor, or a list whose entries may be None; group-major order.
        group_size: G, the responses per prompt; N must be a multiple of it.
        scale: ``"std"`` divides by the group std (eq. 6); ``"none"`` subtracts the mean only.
        eps: added to the std so that a nearly constant group does not blow up.
        std_floor: a group whose reward std is below this counts as tied: all its advantages
            are 0 (our choice, RECIPE section 4: with a continuous reward-model term groups
            almost never tie exactly, and eq. 6 would blow differences of 1e-4 up to +-1.4).

    Returns:
        ``[N]`` float32 advantages (a new tensor; the input is not modified).

    Rules:
        - A reward that is None or NaN (could not be scored) is left out of its group's
          mean and std, and its own advantage is 0.
        - A group whose scored rewards are all equal, whose std is below ``std_floor``, or
          that has fewer than two scored rewards gets exactly 0 for every member, never NaN.
        - The std is the population std (``unbiased=False``): the paper's eq. (6) is silent,
          and the G responses are the whole group the advantage is relative to.
    """
    if scale not in ("std", "none"):
        raise ValueError(f"scale must be 'std' or 'none', got {scale!r}")
    r = _grouped(_as_rewards(rewards), group_size)  # [P, G]
    valid = ~torch.isnan(r)  # [P, G]
    count = valid.sum(dim=1, keepdim=True)  # [P, 1]
    filled = torch.where(valid, r, torch.zeros_like(r))  # [P, G]
    mean = filled.sum(dim=1, keepdim=True) / count.clamp(min=1)  # [P, 1]
    dev = torch.where(valid, r - mean, torch.zeros_like(r))  # [P, G]
    std = ((dev * dev).sum(dim=1, keepdim=True) / count.clamp(min=1)).sqrt()  # [P, 1]
    if scale == "std":
        dev = dev / (std + eps)  # [P, G]
    # A constant group would otherwise keep the rounding error of its mean (e.g. 0.1 * 3 / 3).
    hi = torch.where(valid, r, torch.full_like(r, -math.inf)).amax(dim=1, keepdim=True)
    lo = torch.where(valid, r, torch.full_like(r, math.inf)).amin(dim=1, keepdim=True)
    varies = (count >= 2) & (hi > lo) & (std >= std_floor)  # [P, 1]
    adv = torch.where(varies & valid, dev, torch.zeros_like(dev))  # [P, G]
    return adv.flatten().to(torch.float32)  # [N]


def group_stats(
    rewards: torch.Tensor | Sequence[float | None],
    group_size: int,
    eps: float = 1e-6,
    std_floor: float = 0.0,
) -> dict[str, float]:
    """Numbers that explain a batch of rewards, for logging.

    Returns a dict with ``reward_mean`` (over scored rewards; NaN when none is scored),
    ``unscored`` (count of None/NaN rewards), ``zero_variance_frac`` (fraction of groups whose
    advantages are all 0) and ``effective_ratio`` (fraction of samples with ``|A| > eps``),
    with advantages as :func:`group_advantages` gives them for ``eps`` and ``std_floor``.
    """
    r = _as_rewards(rewards)  # [N]
    adv = group_advantages(r, group_size, eps=eps, std_floor=std_floor)  # [N]
    adv = adv.view(-1, group_size)  # [P, G]
    valid = ~torch.isnan(r)  # [N]
    effective = adv.abs() > eps  # [P, G]
    return {
        "reward_mean": float(r[valid].mean()) if valid.any() else math.nan,
        "unscored": int((~valid).sum()),
        "zero_variance_frac": float((~effective.any(dim=1)).double().mean()),
        "effective_ratio": float(effective.double().mean()),
    }


def kl_penalty(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    estimator: KLEstimator = "k3",
    clip: float | None = None,
) -> torch.Tensor:
    """Per-token estimate of ``KL(pi_theta || pi_ref)`` from tokens sampled by the policy.

    With ``d = ref_logps - logps`` (log of pi_ref / pi_theta at the sampled token):
    ``k1 = -d``, ``k2 = d**2 / 2``, ``k3 = exp(d) - 1 - d`` (Schulman's estimators; k3 is
    unbiased and never negative). Shapes: ``[N, T]`` in, ``[N, T]`` out.

    ``clip`` bounds ``|d|`` first (no gradient beyond it). Tokens the policy did not just sample
    (replayed ones) can have ``d`` of 10 or more, where ``exp(d)`` swamps the loss.
    """
    d = ref_logps - logps  # [N, T]
    if clip is not None:
        d = d.clamp(-clip, clip)
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return torch.expm1(d) - d
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def loss_normalizer(mask: torch.Tensor, aggregation: Aggregation = "seq-mean-token-mean") -> int:
    """This batch's share of the loss denominator: sequences with at least one counted token
    (``seq-mean-token-mean``) or counted tokens (``token-mean``). Sum it over micro-batches
    (and processes) and pass the total as ``policy_loss(..., normalizer=...)``."""
    if aggregation == "seq-mean-token-mean":
        return int(mask.any(dim=-1).sum())
    if aggregation == "token-mean":
        return int(mask.sum())
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def _aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, aggregation: str, normalizer: float
) -> torch.Tensor:
    """Sum of per-sequence (or per-token) values divided by ``normalizer``; ``[N, T]`` -> ``[]``."""
    masked = torch.where(mask, per_token, torch.zeros_like(per_token))  # [N, T]
    if aggregation == "seq-mean-token-mean":
        lengths = mask.sum(dim=-1).clamp(min=1)  # [N]
        total = (masked.sum(dim=-1) / lengths).sum()  # []
    else:
        total = masked.sum()  # []
    return total / max(normalizer, 1)


def _check_shapes(logps, old_logps, advantages, mask, ref_logps) -> None:
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool (True = token counts), got {mask.dtype}")
    for name, t in (("old_logps", old_logps), ("mask", mask), ("ref_logps", ref_logps)):
        if t is not None and t.shape != logps.shape:
            raise ValueError(f"{name} {tuple(t.shape)} != logps {tuple(logps.shape)}")
    if logps.dim() != 2 or advantages.shape != logps.shape[:1]:
        raise ValueError(
            f"expected logps [N, T] and advantages [N], got {tuple(logps.shape)} "
            f"and {tuple(advantages.shape)}"
        )


def policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ref_logps: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    aggregation: Aggregation = "seq-mean-token-mean",
    normalizer: float | None = None,
    kl_clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped GRPO loss, eq. (8), with asymmetric clipping and an optional KL penalty.

    Per token: ``rho = exp(logps - old_logps)`` and
    ``l = -min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A) + kl_coef * kl``,
    with ``kl`` from :func:`kl_penalty` against ``ref_logps``.

    Args:
        logps: ``[N, T]`` log-probs of the sampled tokens under the policy being trained.
        old_logps: ``[N, T]`` the same under the policy that sampled them (no gradient).
        advantages: ``[N]`` one advantage per sequence, shared by its tokens.
        mask: ``[N, T]`` bool, True = the token counts (padding anywhere is False).
        clip_low, clip_high: the clip range is ``[1 - clip_low, 1 + clip_high]``.
        ref_logps: ``[N, T]`` log-probs under the reference policy; needed when ``kl_coef > 0``.
        kl_coef: beta of eq. (8).
        kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
        kl_clip: bound on ``|log(pi_ref / pi_theta)|`` per token in the KL estimate (None: none).
        aggregation: ``"seq-mean-token-mean"`` (eq. 8: mean over a sequence's tokens, then
            over sequences) or ``"token-mean"`` (mean over every counted token of the batch).
        normalizer: the denominator of the outer mean. Default: this batch's
            :func:`loss_normalizer` (sequences with at least one counted token, or counted
            tokens). For gradient accumulation pass the whole batch's count.

    Choice: the KL term is added per token and aggregated like the policy term (the paper
    writes it outside the sum and leaves its normalisation open).
    A sequence whose mask is all False contributes 0 and is not counted by the default
    normalizer; masked positions never reach ``exp``, so garbage there cannot give NaN.

    Returns:
        ``(loss, metrics)``: ``loss`` is a scalar with ``loss == pg_loss + kl_coef * kl``.
        ``metrics`` holds detached scalar tensors: ``pg_loss`` and ``kl`` (aggregated like the
        loss, so with a global normalizer they are this micro-batch's share and add up over
        micro-batches), and token means over this batch's counted tokens: ``ratio_mean``,
        ``clip_frac_low`` (A < 0 and rho < 1 - clip_low: the clip cuts the gradient),
        ``clip_frac_high`` (A > 0 and rho > 1 + clip_high), ``clip_frac`` (their sum),
        ``approx_kl`` (k3 estimate of KL(pi_old || pi_theta): ``rho - 1 - log rho``);
        ``tokens`` and ``sequences`` counted, to weight the token means across micro-batches.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    if kl_coef != 0.0 and ref_logps is None:
        raise ValueError("kl_coef > 0 needs ref_logps")
    _check_shapes(logps, old_logps, advantages, mask, ref_logps)
    if normalizer is None:
        normalizer = loss_normalizer(mask, aggregation)

    zeros = torch.zeros_like(logps)  # [N, T]
    log_ratio = torch.where(mask, logps - old_logps.detach(), zeros)  # [N, T]
    ratio = torch.exp(log_ratio)  # [N, T]
    adv = advantages.detach().to(logps.dtype).unsqueeze(-1)  # [N, 1]
    unclipped = ratio * adv  # [N, T]
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv  # [N, T]
    pg_per_token = -torch.minimum(unclipped, clipped)  # [N, T]
    pg_loss = _aggregate(pg_per_token, mask, aggregation, normalizer)

    if ref_logps is not None:
        # Masked positions get logps == ref_logps == 0, hence a zero estimate and no NaN.
        kl_per_token = kl_penalty(
            torch.where(mask, logps, zeros),
            torch.where(mask, ref_logps.detach(), zeros),
            kl_estimator,
            kl_clip,
        )  # [N, T]
        kl = _aggregate(kl_per_token, mask, aggregation, normalizer)
    else:
        kl = logps.new_zeros(())
    loss = pg_loss + kl_coef * kl

    with torch.no_grad():
        tokens = mask.sum()
        denom = tokens.clamp(min=1).to(logps.dtype)

        def token_mean(x: torch.Tensor) -> torch.Tensor:
            return torch.where(mask, x, zeros).sum() / denom

        low = (ratio < 1.0 - clip_low) & (adv < 0)  # [N, T]
        high = (ratio > 1.0 + clip_high) & (adv > 0)  # [N, T]
        metrics = {
            "pg_loss": pg_loss.detach(),
            "kl": kl.detach(),
            "ratio_mean": token_mean(ratio),
            "clip_frac_low": token_mean(low.to(logps.dtype)),
            "clip_frac_high": token_mean(high.to(logps.dtype)),
            "clip_frac": token_mean((low | high).to(logps.dtype)),
            "approx_kl": token_mean(torch.expm1(log_ratio) - log_ratio),
            "tokens": tokens,
            "sequences": mask.any(dim=-1).sum(),
        }
    return loss, metrics
