"""Generation engines behind one small interface, so the training loops do not care which runs.

An engine turns prompts into a :class:`r1v2.model.policy.Rollout` (``G`` completions per
prompt, group-major) and is told when the trained weights change. The transformers engine
samples with the policy's own model, so it never needs a weight sync; a served engine (vLLM)
would copy the weights in :meth:`RolloutEngine.sync_weights`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from r1v2.model.policy import Policy, PromptBatch, Rollout, SamplingConfig


@runtime_checkable
class RolloutEngine(Protocol):
    def generate(
        self,
        items: Sequence[Any] | PromptBatch,
        sampling: SamplingConfig | None = None,
        *,
        group_size: int = 1,
    ) -> Rollout:
        """``group_size`` completions per prompt (group-major order)."""
        ...

    def sync_weights(self) -> None:
        """Make the engine sample from the policy's current weights."""
        ...


class TransformersEngine:
    """Samples with transformers ``generate`` on the policy's model (shares its weights)."""

    def __init__(self, policy: Policy, *, batch_size: int | None = None):
        self.policy = policy
        self.batch_size = batch_size

    def generate(
        self,
        items: Sequence[Any] | PromptBatch,
        sampling: SamplingConfig | None = None,
        *,
        group_size: int = 1,
    ) -> Rollout:
        was_training = self.policy.model.training
        self.policy.model.eval()  # no dropout while sampling
        try:
            return self.policy.generate(
                items, sampling, group_size=group_size, batch_size=self.batch_size
            )
        finally:
            self.policy.model.train(was_training)

    def sync_weights(self) -> None:
        """Nothing to copy: generation runs on the policy's own modules."""
