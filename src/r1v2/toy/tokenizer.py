"""Word-level tokenizers built offline, for tiny models (tests, the toy world).

Real checkpoints bring their own tokenizer; these exist because nothing can be downloaded
and a tiny LM over a closed vocabulary learns fastest with one token per word.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from r1v2.model.tokenizer import CHATML_THINK_TEMPLATE

SPECIAL_TOKENS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]


def word_tokenizer(
    words: Iterable[str],
    *,
    extra_special_tokens: Iterable[str] = (),
    chat_template: str | None = CHATML_THINK_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """A whitespace/punctuation word-level tokenizer over ``words``.

    Ids: the special tokens first (``<pad>``=0, ``<unk>``=1, ``<|im_start|>``, ``<|im_end|>``,
    then ``extra_special_tokens``), then ``system``, ``user``, ``assistant`` and ``words`` in first-seen order. ``<|im_end|>`` is EOS.
    Decoding joins tokens with single spaces.
    """
    specials = list(dict.fromkeys([*SPECIAL_TOKENS, *extra_special_tokens]))
    vocab: dict[str, int] = {}
    for tok in [*specials, "system", "user", "assistant", *words]:
        if tok not in vocab:
            vocab[tok] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    # Any whitespace separates words (chat-template newlines included); specials split out.
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        bos_token=None,
    )
    if specials[4:]:
        tok.add_special_tokens({"additional_special_tokens": specials[4:]})
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok
