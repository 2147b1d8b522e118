"""Rollout engines: prompts in, sampled completions out (transformers now; vLLM can slot in)."""

from r1v2.rollout.engine import RolloutEngine, TransformersEngine

__all__ = ["RolloutEngine", "TransformersEngine"]
