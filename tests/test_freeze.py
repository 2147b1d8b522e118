"""Freezing: each mode trains exactly its parts; LoRA trains only its low-rank updates."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from r1v2.errors import R1V2Error
from r1v2.model.assemble import assemble
from r1v2.model.freeze import LoraSettings, merge_lora, set_trainable
from r1v2.toy.tiny import tiny_llm, tiny_vision

WORDS = "how many red blue circles are there ? 0 1 2 3 <think> </think>".split()

# Hand counts for the tiny parts below (hidden 32, 1 layer each, 32 px images, patch 8):
# vision: cls 32 + patch conv 3*8*8*32+32 + positions 17*32 = 6752; layer: q,k,v 3*32*32,
#   out 32*32+32, lambdas 2*32, 2 LayerNorms 2*64, fc1 32*128+128, fc2 128*32+32 = 12672.
VISION = 6752 + 12672  # 19424
# adapter: LayerNorm 2*128 + Linear 128->32 (4128) + Linear 32->32 (1056).
ADAPTER = 256 + 4128 + 1056  # 5440
# LLM with 25 tokens: embeddings 25*32, q,k,v 3*(32*32+32), o 32*32, MLP 3*32*128,
#   2 RMSNorms 2*32, final norm 32, untied LM head 25*32.
LLM = 800 + 3 * 1056 + 1024 + 12288 + 64 + 32 + 800  # 18176


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("freeze")
    vision = tiny_vision(root / "vision", seed=1)
    llm = tiny_llm(WORDS, root / "llm", seed=2)
    return assemble(vision, llm, root / "out", verbose=False), llm


def load(path):
    return AutoModelForImageTextToText.from_pretrained(path).train()


def batch(path):
    processor = AutoProcessor.from_pretrained(path)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "how many red ?"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    text += "2 </think> 2"
    return processor(text=[text], images=[img], return_tensors="pt")


def part_of(name: str) -> str:
    if name.startswith("model.vision_tower."):
        return "vision"
    if name.startswith("model.multi_modal_projector."):
        return "adapter"
    assert name.startswith(("model.language_model.", "lm_head.")), name
    return "llm"


def train_steps(model, inputs, steps=2):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    for _ in range(steps):
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize(
    "mode, parts",
    [
        ("adapter", {"adapter"}),
        ("llm+adapter", {"llm", "adapter"}),
        ("adapter+vision", {"adapter", "vision"}),
        ("all", {"vision", "adapter", "llm"}),
    ],
)
def test_mode_trains_exactly_its_parts(checkpoint, mode, parts):
    """The mode's parts get the gradients they get when everything trains (its naive twin),
    the other parts none; two AdamW steps then move exactly the mode's parameters."""
    model = load(checkpoint[0])
    report = set_trainable(model, mode)
    sizes = {"vision": VISION, "adapter": ADAPTER, "llm": LLM}
    assert report.parts == {k: (n if k in parts else 0, n) for k, n in sizes.items()}
    assert report.total == VISION + ADAPTER + LLM
    assert report.share == pytest.approx(sum(sizes[p] for p in parts) / report.total)
    inputs = batch(checkpoint[0])
    twin = load(checkpoint[0])
    for m in (model, twin):
        m(**inputs, labels=inputs["input_ids"]).loss.backward()
    want = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        if part_of(name) in parts:
            torch.testing.assert_close(p.grad, want[name].grad, rtol=1e-5, atol=1e-7)
        else:
            assert p.grad is None, name
    model.zero_grad(set_to_none=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, inputs)
    for name, p in model.named_parameters():
        if part_of(name) in parts:
            assert p.requires_grad and not torch.equal(p, before[name]), f"{name} did not train"
        else:
            assert not p.requires_grad and torch.equal(p, before[name]), f"{name} changed"


def test_lora_trains_only_lora_and_adapter(checkpoint):
    """LoRA r=2 on q_proj (32->32) and v_proj (32->32): 2 * (2*32 + 32*2) = 256 parameters."""
    model = load(checkpoint[0])
    settings = LoraSettings(r=2, alpha=4, target_modules=["q_proj", "v_proj"])
    report = set_trainable(model, "llm+adapter", lora=settings)
    assert report.parts["llm"] == (256, LLM + 256)
    assert report.parts["adapter"] == (ADAPTER, ADAPTER)
    assert report.parts["vision"] == (0, VISION)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, batch(checkpoint[0]))
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        if "lora_" in name or part_of(name) == "adapter":
            assert changed, f"{name} did not train"
        else:
            assert not changed, f"{name} changed"


def test_merge_lora_keeps_the_function_and_the_layout(checkpoint):
    """After training, q_proj's LoRA update is non-zero; merging folds it in by hand's rule,
    W' = W + (alpha / r) * B @ A = W + 2 * B @ A, keeps the logits and restores the
    checkpoint's parameter names."""
    model = load(checkpoint[0])
    keys = set(model.state_dict())
    set_trainable(model, "all", lora=LoraSettings(r=2, alpha=4, target_modules=["q_proj"]))
    train_steps(model, batch(checkpoint[0]), steps=2)  # B moves off zero: the update is non-zero
    model.eval()
    q = model.get_submodule("model.language_model.layers.0.self_attn.q_proj")
    a, b = q.lora_A["default"].weight.detach(), q.lora_B["default"].weight.detach()
    assert b.abs().max() > 0
    want = q.base_layer.weight.detach() + 2.0 * b @ a  # [32, 32]
    inputs = batch(checkpoint[0])
    with torch.no_grad():
        expected = model(**inputs).logits
        merge_lora(model)
        got = model(**inputs).logits
    merged = model.get_submodule("model.language_model.layers.0.self_attn.q_proj")
    assert type(merged) is torch.nn.Linear
    torch.testing.assert_close(merged.weight, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert set(model.state_dict()) == keys


def test_text_only_model_trains_all(checkpoint):
    lm = AutoModelForCausalLM.from_pretrained(checkpoint[1])
    report = set_trainable(lm, "all")
    n = sum(p.numel() for p in lm.parameters())
    assert report.parts == {"llm": (n, n)} and report.share == 1.0
    assert all(p.requires_grad for p in lm.parameters())


def test_text_only_model_default_trains_the_llm_with_a_note(checkpoint, capsys):
    """The default trainable=adapter on a plain causal LM trains it whole (one note line),
    and with LoRA only its LoRA layers; asking for a vision encoder it lacks is refused."""
    lm = AutoModelForCausalLM.from_pretrained(checkpoint[1])
    n = sum(p.numel() for p in lm.parameters())
    capsys.readouterr()
    assert set_trainable(lm, "adapter").parts == {"llm": (n, n)}
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and "text-only LM has no adapter" in note[0]
    report = set_trainable(lm, "llm+adapter", lora=LoraSettings(r=2, alpha=4))
    assert all(p.requires_grad == ("lora_" in name) for name, p in lm.named_parameters())
    assert 0 < report.trainable < report.total
    with pytest.raises(R1V2Error, match="needs part\\(s\\) adapter, vision"):
        set_trainable(lm, "adapter+vision")


def test_bad_requests(checkpoint, monkeypatch):
    model = load(checkpoint[0])
    with pytest.raises(R1V2Error, match="'vision' is not one of adapter"):
        set_trainable(model, "vision")
    with pytest.raises(R1V2Error, match="LoRA trains the LLM"):
        set_trainable(model, "adapter", lora=LoraSettings())
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    with pytest.raises(R1V2Error, match=r"pip install 'r1v2\[peft\]'"):
        set_trainable(model, "all", lora=LoraSettings())


def test_report_text(checkpoint):
    report = set_trainable(load(checkpoint[0]), "adapter")
    assert str(report).startswith("trainable parameters: 5,440 of 43,040 (12.64%)")
