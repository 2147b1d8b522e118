"""Tokenizer loading and the R1-style chat template assembled models get when the LLM has
none (the word-level builder for tiny models is :mod:`r1v2.toy.tokenizer`)."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    TokenizersBackend,
)

# ChatML-style template whose generation prompt opens the reasoning block (R1 style).
CHATML_THINK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<IMG_CONTEXT>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}"
)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer saved in ``path`` exactly as it was saved.

    ``AutoTokenizer`` swaps in the model family's own class for some model types (Qwen2 among
    them), which rebuilds the pre-tokenizer and breaks word-level tokenizers. A tokenizer whose
    ``tokenizer_config.json`` names ``TokenizersBackend`` (the class transformers saves for a
    ``tokenizer.json``-only tokenizer) is therefore loaded with that class; every other one
    goes through ``AutoTokenizer``.
    """
    path = Path(path)
    config_file = path / "tokenizer_config.json"
    declared = None
    if config_file.is_file():
        declared = json.loads(config_file.read_text()).get("tokenizer_class")
    if (
        declared in ("TokenizersBackend", "PreTrainedTokenizerFast")
        and (path / "tokenizer.json").is_file()
    ):
        return TokenizersBackend.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)
