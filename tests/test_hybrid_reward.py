"""The hybrid reward: sigmoid mapping and cap, weights, None and error handling."""

from __future__ import annotations

import math

import pytest

from r1v2.config import ConfigError, resolve
from r1v2.errors import R1V2Error
from r1v2.rewards import HybridReward, HybridRewardConfig, RMInput, rm_to_reward

GOOD = "3 + 1 = 4 . </think> \\boxed{4}"  # accuracy 1, format 1 for answer "4"
BAD = "\\boxed{5}"  # accuracy 0, format 0 for answer "4"


class FakeRM:
    """Returns fixed scores; records every batch it is given."""

    def __init__(self, scores, fail=False):
        self.scores, self.fail, self.batches = scores, fail, []

    def score(self, samples):
        self.batches.append(list(samples))
        if self.fail:
            raise RuntimeError("reward model out of memory")
        return self.scores[: len(samples)]


def test_rm_to_reward_by_hand():
    """sigmoid((s - c) / k) capped:
    s=5, c=0, k=5: sigmoid(1) = 1 / (1 + e^-1) = 0.7310585786
    s=-5: sigmoid(-1) = 0.2689414214
    s=20: sigmoid(4) = 0.9820137900 > cap 0.9 -> 0.9
    s=13, c=3, k=10: sigmoid(1) = 0.7310585786
    extremes stay finite: s=-1e6 -> 0.0, s=+1e6 -> cap."""
    assert rm_to_reward(5.0, 0.0, 5.0, 0.9) == pytest.approx(0.7310585786, abs=1e-10)
    assert rm_to_reward(-5.0, 0.0, 5.0, 0.9) == pytest.approx(0.2689414214, abs=1e-10)
    assert rm_to_reward(20.0, 0.0, 5.0, 0.9) == 0.9
    assert rm_to_reward(20.0, 0.0, 5.0, 1.0) == pytest.approx(0.9820137900, abs=1e-10)
    assert rm_to_reward(13.0, 3.0, 10.0, 1.0) == pytest.approx(0.7310585786, abs=1e-10)
    assert rm_to_reward(-1e6, 0.0, 1.0, 1.0) == 0.0
    assert rm_to_reward(1e6, 0.0, 1.0, 0.8) == 0.8


def test_weighted_sum_by_hand():
    """weights accuracy 1, rm 0.5, format 2; rm center 0, scale 2, cap 1; RM scores 2, -2.
    sample 0 (GOOD): 1*1 + 0.5*sigmoid(1) + 2*1 = 1 + 0.5*0.7310585786 + 2 = 3.3655292893
    sample 1 (BAD):  1*0 + 0.5*sigmoid(-1) + 2*0 = 0.5*0.2689414214 = 0.1344707107"""
    rm = FakeRM([2.0, -2.0])
    reward = HybridReward(
        {"accuracy": 1.0, "rm": 0.5, "format": 2.0}, reward_model=rm, rm_scale=2.0
    )
    samples = [
        {"answer": "4", "choices": None, "question": "q0", "images": ["a.png"]},
        {"answer": "4", "question": "q1"},
    ]
    result = reward([GOOD, BAD], samples)
    assert result.total == pytest.approx([3.3655292893, 0.1344707107], abs=1e-9)
    assert result.components["accuracy"] == [1.0, 0.0]
    assert result.components["format"] == [1.0, 0.0]
    assert result.components["rm"] == pytest.approx([0.7310585786, 0.2689414214], abs=1e-9)
    assert result.errors == {"accuracy": 0, "rm": 0, "format": 0}
    # The reward model is called once for the whole batch, with RMInputs.
    assert rm.batches == [[RMInput("q0", GOOD, ("a.png",)), RMInput("q1", BAD, ())]]
    m = result.metrics()
    assert m["reward/total"] == pytest.approx((3.3655292893 + 0.1344707107) / 2, abs=1e-9)
    assert m["reward/accuracy"] == 0.5
    assert m["reward/rm_errors"] == 0.0


def test_sample_objects_and_question_fn():
    class Sample:
        question, answer, choices, images = "which?", "B", ("3", "5"), ()

    rm = FakeRM([0.0])
    reward = HybridReward(reward_model=rm, question_fn=lambda s: s.question + " A. 3 B. 5")
    result = reward(["x </think> \\boxed{5}"], [Sample()])
    assert result.components["accuracy"] == [1.0]  # option text of B
    assert result.components["rm"] == [0.5]  # sigmoid(0)
    assert result.total == [2.5]  # default weights 1, 1, 1
    assert rm.batches[0][0].question == "which? A. 3 B. 5"


def test_raising_rm_is_counted_and_the_step_goes_on():
    reward = HybridReward(reward_model=FakeRM([1.0, 1.0], fail=True))
    result = reward([GOOD, BAD], [{"answer": "4"}, {"answer": "4"}])
    assert result.components["rm"] == [None, None]
    assert result.errors["rm"] == 2
    assert "out of memory" in result.error_messages["rm"]
    assert result.components["accuracy"] == [1.0, 0.0]  # other components still computed
    assert result.total == [None, None]  # a missing component excludes the sample
    assert result.metrics()["reward/total_none"] == 2.0


def test_raising_rule_component_counts_one_sample():
    """A sample without an answer makes accuracy raise for that sample only."""
    reward = HybridReward({"accuracy": 1.0, "format": 1.0})
    result = reward([GOOD, GOOD], [{"answer": "4"}, {"question": "no answer field"}])
    assert result.components["accuracy"] == [1.0, None]
    assert result.errors == {"accuracy": 1, "format": 0}
    assert result.unscored == {"accuracy": 1, "format": 0}
    assert result.total == [2.0, None]


def test_none_component_is_excluded_not_zero():
    """An unparsable reference gives accuracy None: unscored, not an error; total None."""
    reward = HybridReward({"accuracy": 1.0, "format": 1.0})
    result = reward([GOOD, GOOD], [{"answer": ""}, {"answer": "4"}])
    assert result.components["accuracy"] == [None, 1.0]
    assert result.errors["accuracy"] == 0 and result.unscored["accuracy"] == 1
    assert result.total == [None, 2.0]


def test_non_finite_rm_score_is_none():
    reward = HybridReward({"rm": 1.0}, reward_model=FakeRM([math.nan, 3.0]))
    result = reward(["a", "b"], [{}, {}])
    assert result.components["rm"][0] is None
    assert result.total[1] == pytest.approx(1 / (1 + math.exp(-3.0)))


def test_zero_weight_is_not_computed():
    rm = FakeRM([1.0])
    reward = HybridReward({"accuracy": 1.0, "rm": 0.0, "format": 0.5}, reward_model=rm)
    result = reward([GOOD], [{"answer": "4"}])
    assert set(result.components) == {"accuracy", "format"}
    assert rm.batches == []
    assert result.total == [1.5]


def test_invalid_settings():
    with pytest.raises(R1V2Error, match="no reward model"):
        HybridReward({"rm": 1.0})
    with pytest.raises(R1V2Error, match="unknown component"):
        HybridReward({"acc": 1.0})
    with pytest.raises(R1V2Error, match="rm_cap"):
        HybridReward({"format": 1.0}, rm_cap=1.5)
    with pytest.raises(R1V2Error, match="rm_scale"):
        HybridReward({"format": 1.0}, rm_scale=0.0)
    with pytest.raises(ValueError, match="2 completions but 1 samples"):
        HybridReward({"format": 1.0})(["a", "b"], [{}])


def test_from_config():
    cfg = resolve(
        HybridRewardConfig, None, ["rm_cap=0.8", "rm_center=2", "weights={accuracy: 1, rm: 2}"]
    )
    assert cfg.rm_cap == 0.8 and cfg.weights == {"accuracy": 1.0, "rm": 2.0}
    rm = FakeRM([2.0])
    reward = HybridReward.from_config(cfg, reward_model=rm)
    result = reward([GOOD], [{"answer": "4"}])
    assert result.total == [1.0 + 2 * 0.5]  # sigmoid((2 - 2) / 1) = 0.5
    # Without a reward model (no rm_path) the rm term is left out.
    no_rm = HybridReward.from_config(resolve(HybridRewardConfig))
    assert set(no_rm.weights) == {"accuracy", "format"}
    with pytest.raises(ConfigError):
        resolve(HybridRewardConfig, None, ["rm_cap=high"])
    with pytest.raises(R1V2Error, match="rm_cap"):
        resolve(HybridRewardConfig, None, ["rm_cap=2"])


def test_rm_center_and_scale_come_from_the_calibration_file(tmp_path):
    """Left null, center and scale are read from RM_PATH/rm_calibration.json; a value given in
    the config wins; without the file they are 0 and 1; a bad file names itself."""
    import json

    from r1v2.rewards.hybrid import rm_calibration

    (tmp_path / "rm_calibration.json").write_text(json.dumps({"rm_center": 3.0, "rm_scale": 2.0}))
    cfg = resolve(HybridRewardConfig, None, [f"rm_path={tmp_path}"])
    assert rm_calibration(cfg) == (3.0, 2.0)
    reward = HybridReward.from_config(cfg, reward_model=FakeRM([5.0]))
    result = reward([GOOD], [{"answer": "4"}])
    assert result.components["rm"] == [pytest.approx(0.7310586)]  # sigmoid((5 - 3) / 2)
    given = resolve(HybridRewardConfig, None, [f"rm_path={tmp_path}", "rm_scale=4"])
    assert rm_calibration(given) == (3.0, 4.0)
    assert rm_calibration(resolve(HybridRewardConfig, None, [f"rm_path={tmp_path / 'x'}"])) == (
        0.0,
        1.0,
    )
    (tmp_path / "rm_calibration.json").write_text('{"rm_center": 1}')
    with pytest.raises(R1V2Error, match="rm_calibration.json: expected numbers"):
        rm_calibration(cfg)


def test_only_an_answer_after_think_counts():
    """The prompt opened a think block (default after_think=True): a boxed draft before
    </think> with no boxed answer after it, and a completion cut off inside its reasoning,
    both earn accuracy 0 and format 0; a boxed answer after </think> earns 1 and 1.
    Totals with weights accuracy 1, format 1: 0, 0, 2."""
    completions = [
        "\\boxed{4} maybe </think> the answer is four",
        "3 + 1 = \\boxed{4} so",
        "3 + 1 = 4 </think> \\boxed{4}",
    ]
    samples = [{"answer": "4"}] * 3
    reward = HybridReward({"accuracy": 1.0, "format": 1.0})
    assert reward.after_think is True
    result = reward(completions, samples)
    assert result.components["accuracy"] == [0.0, 0.0, 1.0]
    assert result.total == [0.0, 0.0, 2.0]
    # A prompt without a think block: the answer is searched in the whole completion.
    plain = HybridReward({"accuracy": 1.0}, after_think=False)
    assert plain(completions, samples).components["accuracy"] == [1.0, 1.0, 1.0]


def test_from_config_passes_after_think():
    cfg = resolve(HybridRewardConfig, None, ["weights={accuracy: 1}"])
    draft = ["\\boxed{4} </think> four"]
    assert HybridReward.from_config(cfg)(draft, [{"answer": "4"}]).total == [0.0]
    loose = HybridReward.from_config(cfg, after_think=False)
    assert loose.after_think is False
    assert loose(draft, [{"answer": "4"}]).total == [1.0]


def test_unverifiable_answer_is_wrong_not_excluded(monkeypatch):
    """A math-verify failure on the answer gives accuracy 0 (a negative advantage in its group),
    not None (excluded, which would beat a wrong answer)."""
    from r1v2.rewards import accuracy as acc

    monkeypatch.setattr(acc, "MATH_VERIFY_TARGET", "math:no_such_function")
    reward = HybridReward({"accuracy": 1.0, "format": 1.0})
    result = reward(["r </think> \\boxed{x+1}"], [{"answer": "1+x"}])
    assert result.components["accuracy"] == [0.0]
    assert result.unscored["accuracy"] == 0
    assert result.total == [1.0]
