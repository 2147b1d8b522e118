"""Reward model adapters on tiny random checkpoints, against naive single-sample forwards."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification

from r1v2.errors import R1V2Error
from r1v2.model.reward_model import (
    TransformersRewardModel,
    ValueHeadModel,
    encode,
    last_token_index,
    load_value_head,
    render,
    save_value_head,
)
from r1v2.rewards import RewardModel, RMInput
from r1v2.toy.tokenizer import word_tokenizer

WORDS = (
    "how many red circles blue squares ? i see 3 4 . + 1 = </think> \\boxed{3} \\boxed{4}".split()
)
SAMPLES = [
    RMInput("how many red circles ?", "i see 3 red circles . </think> \\boxed{3}"),
    RMInput("how many ?", "i see 4 </think> \\boxed{4}"),
    RMInput("how many blue squares ? how many red circles ?", "3 + 1 = 4 . </think> \\boxed{4}"),
]


def _text(sample: RMInput) -> str:
    """The expected rendering under the ChatML-think template, written out by hand."""
    return (
        f"<|im_start|>user\n{sample.question}<|im_end|>\n<|im_start|>assistant\n<think>\n"
        f"{sample.completion}<|im_end|>"
    )


def _config(tok, **kw) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        **kw,
    )


def _ids(tok, sample: RMInput) -> torch.Tensor:
    return torch.tensor([tok(_text(sample), add_special_tokens=False)["input_ids"]])  # [1, T]


def test_render_templates():
    tok = word_tokenizer(WORDS)
    s = SAMPLES[1]
    assert render(tok, s) == _text(s)
    assert render(tok, s, "conversation") == (
        "<|im_start|>user\nhow many ?<|im_end|>\n<|im_start|>assistant\n"
        "i see 4 </think> \\boxed{4}<|im_end|>\n"
    )


def test_last_token_index():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 0], [1, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 3, 0]


def test_sequence_classifier_matches_naive_forward(tmp_path):
    tok = word_tokenizer(WORDS)
    model = Qwen2ForSequenceClassification(_config(tok, num_labels=1)).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)

    rm = TransformersRewardModel.from_pretrained(tmp_path, batch_size=2)  # padding in batch 1
    assert isinstance(rm, RewardModel)
    scores = rm.score(SAMPLES)

    with torch.no_grad():
        naive = [model(_ids(tok, s)).logits[0, 0].item() for s in SAMPLES]
    assert scores == pytest.approx(naive, abs=1e-5)
    assert len(set(round(x, 4) for x in naive)) == 3  # the samples really score differently


def test_value_head_matches_naive_forward(tmp_path):
    tok = word_tokenizer(WORDS)
    base = Qwen2ForCausalLM(_config(tok)).eval()
    model = ValueHeadModel(base)
    with torch.no_grad():
        model.head.bias.fill_(0.25)
    save_value_head(tmp_path, model, tok)

    meta = json.loads((tmp_path / "value_head.json").read_text())
    assert meta == {
        "format": "r1v2-value-head",
        "version": 1,
        "base_class": "Qwen2ForCausalLM",
        "hidden_size": 32,
        "pooling": "last",
    }
    rm = TransformersRewardModel.from_pretrained(tmp_path, batch_size=3)
    scores = rm.score(SAMPLES)

    w, b = model.head.weight[0], model.head.bias[0]  # [H], []
    with torch.no_grad():
        naive = []
        for s in SAMPLES:
            hidden = base.model(_ids(tok, s)).last_hidden_state  # [1, T, H]
            naive.append((hidden[0, -1] @ w + b).item())
    assert scores == pytest.approx(naive, abs=1e-5)
    assert len(set(round(x, 4) for x in naive)) == 3


def test_logprob_head_is_scaled_mean_completion_logprob(tmp_path):
    """pooling='logprob': score = w * mean log p(completion tokens and EOS | prompt) + b, against
    a naive per-sample forward with the prompt length found by tokenising the prompt alone."""
    tok = word_tokenizer(WORDS)
    base = Qwen2ForCausalLM(_config(tok)).eval()
    model = ValueHeadModel(base, pooling="logprob")
    assert (model.head.weight.item(), model.head.bias.item()) == (1.0, 0.0)  # starts as the mean
    with torch.no_grad():
        model.head.weight.fill_(2.0)
        model.head.bias.fill_(0.5)
    save_value_head(tmp_path, model, tok)
    meta = json.loads((tmp_path / "value_head.json").read_text())
    assert (meta["pooling"], meta["hidden_size"]) == ("logprob", 1)
    rm = TransformersRewardModel.from_pretrained(tmp_path, batch_size=2)
    assert rm.model.pooling == "logprob"
    scores = rm.score(SAMPLES)

    naive = []
    with torch.no_grad():
        for s in SAMPLES:
            ids = _ids(tok, s)[0]  # [T]
            prompt = _text(s).removesuffix(s.completion + "<|im_end|>")
            start = len(tok(prompt, add_special_tokens=False)["input_ids"])
            logp = torch.log_softmax(base(ids[None]).logits[0], -1)  # [T, V]
            per_token = [logp[t - 1, ids[t]].item() for t in range(start, len(ids))]
            assert len(per_token) == len(s.completion.split()) + 1  # words + EOS
            naive.append(2.0 * sum(per_token) / len(per_token) + 0.5)
    assert scores == pytest.approx(naive, abs=1e-5)
    assert len(set(round(x, 4) for x in naive)) == 3


def test_logprob_head_needs_a_completion_mask():
    tok = word_tokenizer(WORDS)
    model = ValueHeadModel(Qwen2ForCausalLM(_config(tok)), pooling="logprob")
    ids = _ids(tok, SAMPLES[0])
    with pytest.raises(ValueError, match="completion_mask"):
        model(ids, torch.ones_like(ids))
    with pytest.raises(ValueError, match="pooling"):
        ValueHeadModel(Qwen2ForCausalLM(_config(tok)), pooling="max")


def test_value_head_gradients_reach_head_and_base():
    """The trainer fine-tunes through ValueHeadModel: a loss on its scores reaches both parts."""
    tok = word_tokenizer(WORDS)
    model = ValueHeadModel(Qwen2ForCausalLM(_config(tok)))
    ids = _ids(tok, SAMPLES[0])
    model(ids, torch.ones_like(ids)).sum().backward()
    assert model.head.weight.grad.abs().sum() > 0
    assert model.base.model.embed_tokens.weight.grad.abs().sum() > 0


def test_vlm_value_head_matches_naive_forward(tmp_path):
    from transformers import AutoProcessor, InternVLForConditionalGeneration

    from r1v2.model.assemble import assemble
    from r1v2.toy.tiny import tiny_llm, tiny_vision

    vision = tiny_vision(tmp_path / "vision")
    llm = tiny_llm(WORDS, tmp_path / "llm")
    assembled = assemble(vision, llm, tmp_path / "vlm", verbose=False)
    base = InternVLForConditionalGeneration.from_pretrained(assembled).eval()
    processor = AutoProcessor.from_pretrained(assembled)
    model = ValueHeadModel(base)
    save_value_head(tmp_path / "rm", model, processor)

    red = Image.new("RGB", (32, 32), (220, 20, 20))
    blue = Image.new("RGB", (40, 24), (20, 20, 220))
    samples = [
        RMInput("how many red circles ?", "i see 3 </think> \\boxed{3}", (red,)),
        RMInput("how many ?", "i see 4 </think> \\boxed{4}", ()),
        RMInput("how many blue squares ?", "i see 4 </think> \\boxed{4}", (blue,)),
    ]
    rm = TransformersRewardModel.from_pretrained(tmp_path / "rm", batch_size=3)
    scores = rm.score(samples)

    tok = processor.tokenizer
    w, b = model.head.weight[0], model.head.bias[0]  # [H], []
    naive = []
    with torch.no_grad():
        for s in samples:
            content = [{"type": "image"} for _ in s.images] + [{"type": "text", "text": s.question}]
            prompt = tok.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
            text = prompt + s.completion + tok.eos_token
            if s.images:
                inputs = processor(text=[text], images=list(s.images), return_tensors="pt")
                # The processor expanded the image into its tokens.
                assert (inputs["input_ids"] == base.config.image_token_id).sum() > 1
            else:
                inputs = tok([text], add_special_tokens=False, return_tensors="pt")
            hidden = base.model(**inputs).last_hidden_state  # [1, T, H]
            naive.append((hidden[0, -1] @ w + b).item())
    assert scores == pytest.approx(naive, abs=1e-5)
    assert scores[0] != pytest.approx(scores[2], abs=1e-4)

    # The completion mask of an image sample covers the completion and EOS only, after the
    # expanded image tokens.
    batch = encode(processor, samples, completion_mask=True)
    mask, ids = batch["completion_mask"], batch["input_ids"]  # [3, T]
    for row, s in enumerate(samples):
        assert mask[row].sum().item() == len(s.completion.split()) + 1
        first = int(mask[row].nonzero()[0])
        assert tok.decode(ids[row, first : first + 2]).split() == s.completion.split()[:2]


def test_load_errors(tmp_path):
    tok = word_tokenizer(WORDS)
    with pytest.raises(R1V2Error, match="config.json"):
        TransformersRewardModel.from_pretrained(tmp_path / "missing")

    plain = tmp_path / "plain"
    Qwen2ForCausalLM(_config(tok)).save_pretrained(plain)
    tok.save_pretrained(plain)
    with pytest.raises(R1V2Error, match="not a reward model"):
        TransformersRewardModel.from_pretrained(plain)

    two = tmp_path / "two_labels"
    Qwen2ForSequenceClassification(_config(tok, num_labels=2)).save_pretrained(two)
    tok.save_pretrained(two)
    with pytest.raises(R1V2Error, match="num_labels"):
        TransformersRewardModel.from_pretrained(two)

    head = tmp_path / "bad_head"
    save_value_head(head, ValueHeadModel(Qwen2ForCausalLM(_config(tok))), tok)
    from safetensors.torch import save_file

    save_file(
        {"weight": torch.zeros(1, 7), "bias": torch.zeros(1)}, str(head / "value_head.safetensors")
    )
    with pytest.raises(R1V2Error, match=r"value_head.safetensors: expected 'weight' \[1, 32\]"):
        load_value_head(head)

    meta = json.loads((head / "value_head.json").read_text())
    (head / "value_head.json").write_text(json.dumps({**meta, "base_class": "NoSuchModel"}))
    with pytest.raises(R1V2Error, match="base_class"):
        load_value_head(head)
    (head / "value_head.json").write_text(json.dumps({**meta, "pooling": "max"}))
    with pytest.raises(R1V2Error, match="value_head.json: field 'pooling'"):
        load_value_head(head)


def test_text_model_rejects_images(tmp_path):
    tok = word_tokenizer(WORDS)
    Qwen2ForSequenceClassification(_config(tok, num_labels=1)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    rm = TransformersRewardModel.from_pretrained(tmp_path)
    with pytest.raises(R1V2Error, match="text-only"):
        rm.score([RMInput("q", "c", (Image.new("RGB", (8, 8)),))])


def test_dtype_names_and_bad_images(tmp_path):
    """dtype by name (one map, r1v2.model.dtypes): bfloat16 loads in bfloat16, an unknown name
    is refused with the valid ones; images open through r1v2.data.images.open_image."""
    from r1v2.data.images import ImageError

    tok = word_tokenizer(WORDS)
    Qwen2ForSequenceClassification(_config(tok, num_labels=1)).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    rm = TransformersRewardModel.from_pretrained(tmp_path / "rm", dtype="bfloat16")
    assert rm.model.dtype == torch.bfloat16
    with pytest.raises(
        R1V2Error, match=r"unknown dtype 'half'; use one of float32, bfloat16, float16"
    ):
        TransformersRewardModel.from_pretrained(tmp_path / "rm", dtype="half")
    with pytest.raises(ImageError, match=r"file not found: .*nope\.png"):
        encode(tok, [RMInput("q", "c", (tmp_path / "nope.png",))])
    with pytest.raises(R1V2Error, match=r"cannot use int as an image"):
        encode(tok, [RMInput("q", "c", (3,))])
