r"""Reading answers out of text: boxed extraction, clean-up, letters, numbers, eval fallback.

Pure string functions shared by the accuracy and format rewards and the eval scorers. The rules:

- The final answer is the content of the last top-level ``\boxed{...}`` (braces matched,
  ``\{`` and ``\}`` escaped braces skipped). Two boxed answers: the last one counts. A last
  ``\boxed{`` whose braces never close means no answer (an earlier boxed answer is not used:
  the model's final answer is broken).
- Where the answer is looked for (:func:`answer_region`): with ``after_think=True`` (training,
  when the prompt opened a think block) only after the last ``</think>``, and a completion
  without ``</think>`` has no answer (a boxed draft in the reasoning, or a completion cut off
  before it closed its reasoning, earns nothing). With ``after_think=False`` (eval of other
  systems' responses, which may have no think block): after the last ``</think>`` first; only
  when that part holds no ``\boxed`` is the whole completion searched.
- :func:`fallback_answer` reads an un-boxed answer ("the answer is X", a final letter or
  number). It is for evaluating other systems only, never for training rewards.
"""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\boxed\s*\{")
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def _braces(text: str, start: int = 0):
    r"""``(index, +1 or -1)`` for each unescaped ``{`` / ``}`` from ``start``; ``\x`` is skipped."""
    i = start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c in "{}":
            yield i, 1 if c == "{" else -1
        i += 1


def matching_brace(text: str, open_index: int) -> int | None:
    r"""Index of the ``}`` closing the ``{`` at ``open_index``; None when it never closes.

    Backslash-escaped characters (``\{``, ``\}``, ``\\``) are skipped.
    """
    depth = 0
    for i, step in _braces(text, open_index):
        depth += step
        if depth == 0:
            return i
    return None


def boxed_contents(text: str) -> list[str | None]:
    r"""Contents of each top-level ``\boxed{...}`` in order; None for one that never closes.

    A ``\boxed`` nested inside another belongs to the outer one. Scanning stops at an
    unclosed one (it swallows the rest of the text).
    """
    out: list[str | None] = []
    pos = 0
    while (m := _BOXED.search(text, pos)) is not None:
        open_index = m.end() - 1
        close = matching_brace(text, open_index)
        if close is None:
            out.append(None)
            break
        out.append(text[open_index + 1 : close])
        pos = close + 1
    return out


def answer_region(completion: str, *, after_think: bool = False) -> str | None:
    r"""The part of ``completion`` that holds its final answer (see the module rules); None
    when ``after_think`` and the completion never closed its reasoning."""
    if THINK_CLOSE not in completion:
        return None if after_think else completion
    after = completion.rsplit(THINK_CLOSE, 1)[1]
    if after_think or _BOXED.search(after):
        return after
    return completion


def extract_answer(completion: str, *, after_think: bool = False) -> str | None:
    r"""The completion's final boxed answer (stripped), or None when it has none or it is broken.

    ``after_think``: only an answer after the last ``</think>`` counts (see the module rules).
    """
    region = answer_region(completion, after_think=after_think)
    boxes = boxed_contents(region) if region is not None else []
    if not boxes or boxes[-1] is None:
        return None
    return boxes[-1].strip()


def balanced(text: str) -> bool:
    """True when every unescaped ``{`` in ``text`` has its ``}`` and no ``}`` is unmatched."""
    depth = 0
    for _, step in _braces(text):
        depth += step
        if depth < 0:
            return False
    return depth == 0


_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|rm)\s*\{([^{}]*)\}")
_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def clean(text: str) -> str:
    r"""Strip math delimiters, ``\text{}``-style wrappers, LaTeX spacing and a trailing period.

    ``"$\text{(B)}.$"`` -> ``"(B)"``; ``"1{,}000\,\text{cm}"`` -> ``"1,000 cm"``.
    """
    s = text.strip()
    for left, right in _DELIMS:
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            s = s[len(left) : -len(right)].strip()
            break
    m = _BOXED.match(s)
    if m and matching_brace(s, m.end() - 1) == len(s) - 1:
        s = s[m.end() : -1].strip()
    prev = None
    while prev != s:
        prev, s = s, _TEXT_WRAPPERS.sub(r"\1", s)
    s = s.replace("{,}", ",").replace("\\%", "%").replace("\\$", "").replace("\u2212", "-")
    s = re.sub(r"(?<=\d)\\[,!](?=\d)", "", s)  # 1\,000 -> 1000 (thin space as separator)
    s = re.sub(r"\\[,;:! ]|~", " ", s)
    s = re.sub(r"\s+", " ", s).strip()
    return s.rstrip(".").strip()


# re.A: with re.I alone, [A-Za-z] also matches the Kelvin sign and the long s, whose upper()
# is no letter A-Z (the fuzzing found "\u212a" read as option 8425).
_LETTER_BARE = re.compile(
    r"(?:(?:option|choice|answer)\s*:?\s*)?\(?([A-Za-z])\)?[.:]?", re.I | re.A
)
_LETTER_TEXT = re.compile(
    r"(?:(?:option|choice|answer)\s*:?\s*)?(?:\(([A-Za-z])\)|([A-Za-z])[.:)])\s*\S.*",
    re.I | re.S | re.A,
)
# A letter with its option text after it in parentheses: "B (70°)", "option A (6cm)".
_LETTER_PAREN = re.compile(
    r"(?:(?:option|choice|answer)\s*:?\s*)?([A-Za-z])\s*\((.+)\)", re.I | re.S | re.A
)


def letter_and_text(text: str) -> tuple[str, str] | None:
    """``(letter, text)`` when a cleaned answer is a letter followed by text: ``B (70°)``,
    ``B. 70°``, ``B: 70°``, ``(B) 70°``; None otherwise."""
    m = _LETTER_PAREN.fullmatch(text)
    if m:
        return m.group(1), m.group(2).strip()
    m = _LETTER_TEXT.fullmatch(text)
    if m:
        letter = next(g for g in m.groups() if g)
        rest = re.sub(
            r"^(?:(?:option|choice|answer)\s*:?\s*)?\(?[A-Za-z][.:)]?\)?", "", text, flags=re.I
        )
        return letter, rest.strip()
    return None


def as_letter(text: str, *, allow_lower: bool) -> int | None:
    """The option index named by a multiple-choice answer, or None when it names none.

    Accepted (after :func:`clean`): ``B``, ``(B)``, ``B.``, ``B)``, ``B:``, ``Option B``, and a
    letter followed by its option text (``(B) 5``, ``B. 5``, ``B: 5``, ``B (5)``). ``A`` is 0. Lower-case letters
    count only with ``allow_lower`` (a lone ``b`` is usually a variable unless the question
    lists options).
    """
    m = (
        _LETTER_BARE.fullmatch(text)
        or _LETTER_TEXT.fullmatch(text)
        or _LETTER_PAREN.fullmatch(text)
    )
    if m is None:
        return None
    letter = next(g for g in m.groups() if g)
    if letter.islower() and not allow_lower:
        return None
    return ord(letter.upper()) - ord("A")


_NUMBER = re.compile(
    r"(?P<num>[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][+-]?\d+)?|[+-]?\.\d+(?:[eE][+-]?\d+)?)"
    r"\s*(?P<pct>%)?\s*(?P<unit>.*)",
    re.S,
)
_DEGREE = re.compile(r"(?:\^\s*\{?\s*\\circ\s*\}?|\\circ|°|degrees?)")
_UNIT = re.compile(
    r"[A-Za-z]{2,}(?:\^\{?\d\}?|[²³])?(?:\s*(?:/|\s)\s*[A-Za-z]{1,}(?:\^\{?\d\}?|[²³])?){0,2}"
)
# Words that make the trailing text mathematics, not a unit ("2 pi" is not 2).
_MATH_WORDS = frozenset(
    "pi sqrt log ln lg sin cos tan cot sec csc exp arcsin arccos arctan sinh cosh tanh mod "
    "and or to times cdot over plus minus infty inf".split()
)


def as_number(text: str) -> tuple[float, bool] | None:
    """``(value, had_percent)`` for a plain number, or None when ``text`` is something else.

    Plain means (after :func:`clean`): a decimal number, optionally with thousands
    separators (``1,000``), an exponent (``1e-3``), a percent sign, and a trailing unit: a
    degree sign or one to three words of two or more letters (``cm``, ``km/h``, ``square
    meters``) that are not mathematics (``pi``, ``sqrt``...). Units are dropped, not converted
    (``50 cm`` == ``50 m``); one-letter units (``5 m``) are not recognised here (a variable?)
    and are left to math-verify.
    """
    parsed = number_unit(text)
    return None if parsed is None else parsed[:2]


def number_unit(text: str) -> tuple[float, bool, str] | None:
    """``(value, had_percent, unit)`` for a plain number (see :func:`as_number`), else None.

    ``unit`` is ``""`` when there is none, ``"°"`` for any degree mark, else the unit's words
    lower-cased without spaces (``"km/h"``, ``"squaremeters"``).
    """
    m = _NUMBER.fullmatch(text)
    if m is None:
        return None
    unit = m["unit"].strip()
    if unit and _DEGREE.fullmatch(unit):
        unit = "°"
    elif unit:
        if not _UNIT.fullmatch(unit):
            return None
        if any(w.lower() in _MATH_WORDS for w in re.findall(r"[A-Za-z]+", unit)):
            return None
        unit = re.sub(r"\s+", "", unit).lower()
    return float(m["num"].replace(",", "")), m["pct"] is not None, unit


_WORDS = re.compile(r"[A-Za-z][A-Za-z' -]*")


def is_words(text: str) -> bool:
    """True for plain words (letters, spaces, hyphens, apostrophes): ``red circle``, ``yes``."""
    return _WORDS.fullmatch(text) is not None


# ---- un-boxed answers (eval of other systems only) ----------------------------------------

_ANSWER_PHRASE = re.compile(r"\b(?:answer|correct\s+(?:option|choice))\s*(?:is\b|:)\s*:?", re.I)
_SENTENCE_END = re.compile(r"\.\s+(?=[A-Z])")  # "5. Because ..." -> "5"
_FINAL_LETTER = re.compile(r"(?:^|[\s:,])\(?([A-Z])\)?[.)]?$")
_LAST_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?")
_MARKDOWN = "*_#` "


def fallback_answer(response: str, *, n_choices: int = 0) -> str | None:
    r"""A rule-based final answer for a response without ``\boxed``; None when none is found.

    Our rules (the paper only says a fallback exists), first that finds something, in the text
    after the last ``</think>`` (or all of it when there is none):

    1. the last "answer is X", "Answer: X", "final answer: X" or "correct option is X": X up to
       the end of its line (the next line when it ends there), cut at a sentence end
       (". " before a capital), markdown emphasis stripped;
    2. multiple choice (``n_choices`` > 0): a final option letter, the last line ending in a
       capital letter in range (``B``, ``(B)``, ``so it is C.``);
    3. the last number (``-3``, ``1,000``, ``2.5``, ``40%``).

    Only for evaluating other systems' responses: training rewards never use it.
    """
    text = response.rsplit(THINK_CLOSE, 1)[-1]
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if phrases:
        rest = text[phrases[-1].end() :].splitlines()
        line = next((x.strip() for x in rest if x.strip(_MARKDOWN)), "")
        answer = _SENTENCE_END.split(line, maxsplit=1)[0].strip(_MARKDOWN).rstrip(".")
        answer = answer.strip(_MARKDOWN)
        if answer and balanced(answer):
            return answer
    lines = [line.strip(_MARKDOWN) for line in text.splitlines() if line.strip(_MARKDOWN)]
    if n_choices and lines:
        m = _FINAL_LETTER.search(lines[-1])
        if m and ord(m.group(1)) - ord("A") < n_choices:
            return m.group(1)
    numbers = _LAST_NUMBER.findall(text)
    return numbers[-1] if numbers else None
