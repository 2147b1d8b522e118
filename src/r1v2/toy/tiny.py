"""Tiny random "pretrained" checkpoints, for tests and the toy world.

Each builder creates a randomly initialised model from a small config (seeded), saves it with
``save_pretrained`` to a directory, and returns that directory. The directories have the same
layout as real checkpoints, so ``r1v2 assemble`` reads them through the same code path.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import InternVLVisionConfig, InternVLVisionModel, Qwen2Config, Qwen2ForCausalLM

from r1v2.model.tokenizer import CHATML_THINK_TEMPLATE
from r1v2.toy.tokenizer import word_tokenizer


def tiny_vision(
    out_dir: str | Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 1,
    num_heads: int = 2,
    intermediate_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Save a random InternViT-shaped encoder (``InternVLVisionModel``) to ``out_dir``.

    ``image_size // patch_size`` patches per side; with the default downsample ratio 0.5 an
    image becomes ``(image_size // patch_size // 2) ** 2`` tokens (4 with the defaults).
    """
    config = InternVLVisionConfig(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        image_size=image_size,
        patch_size=patch_size,
    )
    torch.manual_seed(seed)
    model = InternVLVisionModel(config).eval()
    out = Path(out_dir)
    model.save_pretrained(out)
    return out


def tiny_llm(
    vocab_words: Iterable[str],
    out_dir: str | Path,
    *,
    hidden_size: int = 32,
    num_layers: int = 1,
    num_heads: int = 2,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    extra_special_tokens: Iterable[str] = (),
    chat_template: str | None = CHATML_THINK_TEMPLATE,
    seed: int = 0,
) -> Path:
    """Save a random ``Qwen2ForCausalLM`` with a word-level tokenizer over ``vocab_words``.

    The vocabulary is exactly the tokenizer's (special tokens, role words, ``vocab_words``);
    ``<|im_end|>`` is EOS and ``<pad>`` the pad token, as in :func:`word_tokenizer`.
    """
    tokenizer = word_tokenizer(
        vocab_words, extra_special_tokens=extra_special_tokens, chat_template=chat_template
    )
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
