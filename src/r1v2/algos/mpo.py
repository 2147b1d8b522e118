"""Mixed Preference Optimization (RECIPE.md section 2): eq. (2) as a weighted sum of named
pure losses, DPO (3), BCO (4) and NLL on the chosen response (5).

Conventions: ``chosen_logratio`` / ``rejected_logratio`` are ``[B]`` sums over the response
tokens of ``log pi_theta - log pi_0`` (see :func:`sequence_logratio`); per-token tensors are
``[B, T]`` with a bool mask, True = the token counts.

The BCO shift ``delta`` is the count-weighted running mean of ``beta * logratio`` over every
chosen and rejected response seen so far (:class:`RunningMean`). Order, our choice: a batch's
loss uses the delta of the previous batches, then the batch's own rewards update it, so a
sample never shifts its own loss. :class:`MPOLoss` does both steps in that order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F

DEFAULT_WEIGHTS: dict[str, float] = {"dpo": 0.8, "bco": 0.2, "nll": 1.0}


def sequence_logratio(
    logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``[B, T]`` per-token log-probs of policy and reference -> ``[B]`` summed log-ratio over
    the counted tokens (masked positions are ignored, whatever they hold)."""
    diff = torch.where(mask, logps - ref_logps, torch.zeros_like(logps))  # [B, T]
    return diff.sum(dim=-1)  # [B]


def dpo_loss(
    chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float
) -> torch.Tensor:
    """DPO, eq. (3): ``-log sigmoid(beta * lr_c - beta * lr_r)``. ``[B]``, ``[B]`` -> ``[B]``."""
    return -F.logsigmoid(beta * (chosen_logratio - rejected_logratio))  # [B]


def bco_loss(
    chosen_logratio: torch.Tensor,
    rejected_logratio: torch.Tensor,
    beta: float,
    delta: float | torch.Tensor,
) -> torch.Tensor:
    """BCO, eq. (4): ``-log sigmoid(beta * lr_c - delta) - log sigmoid(-(beta * lr_r - delta))``.

    ``delta`` is the reward shift (a float or a 0-dim tensor, no gradient). ``[B]`` -> ``[B]``.
    """
    delta = torch.as_tensor(delta, dtype=chosen_logratio.dtype, device=chosen_logratio.device)
    chosen = -F.logsigmoid(beta * chosen_logratio - delta)  # [B]
    rejected = -F.logsigmoid(-(beta * rejected_logratio - delta))  # [B]
    return chosen + rejected  # [B]


def nll_loss(chosen_logps: torch.Tensor, chosen_mask: torch.Tensor) -> torch.Tensor:
    """NLL on the chosen response, eq. (5): ``-sum_t log pi(y_t) / |y_c|``.

    ``chosen_logps [B, T]``, ``chosen_mask [B, T]`` bool -> ``[B]``; normalised per sequence by
    its counted tokens; a sequence with no counted token gives 0.
    """
    masked = torch.where(chosen_mask, chosen_logps, torch.zeros_like(chosen_logps))  # [B, T]
    lengths = chosen_mask.sum(dim=-1).clamp(min=1)  # [B]
    return -masked.sum(dim=-1) / lengths  # [B]


def bco_rewards(
    chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float
) -> torch.Tensor:
    """The values the BCO shift averages: ``beta * lr`` of every chosen and rejected response,
    detached. ``[B]``, ``[B]`` -> ``[2B]``."""
    return beta * torch.cat([chosen_logratio, rejected_logratio]).detach()  # [2B]


def mpo_loss(
    chosen_logratio: torch.Tensor,
    rejected_logratio: torch.Tensor,
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    *,
    beta: float = 0.1,
    delta: float | torch.Tensor = 0.0,
    weights: Mapping[str, float] | None = None,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. (2): ``sum_name weights[name] * mean_b loss_name[b]`` over the named losses.

    Args:
        chosen_logratio, rejected_logratio: ``[B]`` summed log-ratios vs the frozen pi_0.
        chosen_logps: ``[B, T]`` per-token log-probs of the chosen response (for NLL).
        chosen_mask: ``[B, T]`` bool, True = a response token.
        beta: b of eqs. (3) and (4).
        delta: the BCO shift for this batch (the running mean of previous batches).
        weights: name -> weight over ``"dpo"``, ``"bco"``, ``"nll"`` (default
            :data:`DEFAULT_WEIGHTS`); a name left out is not computed.
        normalizer: denominator of the mean over pairs (default ``B``). For gradient
            accumulation pass the pair count of the whole batch, so a micro-batch's loss is
            its sum divided by that count.

    Returns:
        ``(loss, metrics)``; metrics are detached scalars: each term's mean (unweighted),
        ``loss``, ``delta``, ``reward_margin`` (mean ``beta * (lr_c - lr_r)``),
        ``reward_accuracy`` (fraction with ``lr_c > lr_r``), ``chosen_reward``,
        ``rejected_reward`` (means of ``beta * lr``), and ``pairs``.
    """
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    terms = {
        "dpo": lambda: dpo_loss(chosen_logratio, rejected_logratio, beta),
        "bco": lambda: bco_loss(chosen_logratio, rejected_logratio, beta, delta),
        "nll": lambda: nll_loss(chosen_logps, chosen_mask),
    }
    unknown = sorted(set(weights) - set(terms))
    if unknown:
        raise ValueError(f"unknown MPO loss names {unknown}; valid: {sorted(terms)}")
    if chosen_logratio.shape != rejected_logratio.shape or chosen_logratio.dim() != 1:
        raise ValueError(
            f"log-ratios must both be [B], got {tuple(chosen_logratio.shape)} "
            f"and {tuple(rejected_logratio.shape)}"
        )
    pairs = chosen_logratio.shape[0]
    denom = max(pairs if normalizer is None else normalizer, 1)

    loss = chosen_logratio.new_zeros(())
    metrics: dict[str, torch.Tensor] = {}
    for name, weight in weights.items():
        per_pair = terms[name]()  # [B]
        loss = loss + weight * per_pair.sum() / denom
        metrics[name] = per_pair.detach().mean() if pairs else per_pair.new_zeros(())

    with torch.no_grad():
        chosen_r = beta * chosen_logratio  # [B]
        rejected_r = beta * rejected_logratio  # [B]
        metrics.update(
            loss=loss.detach(),
            delta=torch.as_tensor(delta, dtype=loss.dtype).detach().clone(),
            reward_margin=(chosen_r - rejected_r).mean(),
            reward_accuracy=(chosen_r > rejected_r).to(loss.dtype).mean(),
            chosen_reward=chosen_r.mean(),
            rejected_reward=rejected_r.mean(),
            pairs=torch.tensor(pairs),
        )
    return loss, metrics


def all_reduce_sums(
    total: float, count: int, device: torch.device | str | None = None
) -> tuple[float, int]:
    """Sum ``(total, count)`` over every process when torch.distributed is initialised;
    otherwise return them as they are. ``device``: where the float64 buffer lives (use the
    GPU with NCCL; CPU with gloo)."""
    if not (dist.is_available() and dist.is_initialized()):
        return total, count
    buf = torch.tensor([total, float(count)], dtype=torch.float64, device=device)  # [2]
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return float(buf[0]), int(round(float(buf[1])))


class RunningMean:
    """Count-weighted running mean of every value seen: ``total / count`` (0.0 when empty).

    Merging is exact: two means merged (or their sums all-reduced) equal one pass over all
    values. Sums are kept as Python floats (float64).
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def update_from_sums(self, total: float, count: int) -> None:
        """Add ``count`` values whose sum is ``total``."""
        self.total += float(total)
        self.count += int(count)

    def update(self, values: torch.Tensor | Iterable[float], *, sync: bool = False) -> None:
        """Add values (any shape, detached). ``sync=True`` first sums this process's
        ``(total, count)`` with every other process's (:func:`all_reduce_sums`), so every
        process adds the same global values and keeps the same mean."""
        if isinstance(values, torch.Tensor):
            v = values.detach()
            total, count, device = float(v.double().sum()), v.numel(), v.device
        else:
            items = [float(x) for x in values]
            total, count, device = sum(items), len(items), None
        if sync:
            total, count = all_reduce_sums(total, count, device)
        self.update_from_sums(total, count)

    def merge(self, other: RunningMean) -> None:
        """Add everything ``other`` has seen."""
        self.update_from_sums(other.total, other.count)

    def state_dict(self) -> dict[str, float | int]:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        self.total = float(state["total"])
        self.count = int(state["count"])


class MPOLoss:
    """:func:`mpo_loss` with the BCO shift kept as a :class:`RunningMean` across calls.

    Each call computes the loss with ``delta = shift.mean`` (previous calls only), then adds
    this call's :func:`bco_rewards` to the shift (all-reduced across processes when
    ``sync``). ``state_dict()`` holds the shift, so a resumed run continues with it.
    """

    def __init__(
        self,
        beta: float = 0.1,
        weights: Mapping[str, float] | None = None,
        *,
        sync: bool = True,
    ) -> None:
        self.beta = beta
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        self.sync = sync
        self.shift = RunningMean()

    def __call__(
        self,
        chosen_logratio: torch.Tensor,
        rejected_logratio: torch.Tensor,
        chosen_logps: torch.Tensor,
        chosen_mask: torch.Tensor,
        *,
        normalizer: float | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, metrics = mpo_loss(
            chosen_logratio,
            rejected_logratio,
            chosen_logps,
            chosen_mask,
            beta=self.beta,
            delta=self.shift.mean,
            weights=self.weights,
            normalizer=normalizer,
        )
        self.shift.update(
            bco_rewards(chosen_logratio, rejected_logratio, self.beta), sync=self.sync
        )
        return loss, metrics

    def state_dict(self) -> dict[str, dict[str, float | int]]:
        return {"shift": self.shift.state_dict()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, float | int]]) -> None:
        self.shift.load_state_dict(state["shift"])
