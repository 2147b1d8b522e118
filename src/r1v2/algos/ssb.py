"""Selective Sample Buffer (RECIPE.md section 4): keep samples with a non-zero advantage and
replay them into batches whose groups had vanishing advantages.

Everything here is per sample, never per group: ``add`` takes ``N`` samples with a flat ``[N]``
advantage tensor (any number of groups), and ``sample`` returns individual entries.

Order of a training step (our choice, done by :func:`replay`): first draw replacements from
the buffer, then add the batch's own effective samples to it. The buffer then only holds
samples of earlier steps when it is drawn from, so no sample is replayed into the batch it
came from.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class BufferEntry:
    """One stored sample, its advantage and the step it was produced at."""

    sample: Any
    advantage: float
    step: int


def _as_list(advantages: torch.Tensor | Sequence[float | None]) -> list[float]:
    """Flat ``[N]`` advantages as Python floats; None becomes NaN (never stored)."""
    if isinstance(advantages, torch.Tensor):
        if advantages.dim() != 1:
            raise ValueError(f"advantages must be flat [N], got {tuple(advantages.shape)}")
        return [float(a) for a in advantages.detach().cpu().double()]
    return [math.nan if a is None else float(a) for a in advantages]


class SelectiveSampleBuffer:
    """Samples with ``|A| > eps``, bounded by ``capacity`` and ``max_age``, drawn with
    probability proportional to ``|A| ** alpha``.

    Args:
        capacity: most entries kept; the oldest go first.
        alpha: exponent of the sampling weight (0 = uniform, 1 = proportional to ``|A|``).
        max_age: an entry added at step ``s`` is dropped once the current step exceeds
            ``s + max_age``; None = no age limit. The age is checked whenever the buffer is
            told the current step: at ``add(..., step)`` and at ``sample(k, step=...)``.
        eps: advantages with ``|A| <= eps`` (and NaN/None) are not stored.
        seed: seed of the buffer's own ``torch.Generator`` (draws do not touch global RNG).
    """

    def __init__(
        self,
        capacity: int,
        alpha: float = 1.0,
        max_age: int | None = None,
        eps: float = 1e-6,
        seed: int = 0,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if max_age is not None and max_age < 0:
            raise ValueError(f"max_age must be >= 0 or None, got {max_age}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.capacity = capacity
        self.alpha = alpha
        self.max_age = max_age
        self.eps = eps
        self.generator = torch.Generator().manual_seed(seed)
        self._entries: deque[BufferEntry] = deque()  # oldest first

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> list[BufferEntry]:
        """The stored entries, oldest first (a copy of the list)."""
        return list(self._entries)

    def evict(self, step: int) -> int:
        """Drop entries older than ``max_age`` at ``step``, then the oldest beyond capacity.
        Returns how many were dropped."""
        before = len(self._entries)
        if self.max_age is not None:
            self._entries = deque(e for e in self._entries if step - e.step <= self.max_age)
        while len(self._entries) > self.capacity:
            self._entries.popleft()
        return before - len(self._entries)

    def add(
        self, samples: Sequence[Any], advantages: torch.Tensor | Sequence[float | None], step: int
    ) -> int:
        """Store each ``samples[i]`` whose ``|advantages[i]| > eps``; returns how many.

        ``samples``: N arbitrary objects; ``advantages``: flat ``[N]`` tensor or list (one per
        sample, several groups allowed). Then evicts by age (at ``step``) and capacity.
        """
        values = _as_list(advantages)
        if len(values) != len(samples):
            raise ValueError(f"{len(samples)} samples but {len(values)} advantages")
        added = 0
        for sample, adv in zip(samples, values):
            if abs(adv) > self.eps:  # False for NaN
                self._entries.append(BufferEntry(sample, adv, int(step)))
                added += 1
        self.evict(int(step))
        return added

    def sample(self, k: int, *, step: int | None = None, remove: bool = False) -> list[BufferEntry]:
        """Draw ``min(k, len(self))`` distinct entries, with probability proportional to
        ``|A| ** alpha``, from the buffer's generator.

        Without replacement (our choice): a batch never holds the same replayed sample twice.
        With ``step`` given, expired entries are evicted first. Entries stay in the buffer
        (they can be replayed again at later steps, until they age out) unless ``remove``.
        """
        if step is not None:
            self.evict(int(step))
        k = min(int(k), len(self._entries))
        if k <= 0:
            return []
        adv = torch.tensor([e.advantage for e in self._entries], dtype=torch.float64)  # [M]
        weights = adv.abs() ** self.alpha  # [M]
        picked = torch.multinomial(weights, k, replacement=False, generator=self.generator)
        chosen = [self._entries[i] for i in picked.tolist()]
        if remove:
            drop = set(picked.tolist())
            self._entries = deque(e for i, e in enumerate(self._entries) if i not in drop)
        return chosen

    def state_dict(self) -> dict[str, Any]:
        """Contents (oldest first) and generator state; the samples are stored as they are,
        so saving it needs them to be picklable."""
        return {
            "entries": [
                {"sample": e.sample, "advantage": e.advantage, "step": e.step}
                for e in self._entries
            ],
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore contents and generator: the next draws equal those of the saved buffer.
        Entries beyond this buffer's capacity are dropped, oldest first."""
        self._entries = deque(
            BufferEntry(e["sample"], float(e["advantage"]), int(e["step"]))
            for e in state["entries"]
        )
        self.generator.set_state(state["generator"])
        while len(self._entries) > self.capacity:
            self._entries.popleft()


@dataclass
class ReplayBatch:
    """A batch after replay: ``samples[i]``, ``advantages[i]`` (``[N]`` float32) and
    ``replayed[i]`` (``[N]`` bool, True = drawn from the buffer), plus ``stats``."""

    samples: list[Any]
    advantages: torch.Tensor
    replayed: torch.Tensor
    stats: dict[str, float]


def replay(
    samples: Sequence[Any],
    advantages: torch.Tensor | Sequence[float | None],
    buffer: SelectiveSampleBuffer,
    target_ratio: float = 0.6,
    *,
    step: int,
    add_to_buffer: bool = True,
) -> ReplayBatch:
    """Replace zero-advantage samples by buffered ones until the effective ratio (share of
    samples with ``|A| > eps``) reaches ``target_ratio``, then store the batch's own
    effective samples.

    Steps, in this order:
      1. ``need = ceil(target_ratio * N) - effective``, capped by the zero-advantage slots
         and the buffer size; draw ``need`` entries (``buffer.sample(need, step=step)``).
      2. Put them in the first ``need`` zero-advantage slots, in batch order; a replayed
         sample keeps its stored advantage.
      3. If ``add_to_buffer``, add the batch's original effective samples at ``step``.
    The batch size N never changes; the trainer recomputes the "old" log-probs of replayed
    samples under the current policy.

    Returns:
        :class:`ReplayBatch` with stats ``effective_ratio_before``, ``effective_ratio_after``,
        ``replayed`` (count), ``replayed_advantage_sum`` (the replayed samples' advantages
        summed: a group's advantages sum to 0, the replays need not; draws proportional to
        ``|A|`` lean to the sign whose advantages are larger, e.g. the rare wrong answers of
        mostly solved prompts), ``added`` (count stored) and ``buffer_size`` (after adding).
    """
    values = _as_list(advantages)
    n = len(values)
    if len(samples) != n:
        raise ValueError(f"{len(samples)} samples but {n} advantages")
    effective = [abs(a) > buffer.eps for a in values]  # NaN counts as not effective
    zero_slots = [i for i, ok in enumerate(effective) if not ok]
    n_eff = n - len(zero_slots)
    # round() keeps e.g. 0.7 * 10 = 7.000000000000001 from asking for 8.
    target = math.ceil(round(target_ratio * n, 9))
    need = max(0, min(target - n_eff, len(zero_slots)))
    drawn = buffer.sample(need, step=step) if need else []

    new_samples = list(samples)
    new_adv = [0.0 if math.isnan(a) else a for a in values]
    replayed = [False] * n
    for slot, entry in zip(zero_slots, drawn):
        new_samples[slot] = entry.sample
        new_adv[slot] = entry.advantage
        replayed[slot] = True

    added = buffer.add(samples, values, step) if add_to_buffer else 0
    n_after = n_eff + len(drawn)
    return ReplayBatch(
        samples=new_samples,
        advantages=torch.tensor(new_adv, dtype=torch.float32),  # [N]
        replayed=torch.tensor(replayed, dtype=torch.bool),  # [N]
        stats={
            "effective_ratio_before": n_eff / n if n else 0.0,
            "effective_ratio_after": n_after / n if n else 0.0,
            "replayed": float(len(drawn)),
            "replayed_advantage_sum": float(sum(e.advantage for e in drawn)),
            "added": float(added),
            "buffer_size": float(len(buffer)),
        },
    )
