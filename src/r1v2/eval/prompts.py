r"""Evaluation prompts: the question, its options, and the boxed-answer instruction.

Public benchmarks are asked with an instruction to put the final answer in ``\boxed{}`` (the
option's letter for multiple choice, yes/no for POPE). The instruction wording is ours: the
paper says answers are boxed but does not print its prompt. Sample files (the synthetic task,
your own data) are asked exactly as stored, as training asks them.
"""

from __future__ import annotations

import dataclasses

from r1v2.data.schema import Sample
from r1v2.eval.benchmarks import LETTERS

BOXED = "Think step by step, then put your final answer within \\boxed{}."
CHOICE = (
    "Think step by step, then answer with the letter of the correct option "
    "within \\boxed{} (for example \\boxed{A})."
)
YES_NO = "Think step by step, then answer yes or no within \\boxed{}."
INSTRUCTIONS = (BOXED, CHOICE, YES_NO)


def options_text(choices: tuple[str, ...]) -> str:
    """``A. first\nB. second ...``"""
    return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


def prompt_text(sample: Sample, scorer: str) -> str:
    """The question as the model sees it: question, listed options, instruction."""
    parts = [sample.question.strip()]
    if sample.choices and not sample.metadata.get("choices_in_image"):
        parts.append("Options:\n" + options_text(sample.choices))
    if scorer == "yesno":
        parts.append(YES_NO)
    elif sample.choices:
        parts.append(CHOICE)
    else:
        parts.append(BOXED)
    return "\n\n".join(parts)


def prompt_sample(sample: Sample, scorer: str, instruct: bool) -> Sample:
    """The Sample handed to the policy: the full prompt as its question, no separate choices.

    With ``instruct=False`` the sample is returned unchanged.
    """
    if not instruct:
        return sample
    return dataclasses.replace(sample, question=prompt_text(sample, scorer), choices=None)


def judge_question(sample: Sample) -> str:
    """The question for the judge: the question with its options (no instruction)."""
    if sample.choices:
        return sample.question.strip() + "\n\nOptions:\n" + options_text(sample.choices)
    return sample.question.strip()


def judge_reference(sample: Sample) -> str:
    """The reference for the judge: a letter with its option text; alternatives joined by "or"."""
    if sample.choices:
        index = (
            LETTERS.find(sample.answer.strip().upper()) if len(sample.answer.strip()) == 1 else -1
        )
        if 0 <= index < len(sample.choices):
            return f"{sample.answer.strip().upper()}. {sample.choices[index]}"
        return sample.answer
    answers = sample.metadata.get("answers")
    if answers and not sample.metadata.get("multiple"):
        return " or ".join(str(a) for a in answers)
    return sample.answer
