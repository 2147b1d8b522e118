"""Generation engines behind one small interface, so the training loops do not care which runs.

An engine turns prompts into a :class:`r1v2.model.policy.Rollout` (``G`` completions per
prompt, group-major) and is told when the trained weights change
(:meth:`RolloutEngine.sync_weights`, after every optimizer step). The local engines sample
with the policy's own model and have nothing to copy; the vLLM engine pushes the weights to
its server.

- ``transformers``: :class:`TransformersEngine`, transformers ``generate`` (padded batches,
  a dynamic KV cache; prefix sharing with ``share_prefix``).
- ``compiled``: :class:`r1v2.rollout.compiled.CompiledEngine`, the same prefill, then a
  sampling loop whose decode step runs through ``torch.compile`` (compiled on first use).
- ``continuous``: :class:`r1v2.rollout.continuous.ContinuousBatchingEngine`, transformers'
  continuous batching (paged KV cache, finished sequences replaced as they end).
- ``vllm``: :class:`r1v2.rollout.vllm_engine.VLLMEngine`, a vLLM server in its own process
  (:mod:`r1v2.rollout.vllm_server`); a VLM's images travel beside its prompts' ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from r1v2.errors import R1V2Error
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
    """Samples with transformers ``generate`` on the policy's model (shares its weights).

    ``share_prefix``: each prompt is prefilled once per ``generate`` call and its KV cache
    expanded to its ``group_size`` samples, instead of prefilling every sample's copy of it
    (:meth:`r1v2.model.policy.Policy.generate`). The random draws are the same, so a seed
    gives the same samples up to float rounding of the logits (greedy: the same). Off by
    default here (a policy's ``generate`` need not take it); ``r1v2 grpo`` turns it on with
    its ``share_prefix`` field.
    """

    def __init__(
        self, policy: Policy, *, batch_size: int | None = None, share_prefix: bool = False
    ):
        self.policy = policy
        self.batch_size = batch_size
        self.share_prefix = share_prefix

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
            extra = self._generate_options()
            return self.policy.generate(
                items, sampling, group_size=group_size, batch_size=self.batch_size, **extra
            )
        finally:
            self.policy.model.train(was_training)

    def sync_weights(self) -> None:
        """Nothing to copy: generation runs on the policy's own modules."""

    def _generate_options(self) -> dict[str, Any]:
        """Keywords for the policy's ``generate`` beyond the batch (only those set: a
        policy's ``generate`` need not take them)."""
        return {"share_prefix": True} if self.share_prefix else {}


# The names a config's ``engine`` field takes (r1v2 grpo); build_engine makes them.
ENGINES = ("transformers", "compiled", "continuous", "vllm")


def build_engine(
    name: str, policy: Policy, *, share_prefix: bool = False, **options: Any
) -> RolloutEngine:
    """The engine called ``name`` (one of :data:`ENGINES`) on ``policy``. ``share_prefix``
    applies to the transformers and compiled engines; continuous batching always prefills a
    prompt once for its samples. ``options``: for vllm ``url``, ``timeout`` and
    ``weights_dir`` of :class:`r1v2.rollout.vllm_engine.VLLMEngine`; for compiled
    ``static_cache`` of :class:`r1v2.rollout.compiled.CompiledEngine`."""
    if name == "vllm":
        from r1v2.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(policy, **options)
    if name == "transformers":
        return TransformersEngine(policy, share_prefix=share_prefix)
    if name == "compiled":
        from r1v2.rollout.compiled import CompiledEngine

        return CompiledEngine(policy, share_prefix=share_prefix, **options)
    if name == "continuous":
        from r1v2.rollout.continuous import ContinuousBatchingEngine

        return ContinuousBatchingEngine(policy)
    raise R1V2Error(f"unknown rollout engine {name!r}: expected one of {', '.join(ENGINES)}")
