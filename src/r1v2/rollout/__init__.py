"""Rollout engines: prompts in, sampled completions out (transformers ``generate``, with
compiled decode steps, or its continuous batching; vLLM can slot in)."""

from r1v2.rollout.compiled import CompiledEngine
from r1v2.rollout.continuous import ContinuousBatchingEngine
from r1v2.rollout.engine import ENGINES, RolloutEngine, TransformersEngine, build_engine

__all__ = [
    "ENGINES",
    "CompiledEngine",
    "ContinuousBatchingEngine",
    "RolloutEngine",
    "TransformersEngine",
    "build_engine",
]
