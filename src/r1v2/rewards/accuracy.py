r"""The accuracy reward r_rule (RECIPE §3): is the completion's final answer the reference?

``accuracy_reward(completion, answer, *, choices=None, after_think=False)`` returns 1.0
(correct), 0.0 (wrong, no answer, or an answer that cannot be checked) or None. None means
only "the *reference* cannot be scored" (empty, unbalanced braces, a letter outside the
options, something math-verify cannot parse): the sample is excluded and counted by the caller.
An answer the checker cannot parse or verify in time is wrong (0.0), never None: otherwise an
unparseable answer would beat a wrong one (RECIPE §3). How a pair is decided, first rule that
applies:

1. The reference is cleaned (``$...$``, ``\boxed{}``, ``\text{}`` unwrapped). Empty or with
   unbalanced braces: None. The completion's answer is its last ``\boxed{...}``, after the
   last ``</think>`` (see :mod:`r1v2.rewards.answers`; with ``after_think`` nothing before it
   counts and a completion without ``</think>`` has no answer). No answer, or a broken one: 0.0.
2. Multiple choice, with ``choices``: reference and answer each name an option
   (:func:`option_index`): the whole option text (``\boxed{5}`` for ``B`` when
   ``choices[1] == "5"``; options that are labels, ``(b)``, match as text), else a letter
   (``B``, ``(B)``, ``B.``, ``b``: read as a letter only when it is not itself an option's
   text), else the same plain number as exactly one option. Correct when both name the same
   option. An answer is never matched to an option through math-verify (it reads a prefix:
   ``160√{3}m`` as 160, ``1 & 3`` as 3). A reference letter outside ``choices``: None; a
   reference that is neither an option nor a letter is graded as an open answer (rules 3-6;
   an answer naming an option stands for that option's text).
   Without ``choices``, an upper-case letter reference is matched by the same letter only.
3. Identical strings after clean-up (spaces removed): 1.0.
4. Plain numbers on both sides: equal within a relative tolerance of 1e-6. Thousands
   separators are read (``1,000``), trailing units are dropped (``50 cm`` == ``50``), and a
   percent sign allows either reading (``50%`` == ``50`` == ``0.5``).
5. Plain words on both sides (``red circle``): equal ignoring case and spacing. A plain
   number against plain words: 0.0.
6. Everything else goes to math-verify (``\frac{1}{2}`` == ``0.5``, ``x = 3`` == ``3``), run in
   a worker process with a hard time limit (:mod:`r1v2.rewards.timeout`), so it works off the
   main thread. A reference math-verify cannot parse: None. An answer it cannot parse: 0.0. A
   call that runs out of time or fails: 0.0, counted in :func:`accuracy_stats`.

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
    """Counts since start-up: math-verify calls, and how many timed out or failed (-> 0.0)."""
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
    after_think: bool = False,
) -> float | None:
    """1.0 when the completion's final answer equals ``answer``, 0.0 when not (or when it cannot
    be checked), None only when ``answer`` itself cannot be scored (see the module docstring).

    ``timeout`` bounds the math-verify step in seconds. ``after_think``: only an answer after
    the last ``</think>`` counts, and a completion without one scores 0.0 (training, when the
    prompt opened a think block).
    """
    ref = answers.clean(answer)
    if not ref or not answers.balanced(ref):
        return None
    raw = answers.extract_answer(completion, after_think=after_think)
    if raw is None or not answers.balanced(raw):
        return 0.0
    pred = answers.clean(raw)
    if not pred:
        return 0.0
    if choices:
        return _choice_reward(pred, ref, [answers.clean(c) for c in choices], timeout)
    ref_letter = answers.as_letter(ref, allow_lower=False)
    if ref_letter is not None:
        return float(answers.as_letter(pred, allow_lower=False) == ref_letter)
    return _equal(pred, ref, timeout)


def _choice_reward(pred: str, ref: str, options: list[str], timeout: float) -> float | None:
    """Rule 2 on two cleaned strings and the cleaned option texts."""
    ref_index = option_index(ref, options)
    if ref_index is not None:
        return float(option_index(pred, options) == ref_index)
    if answers.as_letter(ref, allow_lower=True) is not None:
        return None  # a reference letter outside the options
    pred_index = option_index(pred, options)
    return _equal(options[pred_index] if pred_index is not None else pred, ref, timeout)


def _key(text: str) -> str:
    r"""An option text compared as a whole: no spaces, ``\dfrac`` -> ``\frac``, no ``\left``."""
    text = re.sub(r"\\[dt]frac", r"\\frac", re.sub(r"\s+", "", text))
    return re.sub(r"\\(?:left|right)(?![A-Za-z])", "", text)


def option_index(text: str, options: Sequence[str]) -> int | None:
    """The option a cleaned answer names, or None (see rule 2 of the module docstring).

    In order: the whole option text, spaces ignored (exactly, else ignoring case when only one
    option matches); a letter within range; the same plain number as exactly one option (a unit
    on one side only is fine, two different units are not). Our choice: nothing looser (no
    prefix, substring, similarity or math-verify match of an option text).
    """
    key, keys = _key(text), [_key(o) for o in options]
    if key in keys:
        return keys.index(key)
    folded = [i for i, k in enumerate(keys) if k.casefold() == key.casefold()]
    if len(folded) == 1:
        return folded[0]
    letter = answers.as_letter(text, allow_lower=True)
    if letter is not None:
        if letter >= len(options):
            return None
        return letter if _text_agrees(text, letter, options) else None
    same = [i for i, o in enumerate(options) if _same_number(text, o)]
    return same[0] if len(same) == 1 else None


def _text_agrees(text: str, letter: int, options: Sequence[str]) -> bool:
    """Whether the option text after a letter (``B (70°)``) does not name another option: a
    letter with another option's text (``B (80°)`` when 80° is C) names none. Text that names
    no option (an explanation) leaves the letter as it is."""
    parts = answers.letter_and_text(text)
    if parts is None or not parts[1]:
        return True
    rest, keys = _key(parts[1]), [_key(o) for o in options]
    named = [i for i, k in enumerate(keys) if k.casefold() == rest.casefold()]
    named = named or [i for i, o in enumerate(options) if _same_number(parts[1], o)]
    return not named or letter in named


def _same_number(a: str, b: str) -> bool:
    pa, pb = answers.number_unit(a), answers.number_unit(b)
    if pa is None or pb is None or (pa[2] and pb[2] and pa[2] != pb[2]):
        return False
    return numbers_equal(pa[:2], pb[:2])


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
    """math-verify's verdict: None when it cannot parse ``ref``; 0.0 when it times out or fails
    (the answer could not be checked: wrong, and counted)."""
    _count("math_verify_calls")
    try:
        result = call_with_timeout(MATH_VERIFY_TARGET, (ref, pred), timeout=timeout)
    except CallTimeout:
        _count("timeouts")
        return 0.0
    except WorkerError:
        _count("worker_errors")
        return 0.0
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
