"""`r1v2 assemble`: vision encoder + fresh adapter + LLM -> one transformers checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    InternVLProcessor,
    LlamaConfig,
    LlamaForCausalLM,
)

from r1v2.cli import main
from r1v2.config import ConfigError
from r1v2.errors import R1V2Error
from r1v2.model.assemble import (
    CheckpointError,
    MissingTokenizerError,
    UnsupportedModelError,
    assemble,
    build_assembled,
)
from r1v2.model.tokenizer import load_tokenizer
from r1v2.toy.tiny import tiny_llm, tiny_vision
from r1v2.toy.tokenizer import word_tokenizer

WORDS = "how many red blue circles are there ? 0 1 2 3 <think> </think>".split()


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    vision = tiny_vision(root / "vision", image_size=32, patch_size=8, hidden_size=32, seed=1)
    llm = tiny_llm(WORDS, root / "llm", hidden_size=32, seed=2)
    return vision, llm


@pytest.fixture(scope="module")
def assembled(parts, tmp_path_factory):
    vision, llm = parts
    return assemble(vision, llm, tmp_path_factory.mktemp("asm") / "out", verbose=False)


def image(seed=0, size=(40, 50)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def test_vision_and_llm_weights_are_bit_identical(parts, assembled):
    vision_dir, llm_dir = parts
    model = AutoModelForImageTextToText.from_pretrained(assembled)
    vision = AutoModel.from_pretrained(vision_dir)
    llm = AutoModelForCausalLM.from_pretrained(llm_dir)
    got = model.model.vision_tower.state_dict()
    for name, tensor in vision.state_dict().items():
        assert torch.equal(got[name], tensor), name
    got = model.model.language_model.state_dict()
    old_vocab = llm.config.vocab_size
    for name, tensor in llm.model.state_dict().items():
        if name == "embed_tokens.weight":
            assert torch.equal(got[name][:old_vocab], tensor)
        else:
            assert torch.equal(got[name], tensor), name
    assert torch.equal(model.lm_head.weight[:old_vocab], llm.lm_head.weight)


def test_new_tokens_and_resized_embeddings(parts, assembled):
    """4 special tokens join the vocabulary: before, 4 specials + 3 role words + 14 words
    (<think> and </think> among them) = 21 ids, so the new ones are 21..24; their rows are the
    mean of the 21 old rows, in the input embeddings and in the (untied) LM head."""
    model = AutoModelForImageTextToText.from_pretrained(assembled)
    processor = AutoProcessor.from_pretrained(assembled)
    tok = processor.tokenizer
    assert [
        tok.convert_tokens_to_ids(t) for t in ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    ] == [21, 22, 23, 24]
    assert (tok.start_image_token, tok.end_image_token, tok.context_image_token) == (
        "<img>",
        "</img>",
        "<IMG_CONTEXT>",
    )
    assert len(tok) == 25
    embed = model.get_input_embeddings().weight
    head = model.lm_head.weight
    assert embed.shape == (25, 32) and head.shape == (25, 32)
    assert model.config.image_token_id == 23
    for w in (embed, head):
        expected = w[:21].mean(dim=0)
        for row in range(21, 25):
            torch.testing.assert_close(w[row], expected, rtol=0, atol=1e-7)
    assert model.config.tie_word_embeddings is False


def test_processor_prompt_ends_in_think_and_has_image_tokens(assembled):
    """32 px / patch 8 = 4 patches a side; pixel shuffle 0.5 -> 2x2 = 4 image tokens."""
    processor = AutoProcessor.from_pretrained(assembled)
    assert processor.image_seq_length == 4
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "how many ?"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<think>\n")
    enc = processor(text=[text], images=[image()], return_tensors="pt")
    assert enc["pixel_values"].shape == (1, 3, 32, 32)  # resized, no tiling
    ids = enc["input_ids"][0].tolist()
    ctx = processor.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert ids.count(ctx) == 4
    start = ids.index(processor.tokenizer.convert_tokens_to_ids("<img>"))
    assert ids[start + 1 : start + 6] == [ctx] * 4 + [
        processor.tokenizer.convert_tokens_to_ids("</img>")
    ]


def test_generate_answers_an_image_and_question(assembled):
    """Greedy ``generate`` (prefill with the image, then the KV cache) gives the tokens of a
    naive loop: a full forward of the prompt, the image and the tokens so far, argmax of the
    last position, until EOS or 5 tokens. The image reaches the answer: another image changes
    the next-token logits."""
    model = AutoModelForImageTextToText.from_pretrained(assembled).eval()
    processor = AutoProcessor.from_pretrained(assembled)

    def encode(img):
        content = [{"type": "image", "image": img}, {"type": "text", "text": "how many red ?"}]
        return processor.apply_chat_template(
            [{"role": "user", "content": content}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )

    inputs = encode(image(3))
    prompt = inputs["input_ids"]
    eos = model.generation_config.eos_token_id
    assert eos == processor.tokenizer.eos_token_id
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    answer = out[0, prompt.shape[1] :].tolist()

    naive, ids = [], prompt
    with torch.no_grad():
        for _ in range(5):
            logits = model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits[0, -1]
            naive.append(int(logits.argmax()))
            if naive[-1] == eos:
                break
            ids = torch.cat([ids, torch.tensor([[naive[-1]]])], dim=1)
        first = model(**inputs).logits[0, -1]
        other = encode(image(4))
        assert torch.equal(other["input_ids"], prompt)
        moved = (model(**other).logits[0, -1] - first).abs().max().item()
    assert answer == naive and 1 <= len(answer) <= 5
    assert moved > 1e-4


def test_adapter_init_is_seeded_and_documented(parts, tmp_path):
    vision, llm = parts
    a = build_assembled(vision, llm, seed=0).model.model.multi_modal_projector
    b = build_assembled(vision, llm, seed=0).model.model.multi_modal_projector
    c = build_assembled(vision, llm, seed=1).model.model.multi_modal_projector
    assert torch.equal(a.linear_1.weight, b.linear_1.weight)
    assert not torch.equal(a.linear_1.weight, c.linear_1.weight)
    assert torch.equal(a.layer_norm.weight, torch.ones(128))  # 32 channels x 2x2 patches
    assert torch.equal(a.layer_norm.bias, torch.zeros(128))
    assert torch.equal(a.linear_1.bias, torch.zeros(32))
    assert torch.equal(a.linear_2.bias, torch.zeros(32))
    # N(0, 0.02): over 128*32 = 4096 draws the sample std is within 5% of 0.02 (its standard
    # error is 0.02 / sqrt(2 * 4096) = 0.00022) and the mean within 0.001 of 0 (s.e. 0.0003);
    # over 32*32 = 1024 draws, within 10% and 0.002.
    for weight, std_tol, mean_tol in (
        (a.linear_1.weight, 0.001, 0.001),
        (a.linear_2.weight, 0.002, 0.002),
    ):
        assert abs(weight.std().item() - 0.02) < std_tol
        assert abs(weight.mean().item()) < mean_tol


def test_llm_template_without_image_parts_is_flattened_and_opens_think(parts, tmp_path):
    """A Qwen2.5-style template that only takes string contents and ends in 'assistant\\n'."""
    template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    llm = tiny_llm(WORDS, tmp_path / "llm", chat_template=template)
    built = build_assembled(parts[0], llm)
    assert "flattened" in built.summary.chat_template and "appended" in built.summary.chat_template
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "how many ?"}]}
    ]
    text = built.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert (
        text
        == "<|im_start|>user\n<IMG_CONTEXT>\nhow many ?<|im_end|>\n<|im_start|>assistant\n<think>\n"
    )


def test_llama_without_template_gets_chatml_and_tied_embeddings(parts, tmp_path):
    """A tied Llama with a tokenizer that lacks ChatML tokens and a template: the ChatML
    template is installed, its tokens added, <|im_end|> becomes an EOS, ties carried over."""
    tok = word_tokenizer(WORDS, chat_template=None)
    tok.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    out = assemble(parts[0], tmp_path / "llama", tmp_path / "out", verbose=False)
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert model.config.tie_word_embeddings is True
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    text = processor.apply_chat_template(
        [{"role": "user", "content": "how many ?"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|im_start|>assistant\n<think>\n")
    eos = model.generation_config.eos_token_id
    assert sorted(eos) == sorted(
        [tok.convert_tokens_to_ids("</s>"), tok.convert_tokens_to_ids("<|im_end|>")]
    )


def test_bfloat16_dtype(parts, tmp_path):
    out = assemble(parts[0], parts[1], tmp_path / "bf16", dtype="bfloat16", verbose=False)
    model = AutoModelForImageTextToText.from_pretrained(out, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_missing_config_names_the_file(parts, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty/config\.json: file not found"):
        assemble(tmp_path / "empty", parts[1], tmp_path / "out", verbose=False)


def test_missing_weights_name_the_file(parts, tmp_path):
    vision = tiny_vision(tmp_path / "v")
    (vision / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"v/model\.safetensors: file not found"):
        assemble(vision, parts[1], tmp_path / "out", verbose=False)


def test_mismatched_weights_name_the_file(parts, tmp_path):
    """config.json promises 2 layers, the weights file holds 1."""
    vision = tiny_vision(tmp_path / "v")
    config = json.loads((vision / "config.json").read_text())
    config["num_hidden_layers"] = 2
    (vision / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"v/model\.safetensors: vision encoder weights do not match"
    ):
        assemble(vision, parts[1], tmp_path / "out", verbose=False)


def test_wrong_shaped_weights_name_the_file(parts, tmp_path):
    llm = tiny_llm(WORDS, tmp_path / "l")
    weights = load_file(llm / "model.safetensors")
    weights["model.norm.weight"] = torch.ones(7)
    save_file(weights, llm / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"l/model\.safetensors: cannot load the LLM weights"):
        assemble(parts[0], llm, tmp_path / "out", verbose=False)


def test_llm_without_tokenizer(parts, tmp_path):
    llm = tiny_llm(WORDS, tmp_path / "l")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (llm / name).unlink()
    with pytest.raises(MissingTokenizerError, match="has no tokenizer"):
        assemble(parts[0], llm, tmp_path / "out", verbose=False)


def test_unsupported_encoder_lists_supported_ones(parts, tmp_path):
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    CLIPVisionModel(config).save_pretrained(tmp_path / "clip")
    with pytest.raises(
        UnsupportedModelError,
        match=r"'clip_vision_model' is not supported; supported encoders: internvl_vision",
    ):
        assemble(tmp_path / "clip", parts[1], tmp_path / "out", verbose=False)


def test_bad_geometry_and_occupied_output(parts, assembled, tmp_path):
    with pytest.raises(ConfigError, match="image_size.*not a multiple of patch size 8 x 2"):
        build_assembled(parts[0], parts[1], image_size=40)
    with pytest.raises(ConfigError, match="downsample_ratio"):
        build_assembled(parts[0], parts[1], downsample_ratio=0.3)
    with pytest.raises(R1V2Error, match="not empty.*overwrite=true"):
        assemble(parts[0], parts[1], assembled, verbose=False)
    with pytest.raises(R1V2Error, match="holds the vision encoder input"):
        assemble(parts[0], parts[1], parts[1].parent, overwrite=True, verbose=False)
    with pytest.raises(R1V2Error, match="is inside the vision encoder input"):
        assemble(parts[0], parts[1], parts[0] / "vlm", overwrite=True, verbose=False)
    with pytest.raises(R1V2Error, match="is the LLM input"):
        assemble(parts[0], parts[1], parts[1], overwrite=True, verbose=False)
    assert not (parts[0] / "vlm").exists()


def _occupied(path):
    path.mkdir()
    (path / "keep.txt").write_text("mine")
    return path


def _siblings(out):
    return sorted(p.name for p in out.parent.iterdir())


def test_overwrite_keeps_the_output_when_an_input_is_bad(parts, tmp_path):
    """overwrite=true used to delete OUT before reading the inputs."""
    out = _occupied(tmp_path / "out")
    with pytest.raises(
        CheckpointError, match="nope: vision encoder checkpoint directory not found"
    ):
        assemble(tmp_path / "nope", parts[1], out, overwrite=True, verbose=False)
    llm = tiny_llm(WORDS, tmp_path / "l")
    (llm / "tokenizer.json").unlink()
    (llm / "tokenizer_config.json").unlink()
    with pytest.raises(MissingTokenizerError):
        assemble(parts[0], llm, out, overwrite=True, verbose=False)
    assert (out / "keep.txt").read_text() == "mine"
    assert _siblings(out) == ["l", "out"]


def test_overwrite_keeps_the_output_when_saving_fails(parts, tmp_path, monkeypatch):
    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(InternVLProcessor, "save_pretrained", disk_full)
    out = _occupied(tmp_path / "out")
    with pytest.raises(R1V2Error, match=r"out: cannot write .*No space left on device"):
        assemble(parts[0], parts[1], out, overwrite=True, verbose=False)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert _siblings(out) == ["out"]  # the temporary folder is gone


def test_overwrite_replaces_the_whole_output(parts, tmp_path):
    out = _occupied(tmp_path / "out")
    assemble(parts[0], parts[1], out, overwrite=True, verbose=False)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert _siblings(out) == ["out"]
    assert ".tmp-" not in "".join(p.read_text() for p in out.glob("*.json"))
    assert AutoProcessor.from_pretrained(out).image_seq_length == 4


def test_image_size_option_changes_the_token_budget(parts):
    """64 px / patch 8 = 8 patches a side -> 4x4 = 16 tokens (positions interpolated)."""
    built = build_assembled(parts[0], parts[1], image_size=64)
    assert built.summary.image_tokens == 16 and built.processor.image_seq_length == 16
    assert built.processor.image_processor.size.height == 64


def test_load_tokenizer_keeps_word_level_tokenizer(parts):
    tok = load_tokenizer(parts[1])
    assert tok.convert_ids_to_tokens(tok("how many red ?").input_ids) == ["how", "many", "red", "?"]


def test_cli_assemble_end_to_end(parts, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["assemble", "--vision", str(parts[0]), "--llm", str(parts[1]), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert (
        "adapter        :          5,440 parameters (new)" in printed
    )  # 2*128 + 128*32+32 + 32*32+32
    assert "4 image tokens" in printed
    assert isinstance(AutoProcessor.from_pretrained(out).image_seq_length, int)
    code = main(
        ["assemble", f"vision={tmp_path / 'nope'}", f"llm={parts[1]}", f"out={tmp_path / 'x'}"]
    )
    assert code == 2
    assert "nope: vision encoder checkpoint directory not found" in capsys.readouterr().err
