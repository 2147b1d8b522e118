r"""The hybrid reward of GRPO (RECIPE §3, eq. 7): r = w_acc r_rule + w_rm r_rm + w_fmt r_format.

- ``accuracy`` (r_rule): :func:`r1v2.rewards.accuracy_reward` on the sample's ``answer`` and
  ``choices``, in {0, 1}, or None when the *reference* cannot be scored (an answer that cannot
  be parsed or verified in time is 0). With ``after_think`` (the default) only an answer after
  ``</think>`` counts (RECIPE §3).
- ``rm`` (r_rm): a :class:`RewardModel`'s unbounded score ``s`` mapped to
  ``min(sigmoid((s - center) / scale), cap)`` (RECIPE §5, "calibrated threshold"). The model is
  called once per batch.
  A ``kind: code`` sample is scored by :func:`r1v2.rewards.code.sample_code_reward` instead:
  its ``metadata["tests"]`` run against the completion's last Python block in a sandbox, the
  pass rate in [0, 1] (after ``</think>`` only, as for answers), with the sample's own
  ``timeout_s``, ``memory_mb`` and ``prelude`` when its metadata sets them, as in eval
  (``code_timeout`` and 1024 MB otherwise); the code samples of a batch run ``code_workers``
  at a time.
- ``format`` (r_format): :func:`r1v2.rewards.format_reward`, in {0, 1}.

Every component's value is returned per sample, so the trainer logs each one. A component
that raises gives None for that sample (for the whole batch for ``rm``) and is counted in
``errors``; the step goes on.

None in a component means that component cannot score the sample: for ``accuracy`` an
unscorable reference, for ``rm`` a failed or non-finite score, for any component an exception.
It makes the sample's total None: the sample is excluded from the advantages rather than
scored on the other terms (RECIPE §3: "None only when the reference cannot be scored
(excluded)"); a partial sum would silently treat the missing term as 0.
A component whose weight is 0 is not computed at all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1v2.config import option
from r1v2.errors import R1V2Error
from r1v2.rewards.accuracy import accuracy_reward
from r1v2.rewards.code import TIMEOUT_S, sample_code_reward
from r1v2.rewards.fmt import format_reward
from r1v2.rewards.rm_interface import RewardModel, RMInput

DEFAULT_WEIGHTS = {"accuracy": 1.0, "rm": 1.0, "format": 1.0}
CALIBRATION_FILE = "rm_calibration.json"  # {"rm_center": float, "rm_scale": float, ...}
COMPONENTS = tuple(DEFAULT_WEIGHTS)


def rm_to_reward(score: float, center: float = 0.0, scale: float = 1.0, cap: float = 1.0) -> float:
    """``min(sigmoid((score - center) / scale), cap)``: an unbounded RM score mapped into [0, cap].

    E.g. center 0, scale 5, cap 0.9: score 5 -> sigmoid(1) = 0.7311; score 20 -> sigmoid(4) =
    0.9820, capped to 0.9. Written to stay finite for any float score.
    """
    z = (score - center) / scale
    s = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    return min(s, cap)


def rm_calibration(cfg: HybridRewardConfig) -> tuple[float, float]:
    """``(center, scale)`` of the RM mapping: the config's values; one left null comes from
    ``RM_PATH/rm_calibration.json`` when the reward model has that file, else 0 and 1."""
    center, scale = cfg.rm_center, cfg.rm_scale
    file = Path(cfg.rm_path) / CALIBRATION_FILE if cfg.rm_path else None
    if (center is None or scale is None) and file is not None and file.is_file():
        try:
            saved = json.loads(file.read_text())
            center = float(saved["rm_center"]) if center is None else center
            scale = float(saved["rm_scale"]) if scale is None else scale
        except (ValueError, KeyError, TypeError) as e:
            raise R1V2Error(
                f"{file}: expected numbers under 'rm_center' and 'rm_scale' ({e!r})"
            ) from e
        if scale <= 0:
            raise R1V2Error(f"{file}: field 'rm_scale' must be > 0, got {scale}")
    return (0.0 if center is None else center, 1.0 if scale is None else scale)


@dataclass
class HybridRewardConfig:
    """The hybrid reward's settings; train configs nest it (``reward.rm_cap=0.8``)."""

    weights: dict[str, float] = option(
        dict(DEFAULT_WEIGHTS),
        "weight of each reward component (accuracy, rm, format); a component left out or "
        "weighted 0 is not computed (TRL: reward_weights)",
    )
    rm_path: str | None = option(
        None,
        "reward model checkpoint (sequence classifier or value head); without one the rm term "
        "is left out (TRL: a model in reward_funcs)",
    )
    rm_device: str = option("cpu", "device the reward model runs on")
    rm_dtype: str = option("float32", "dtype the reward model runs in (float32, bfloat16, float16)")
    rm_batch_size: int = option(8, "samples per reward model forward pass")
    rm_center: float | None = option(
        None,
        "RM score mapped to 0.5: r_rm = min(sigmoid((s - center) / scale), cap); null: from "
        "RM_PATH/rm_calibration.json when the reward model has one, else 0",
    )
    rm_scale: float | None = option(
        None,
        "RM score units per unit of the sigmoid's input (> 0); null: from "
        "RM_PATH/rm_calibration.json when the reward model has one, else 1",
    )
    rm_cap: float = option(
        1.0, "upper bound of the mapped RM reward, in [0, 1] (calibrated threshold)"
    )
    accuracy_timeout: float = option(
        5.0, "seconds allowed per math-verify check (an answer that runs out of time scores 0)"
    )

    def validate(self) -> None:
        unknown = sorted(set(self.weights) - set(COMPONENTS))
        if unknown:
            raise R1V2Error(
                f"reward.weights: unknown component(s) {', '.join(unknown)}; valid: {', '.join(COMPONENTS)}"
            )
        if self.rm_scale is not None and self.rm_scale <= 0:
            raise R1V2Error(f"reward.rm_scale must be > 0, got {self.rm_scale}")
        if not 0.0 <= self.rm_cap <= 1.0:
            raise R1V2Error(f"reward.rm_cap must be in [0, 1], got {self.rm_cap}")


@dataclass
class RewardResult:
    """Rewards of one batch. Lists are per sample, in the order of the completions.

    ``errors[name]`` counts samples whose component ``name`` raised (``error_messages[name]``
    keeps the first message); ``unscored[name]`` counts samples where it gave None for any
    reason (raised, or could not be scored).
    """

    total: list[float | None]
    components: dict[str, list[float | None]]
    errors: dict[str, int]
    unscored: dict[str, int] = field(default_factory=dict)
    error_messages: dict[str, str] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Means over scored samples (``reward/<name>``, ``reward/total``) and the counts."""
        out: dict[str, float] = {}
        for name, values in [("total", self.total), *self.components.items()]:
            scored = [v for v in values if v is not None]
            out[f"reward/{name}"] = sum(scored) / len(scored) if scored else math.nan
        for name in self.components:
            out[f"reward/{name}_errors"] = float(self.errors.get(name, 0))
            out[f"reward/{name}_none"] = float(self.unscored.get(name, 0))
        out["reward/total_none"] = float(sum(v is None for v in self.total))
        return out


def _get(sample: Any, name: str, default: Any = None) -> Any:
    if isinstance(sample, Mapping):
        return sample.get(name, default)
    return getattr(sample, name, default)


def _question(sample: Any) -> str:
    return _get(sample, "question", "")


class HybridReward:
    """Weighted sum of named reward components over a batch of completions.

    ``samples[i]`` describes the prompt of ``completions[i]``: an object or mapping with
    ``answer``, ``choices`` (or None), and for the reward model ``question`` and ``images``
    (paths, bytes or PIL images). ``question_fn(sample)`` gives the question text the reward
    model sees (default: ``sample.question``); pass the function that built the policy's prompt
    so both see the same text.

    ``after_think``: the prompt opened a think block (R1-style chat template), so only an
    answer after ``</think>`` counts; a boxed draft inside the reasoning, or a completion cut
    off before ``</think>``, scores 0 accuracy. Pass False for prompts without a think block.
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        *,
        reward_model: RewardModel | None = None,
        rm_center: float = 0.0,
        rm_scale: float = 1.0,
        rm_cap: float = 1.0,
        accuracy_timeout: float = 5.0,
        question_fn: Callable[[Any], str] = _question,
        after_think: bool = True,
        code_workers: int = 2,
        code_timeout: float = TIMEOUT_S,
    ) -> None:
        weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        HybridRewardConfig(weights=weights, rm_scale=rm_scale, rm_cap=rm_cap).validate()
        self.weights = {k: float(v) for k, v in weights.items() if v != 0}
        if "rm" in self.weights and reward_model is None:
            raise R1V2Error(
                "the rm reward has a weight but no reward model was given (reward.rm_path)"
            )
        self.reward_model = reward_model
        self.rm_center, self.rm_scale, self.rm_cap = rm_center, rm_scale, rm_cap
        self.accuracy_timeout = accuracy_timeout
        self.question_fn = question_fn
        self.after_think = after_think
        self.code_workers, self.code_timeout = max(1, code_workers), code_timeout

    @classmethod
    def from_config(
        cls,
        cfg: HybridRewardConfig,
        *,
        reward_model: RewardModel | None = None,
        question_fn: Callable[[Any], str] = _question,
        after_think: bool = True,
    ) -> HybridReward:
        """Build from a config and the reward model the caller loaded from ``cfg.rm_path``
        (``r1v2.train.stage.make_reward`` does; rewards/ never loads models itself).

        Without a reward model the rm term is left out, whatever its weight.
        ``after_think`` comes from the policy (``policy.opens_think``), not from the config:
        whether the prompt opened a think block is the chat template's property.
        """
        cfg.validate()
        weights = dict(cfg.weights)
        if reward_model is None and cfg.rm_path is not None and weights.get("rm", 0) != 0:
            raise R1V2Error(
                f"reward.rm_path={cfg.rm_path} is set but no reward model was passed: load it "
                "with r1v2.model.reward_model.TransformersRewardModel.from_pretrained"
            )
        if reward_model is None:
            weights.pop("rm", None)
        center, scale = rm_calibration(cfg)
        return cls(
            weights,
            reward_model=reward_model,
            rm_center=center,
            rm_scale=scale,
            rm_cap=cfg.rm_cap,
            accuracy_timeout=cfg.accuracy_timeout,
            question_fn=question_fn,
            after_think=after_think,
        )

    def __call__(self, completions: Sequence[str], samples: Sequence[Any]) -> RewardResult:
        if len(completions) != len(samples):
            raise ValueError(f"{len(completions)} completions but {len(samples)} samples")
        components: dict[str, list[float | None]] = {}
        errors: dict[str, int] = {}
        messages: dict[str, str] = {}
        for name in self.weights:
            values, n_errors, message = self._component(name, completions, samples)
            components[name], errors[name] = values, n_errors
            if message is not None:
                messages[name] = message
        total: list[float | None] = []
        for i in range(len(completions)):
            parts = [components[name][i] for name in self.weights]
            if any(p is None for p in parts):
                total.append(None)
            else:
                total.append(sum(self.weights[n] * p for n, p in zip(self.weights, parts)))
        unscored = {name: sum(v is None for v in vals) for name, vals in components.items()}
        return RewardResult(total, components, errors, unscored, messages)

    def _component(
        self, name: str, completions: Sequence[str], samples: Sequence[Any]
    ) -> tuple[list[float | None], int, str | None]:
        """Values of one component, how many samples raised, and the first error message."""
        if name == "rm":
            return self._rm(completions, samples)
        fn = self._accuracy if name == "accuracy" else self._format
        code = self._code(completions, samples) if name == "accuracy" else {}
        values: list[float | None] = []
        n_errors, message = 0, None
        for i, (completion, sample) in enumerate(zip(completions, samples)):
            try:
                value = code[i] if i in code else fn(completion, sample)
                if isinstance(value, Exception):
                    raise value
                values.append(value)
            except Exception as e:  # counted; one bad sample must not stop the step
                values.append(None)
                n_errors += 1
                message = message or f"{type(e).__name__}: {e}"
        return values, n_errors, message

    def _code(self, completions: Sequence[str], samples: Sequence[Any]) -> dict[int, Any]:
        """The code reward of every ``kind: code`` sample, run in parallel: {index: value or
        the exception it raised}. A completion cut off before ``</think>`` scores 0."""
        index = [i for i, s in enumerate(samples) if _get(s, "kind") == "code"]
        if not index:
            return {}

        def one(i: int) -> Any:
            completion, sample = completions[i], samples[i]
            if self.after_think and "</think>" not in completion:
                return 0.0
            meta = _get(sample, "metadata")
            try:
                return sample_code_reward(completion, meta, timeout_s=self.code_timeout)
            except Exception as e:  # returned, then counted as this sample's error
                return e

        with ThreadPoolExecutor(max_workers=self.code_workers) as pool:
            return dict(zip(index, pool.map(one, index)))

    def _accuracy(self, completion: str, sample: Any) -> float | None:
        return accuracy_reward(
            completion,
            _get(sample, "answer"),
            choices=_get(sample, "choices"),
            timeout=self.accuracy_timeout,
            after_think=self.after_think,
        )

    @staticmethod
    def _format(completion: str, sample: Any) -> float:
        return format_reward(completion)

    def _rm(
        self, completions: Sequence[str], samples: Sequence[Any]
    ) -> tuple[list[float | None], int, str | None]:
        inputs = [
            RMInput(self.question_fn(s), c, tuple(_get(s, "images", None) or ()))
            for c, s in zip(completions, samples)
        ]
        try:
            scores = list(self.reward_model.score(inputs))
            if len(scores) != len(inputs):
                raise ValueError(
                    f"reward model gave {len(scores)} scores for {len(inputs)} samples"
                )
        except Exception as e:  # the whole batch is unscored and counted
            return [None] * len(inputs), len(inputs), f"{type(e).__name__}: {e}"
        values: list[float | None] = [
            None
            if s is None or not math.isfinite(s)
            else rm_to_reward(s, self.rm_center, self.rm_scale, self.rm_cap)
            for s in scores
        ]
        return values, 0, None
