"""A code sample's own settings (metadata ``prelude``, ``timeout_s``, ``memory_mb``) apply in
training (HybridReward) exactly as in eval (``code_pass_rate``): both go through
``sample_code_reward``. Each case below scores differently with and without its setting, so a
path that dropped the setting would fail here."""

import pytest

from r1v2.data.schema import Sample
from r1v2.errors import R1V2Error
from r1v2.eval.scoring import code_pass_rate
from r1v2.rewards import HybridReward
from r1v2.rewards.code import sample_code_reward


def answer(src: str) -> str:
    return f"reasoning </think>\n```python\n{src}\n```\n"


# (solution, tests, the setting, the pass rate without it, the pass rate with it)
CASES = {
    # typing's List is only defined by the prelude (LiveCodeBench's imports)
    "prelude": (
        "class Solution:\n    def f(self, xs: List[int]) -> int:\n        return sum(xs)",
        {"func_name": "f", "cases": [{"input": "[1, 2]", "output": "3"}]},
        {"prelude": "from typing import *"},
        0.0,
        1.0,
    ),
    # 1 s per call: inside the default 4 s, past the sample's 0.3 s
    "timeout_s": (
        "import time\ndef f():\n    time.sleep(1.0)\n    return 1",
        "assert f() == 1",
        {"timeout_s": 0.3},
        1.0,
        0.0,
    ),
    # 300 MB (never touched, so cheap): inside the default 1024 MB, past the sample's 128 MB
    "memory_mb": (
        "x = bytearray(300 * 1024**2)\nprint('ok')",
        [{"input": "", "output": "ok"}],
        {"memory_mb": 128},
        1.0,
        0.0,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_training_and_eval_honour_the_same_sample_settings(name):
    src, tests, setting, without, with_ = CASES[name]
    plain = Sample("p", "q", (), "-", kind="code", metadata={"tests": tests})
    tuned = Sample("t", "q", (), "-", kind="code", metadata={"tests": tests, **setting})
    completion = answer(src)
    got_eval = [code_pass_rate(completion, s) for s in (plain, tuned)]
    result = HybridReward({"accuracy": 1.0})([completion, completion], [plain, tuned])
    assert got_eval == [without, with_]
    assert result.components["accuracy"] == [without, with_]


def test_the_sample_setting_wins_over_the_callers_default():
    """HybridReward's code_timeout is the default for samples that set none."""
    src, tests, _, _, _ = CASES["timeout_s"]
    sample = {"kind": "code", "answer": "-", "metadata": {"tests": tests, "timeout_s": 5.0}}
    reward = HybridReward({"accuracy": 1.0}, code_timeout=0.3)
    assert reward([answer(src)], [sample]).components["accuracy"] == [1.0]
    assert sample_code_reward(answer(src), {"tests": tests}, timeout_s=0.3) == 0.0


@pytest.mark.parametrize(
    "meta, field",
    [
        ({"timeout_s": "4"}, "metadata.timeout_s"),
        ({"timeout_s": 0}, "metadata.timeout_s"),
        ({"timeout_s": float("inf")}, "metadata.timeout_s"),
        ({"memory_mb": True}, "metadata.memory_mb"),
        ({"memory_mb": 10.5}, "metadata.memory_mb"),
        ({"prelude": ["import os"]}, "metadata.prelude"),
    ],
)
def test_a_bad_setting_is_a_clear_error_in_eval_and_counted_in_training(meta, field):
    tests = [{"input": "", "output": "ok"}]
    sample = Sample("s1", "q", (), "-", kind="code", metadata={"tests": tests, **meta})
    completion = answer("print('ok')")
    with pytest.raises(R1V2Error, match=f"^sample s1: {field}: "):
        code_pass_rate(completion, sample)
    result = HybridReward({"accuracy": 1.0})([completion], [sample])
    assert result.components["accuracy"] == [None]
    assert result.errors["accuracy"] == 1
    assert result.error_messages["accuracy"].startswith(f"R1V2Error: {field}: ")
