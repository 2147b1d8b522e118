r"""The accuracy reward r_rule (RECIPE §3): is the completion's final answer the reference?

``accuracy_reward(completion, answer, *, choices=None)`` returns 1.0 (correct), 0.0 (wrong,
or no answer) or None (could not be scored). How a pair is decided, first rule that applies:

1. The reference is cleaned (``$...$``, ``\boxed{}``, ``\text{}`` unwrapped). Empty or with
   unbalanced braces: None. The completion's answer is its last ``\boxed{...}``, looked for
   after ``</think>`` first (see :mod:`r1v2.rewards.answers`). No answer, or a broken one: 0.0.
2. Multiple choice. A reference that is a letter (``B``, ``(B)``, ``B.``; lower case only
   when ``choices`` are given) is matched by the same letter in any of those forms, or, when
   ``choices`` are given, by the option's text (``\boxed{5}`` for ``B`` when
   ``choices[1] == "5"``). When the reference is an option's text and the answer a letter,
   the letter's option text is compared instead. A reference letter outside ``choices``: None.
3. Identical strings after clean-up (spaces removed): 1.0.
4. Plain numbers on both sides: equal within a relative tolerance of 1e-6. Thousands
   separators are read (``1,000``), trailing units are dropped (``50 cm`` == ``50``), and a
   percent sign allows either reading (``50%`` == ``50`` == ``0.5``).
5. Plain words on both sides (``red circle``): equal ignoring case and spacing. A plain
   number against plain words: 0.0.
6. Everything else goes to math-verify (``\frac{1}{2}`` == ``0.5``, ``x = 3`` == ``3``), run in
   a worker process with a hard time limit (:mod:`r1v2.rewards.timeout`), so it works off the
   main thread. A reference math-verify cannot parse: None. A call that runs out of time or
   fails: None (could not be scored; counted by the caller, never silently 0).

Rules 1-5 need no process and no sympy: letters and numbers, the common case, stay cheap.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Sequence

from r1v2.rewards import answers
from r1v2.rewards.timeout import CallTimeout, WorkerError, call_with_timeout

# The function the worker runs for rule 6 ("module:function"); tests may point it elsewhere.
MATH_VERIFY_TARGET = "r1v2.rewards.accuracy:math_verify_equal"
REL_TOL = 1e-6

_stats_lock = threading.Lock()
_STATS = {"math_verify_calls": 0, "timeouts": 0, "worker_errors": 0}


def accuracy_stats() -> dict[str, int]:
    """Counts since start-up: math-verify calls, and how many timed out or failed (-> None)."""
    with _stats_lock:
        return dict(_STATS)


def _count(key: str) -> None:
    with _stats_lock:
        _STATS[key] += 1


def accuracy_reward(
    completion: str,
    answer: str,
    *,
    choices: Sequence[str] | None = None,
    timeout: float = 5.0,
) -> float | None:
    """1.0 when the completion's final answer equals ``answer``, 0.0 when not, None when the
    pair cannot be scored (see the module docstring for the rules). ``timeout`` bounds the
    math-verify step in seconds."""
    ref = answers.clean(answer)
    if not ref or not answers.balanced(ref):
        return None
    raw = answers.extract_answer(completion)
    if raw is None or not answers.balanced(raw):
        return 0.0
    pred = answers.clean(raw)
    if not pred:
        return 0.0
    choices = list(choices) if choices else None
    # Lower-case letters name options only when the question lists options.
    ref_letter = answers.as_letter(ref, allow_lower=choices is not None)
    pred_letter = answers.as_letter(pred, allow_lower=choices is not None)
    if ref_letter is not None:
        if choices is not None and ref_letter >= len(choices):
            return None
        if pred_letter is not None:
            return float(pred_letter == ref_letter)
        if choices is None:
            return 0.0
        option = answers.clean(choices[ref_letter])
        if not option:
            return None
        return _equal(pred, option, timeout)
    if choices is not None and pred_letter is not None and pred_letter < len(choices):
        option = answers.clean(choices[pred_letter])
        return _equal(option, ref, timeout) if option else 0.0
    return _equal(pred, ref, timeout)


def _equal(pred: str, ref: str, timeout: float) -> float | None:
    """Rules 3-6 on two cleaned strings."""
    if re.sub(r"\s+", "", pred) == re.sub(r"\s+", "", ref):
        return 1.0
    pred_num, ref_num = answers.as_number(pred), answers.as_number(ref)
    if pred_num is not None and ref_num is not None:
        return float(numbers_equal(pred_num, ref_num))
    pred_words, ref_words = answers.is_words(pred), answers.is_words(ref)
    if pred_words and ref_words:
        return float(" ".join(pred.lower().split()) == " ".join(ref.lower().split()))
    if (pred_words and ref_num is not None) or (ref_words and pred_num is not None):
        return 0.0
    return _math_verify(pred, ref, timeout)


def numbers_equal(pred: tuple[float, bool], ref: tuple[float, bool]) -> bool:
    """Equal within ``REL_TOL``; a side with a percent sign may also be read as value / 100."""
    (p, p_pct), (r, r_pct) = pred, ref
    pred_values = [p, p / 100] if p_pct else [p]
    ref_values = [r, r / 100] if r_pct else [r]
    return any(math.isclose(a, b, rel_tol=REL_TOL) for a in pred_values for b in ref_values)


def _math_verify(pred: str, ref: str, timeout: float) -> float | None:
    _count("math_verify_calls")
    try:
        result = call_with_timeout(MATH_VERIFY_TARGET, (ref, pred), timeout=timeout)
    except CallTimeout:
        _count("timeouts")
        return None
    except WorkerError:
        _count("worker_errors")
        return None
    return None if result is None else float(bool(result))


def math_verify_equal(gold: str, pred: str) -> bool | None:
    """math-verify's verdict on two LaTeX strings; None when ``gold`` cannot be parsed.

    Runs inside the worker process: math-verify's own ``signal.alarm`` timeouts are switched
    off (``parsing_timeout=None``, ``timeout_seconds=None``); the worker's caller enforces one.
    """
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout disabled" notice
    gold_parsed = parse(f"${gold}$", parsing_timeout=None, fallback_mode="no_fallback")
    if not gold_parsed:
        return None
    pred_parsed = parse(f"${pred}$", parsing_timeout=None)
    if not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
