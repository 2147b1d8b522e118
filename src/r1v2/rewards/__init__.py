"""Reward functions: plain functions ``(completion, reference, **meta) -> float | None``.

None means "could not be scored": callers count it and never turn it into 0. For the accuracy
reward that is only a *reference* that cannot be scored; an answer the checker cannot parse or
verify in time is wrong (0.0), so an unparseable answer never beats a wrong one (RECIPE §3).

- :func:`accuracy_reward` (r_rule) and :func:`format_reward` (r_format): strings only.
- :func:`code_reward` / :func:`code_rewards`: run a completion's code against tests in a
  sandboxed subprocess (``r1v2.rewards.code``).
- :class:`HybridReward`: the weighted sum of GRPO (RECIPE §3), per-component values and counts.
- :class:`RewardModel`, :class:`RMInput`: the reward-model interface. The models behind it
  (:class:`r1v2.model.reward_model.TransformersRewardModel`) live in ``r1v2.model``; nothing
  here imports torch or ``r1v2.model``.
"""

from r1v2.rewards.accuracy import accuracy_reward
from r1v2.rewards.code import code_reward, code_rewards
from r1v2.rewards.fmt import format_reward
from r1v2.rewards.hybrid import HybridReward, HybridRewardConfig, RewardResult, rm_to_reward
from r1v2.rewards.rm_interface import RewardModel, RMInput

__all__ = [
    "HybridReward",
    "HybridRewardConfig",
    "RMInput",
    "RewardModel",
    "RewardResult",
    "accuracy_reward",
    "code_reward",
    "code_rewards",
    "format_reward",
    "rm_to_reward",
]
