r"""Evaluation prompts: the question, its options, and the boxed-answer instruction.

Public benchmarks are asked with an instruction to put the final answer in ``\boxed{}`` (the
option's letter for multiple choice, yes/no for POPE). The instruction wording is ours: the
paper says answers are boxed but does not print its prompt. Code problems (``kind: code``,
LiveCodeBench) are asked with LiveCodeBench's own prompt (:func:`code_prompt`). Sample files
(the synthetic task, your own data) are asked exactly as stored, as training asks them.
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
# LiveCodeBench's wording (lcb_runner/prompts/code_generation.py, the generic chat template:
# PromptConstants.FORMATTING_MESSAGE_WITH_STARTER_CODE / FORMATTING_WITHOUT_STARTER_CODE).
CODE_STARTER = (
    "You will use the following starter code to write the solution to the problem and "
    "enclose your code within delimiters."
)
CODE_STDIN = (
    "Read the inputs from stdin solve the problem and write the answer to stdout (do not "
    "directly test on the sample inputs). Enclose your code within delimiters as follows."
)
CODE_ANSWER = "### Answer: (use the provided format with backticks)"
INSTRUCTIONS = (BOXED, CHOICE, YES_NO, CODE_STARTER, CODE_STDIN, CODE_ANSWER)


def options_text(choices: tuple[str, ...]) -> str:
    """``A. first\nB. second ...``"""
    return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


def code_prompt(sample: Sample) -> str:
    """LiveCodeBench's prompt: the question, then the starter code to complete (functional
    problems) or a placeholder block for a program that reads stdin; the system message of
    its chat template is left out (the policy's chat template has none)."""
    starter = sample.metadata.get("starter_code") or ""
    if starter.strip():
        fmt = f"### Format: {CODE_STARTER}\n```python\n{starter}\n```"
    else:
        fmt = f"### Format: {CODE_STDIN}\n```python\n# YOUR CODE HERE\n```"
    return f"### Question:\n{sample.question}\n\n{fmt}\n\n{CODE_ANSWER}\n\n"


def prompt_text(sample: Sample, scorer: str) -> str:
    """The question as the model sees it: question, listed options, instruction."""
    if sample.kind == "code":
        return code_prompt(sample)
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
