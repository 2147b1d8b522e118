r"""Rule scorers: one response against one sample's reference, -> 1.0, 0.0, or None.

Every scorer reads the final answer the way the rewards do (``r1v2.rewards.answers``: the last
``\boxed{}``, after ``</think>`` first; ``after_think=False``: other systems' responses may have
no think block) and grades with the accuracy reward (letters or whole option texts, numbers with
tolerance, math-verify) plus what its benchmark's protocol adds:

- ``accuracy``: the accuracy reward as it is (letters for multiple choice, option text too).
- ``any_of``: correct when any of ``metadata["answers"]`` matches (MMMU open questions).
- ``mathvista``: float answers with a ``precision`` compare after rounding both sides to that
  many decimals (MathVista's rule); everything else as ``accuracy``.
- ``olympiad``: an absolute ``tolerance`` for numbers (OlympiadBench's ``error`` field,
  ``|pred - ref| <= tol * 1.01`` as its judge writes it); several answers (``multiple``) must
  all be matched, in any order, by the comma-separated parts of the boxed answer.
- ``yesno``: POPE's yes/no (see :func:`yes_no`).
- ``code``: the response's last Python block run against the sample's tests in the sandbox
  (:func:`r1v2.rewards.code.sample_code_reward`, as in training); correct only when it passes
  every test (pass rate 1.0). The harness scores every ``kind: code`` sample this way,
  whatever its benchmark's scorer, several at a time, and also reports the mean pass rate.
- ``ifeval``: IFEval's instruction checkers (lm-eval's, :mod:`r1v2.eval.ifeval`) on the whole
  response after ``</think>``: 1.0 when it follows every instruction strictly (prompt-level
  strict accuracy); the harness also reports the loose and instruction-level accuracies.
- ``bfcl``: the function calls after ``</think>`` decoded and checked by the Berkeley Function
  Calling Leaderboard's own AST checker (``bfcl-eval``, :mod:`r1v2.eval.bfcl`) against the
  sample's possible answers; the harness checks a benchmark's responses in one batch.

A response without a final answer, or with one the rules cannot parse or verify in time, scores
0.0; None means only that the *reference* cannot be graded (the harness counts it, asks the
judge, and counts it as wrong in Pass@1 when still undecided).

Responses without any ``\boxed`` get a rule-based fallback answer first (:func:`rule_input`,
:func:`r1v2.rewards.answers.fallback_answer`): "the answer is X", "Answer: X", a final option
letter, a final number. Eval only (other systems' free-form responses); training never uses it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

from r1v2.data.schema import Sample
from r1v2.errors import R1V2Error
from r1v2.rewards.accuracy import accuracy_reward
from r1v2.rewards.answers import (
    THINK_CLOSE,
    as_number,
    boxed_contents,
    clean,
    extract_answer,
    fallback_answer,
)
from r1v2.rewards.code import sample_code_reward

Scorer = Callable[[str, Sample], "float | None"]
AnswerSource = Literal["boxed", "fallback"]  # where the rules' answer came from


def score_accuracy(response: str, sample: Sample) -> float | None:
    return accuracy_reward(response, sample.answer, choices=sample.choices)


def _best(scores: list[float | None]) -> float | None:
    """1.0 if any alternative matched, None if none could be graded, else 0.0."""
    known = [s for s in scores if s is not None]
    return max(known) if known else None


def score_any_of(response: str, sample: Sample) -> float | None:
    answers = sample.metadata.get("answers") or [sample.answer]
    return _best([accuracy_reward(response, a, choices=sample.choices) for a in answers])


def _number(text: str | None) -> float | None:
    """A plain number (``as_number`` after ``clean``; a percent sign is read literally)."""
    if text is None:
        return None
    parsed = as_number(clean(text))
    return parsed[0] if parsed is not None else None


def score_mathvista(response: str, sample: Sample) -> float | None:
    precision = sample.metadata.get("precision")
    if precision is not None and not sample.choices:
        pred, ref = _number(extract_answer(response)), _number(sample.answer)
        if pred is not None and ref is not None:
            return float(round(pred, int(precision)) == round(ref, int(precision)))
    return score_accuracy(response, sample)


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside brackets and braces: ``"(1, 2), 3"`` -> ``["(1, 2)", "3"]``."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _match_one(pred: str, ref: str, tolerance: float | None) -> float | None:
    """One predicted answer against one reference, with OlympiadBench's absolute tolerance."""
    if tolerance is not None:
        p, r = _number(pred), _number(ref)
        if p is not None and r is not None:
            return float(abs(p - r) <= tolerance * 1.01)
    return accuracy_reward("\\boxed{" + pred + "}", ref)


def score_olympiad(response: str, sample: Sample) -> float | None:
    pred = extract_answer(response)
    if pred is None:
        return 0.0
    tol = sample.metadata.get("tolerance")
    answers = sample.metadata.get("answers") or [sample.answer]
    if not sample.metadata.get("multiple"):
        return _match_one(pred, answers[0], tol)
    parts = split_top_level(clean(pred))
    if len(parts) != len(answers):
        return 0.0
    unused = list(range(len(parts)))
    for ref in answers:  # greedy matching; references are distinct values in practice
        hit = None
        for i in unused:
            s = _match_one(parts[i], ref, tol)
            if s is None:
                return None
            if s >= 1.0:
                hit = i
                break
        if hit is None:
            return 0.0
        unused.remove(hit)
    return 1.0


_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def yes_no(response: str) -> str | None:
    r"""POPE's answer: "yes", "no" or None.

    The boxed answer when there is one; else the text after the last ``</think>`` (or the whole
    response when there is none). The first "yes"/"no" word of that text is the answer.
    """
    text = extract_answer(response)
    if text is None:
        text = response.rsplit(THINK_CLOSE, 1)[-1]
    m = _YES_NO.search(text)
    return m.group(1).lower() if m else None


def score_yesno(response: str, sample: Sample) -> float | None:
    return float(yes_no(response) == sample.answer.strip().lower())


def code_pass_rate(response: str, sample: Sample) -> float | None:
    """The fraction of ``metadata["tests"]`` the response's code passes; None when the tests
    are malformed. The sample's ``timeout_s``, ``memory_mb`` and ``prelude`` apply
    (:func:`r1v2.rewards.code.sample_code_reward`, which training uses too)."""
    try:
        return sample_code_reward(response, sample.metadata)
    except R1V2Error as e:
        raise R1V2Error(f"sample {sample.id}: {e}") from None


def code_correct(rate: float | None) -> float | None:
    """Pass@1's score of a pass rate: 1.0 only when every test passed."""
    return None if rate is None else float(rate >= 1.0)


def score_code(response: str, sample: Sample) -> float | None:
    return code_correct(code_pass_rate(response, sample))


def ifeval_followed(response: str, sample: Sample):
    """lm-eval's verdicts of ``response`` on each of the sample's IFEval instructions."""
    from r1v2.eval.ifeval import follow

    meta = sample.metadata
    return follow(response, sample.question, meta["instruction_id_list"], meta["kwargs"])


def score_ifeval(response: str, sample: Sample) -> float | None:
    return float(all(ifeval_followed(response, sample).strict))


def bfcl_item(response: str, sample: Sample) -> dict:
    """What BFCL's checker is given for ``response`` to ``sample``."""
    meta = sample.metadata
    return {
        "id": sample.id,
        "function": meta["function"],
        "possible_answer": meta["possible_answer"],
        "output": response,
    }


def score_bfcl(response: str, sample: Sample) -> float | None:
    from r1v2.eval.bfcl import check

    (result,) = check([bfcl_item(response, sample)])
    return float(result["valid"])


SCORERS: dict[str, Scorer] = {
    "accuracy": score_accuracy,
    "any_of": score_any_of,
    "mathvista": score_mathvista,
    "olympiad": score_olympiad,
    "yesno": score_yesno,
    "code": score_code,
    "ifeval": score_ifeval,
    "bfcl": score_bfcl,
}


def rule_input(response: str, sample: Sample, scorer: str) -> tuple[str, AnswerSource | None]:
    r"""The text the rule scorer reads, and where its final answer comes from.

    A response with a ``\boxed`` (even a broken one) is read as it is: source "boxed", or None
    when the box is broken. One without gets :func:`fallback_answer`, boxed (source "fallback";
    the response itself when none is found: source None). POPE keeps its own reading
    (:func:`yes_no`); a yes/no word read from un-boxed text counts as "fallback".
    """
    if scorer == "yesno":
        if yes_no(response) is None:
            return response, None
        return response, "boxed" if extract_answer(response) is not None else "fallback"
    if boxed_contents(response):
        return response, "boxed" if extract_answer(response) is not None else None
    answer = fallback_answer(response, n_choices=len(sample.choices or ()))
    if answer is None:
        return response, None
    return "\\boxed{" + answer + "}", "fallback"
