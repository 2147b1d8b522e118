"""Tiny random checkpoints of the vision-language families r1v2 trains, built offline.

Each builder makes a randomly initialised model of one transformers family from a small
config (hidden size 32-64, 1-2 layers), its processor on a word-level tokenizer with the
family's special tokens and a chat template that places the family's image placeholder, and
saves both with ``save_pretrained``: a folder laid out as the family's hub checkpoints are,
which ``AutoModelForImageTextToText`` / ``AutoProcessor`` load. Tests and
``bench/families.py`` use them; nothing here is downloaded.

    path = build_family("qwen2_5_vl", "runs/tiny-qwen2_5_vl")
    policy = Policy.from_pretrained(path)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers as tf

from r1v2.data.synthetic import vocabulary
from r1v2.toy.tokenizer import word_tokenizer

WORDS = (
    "what is the answer how many shapes are there in image picture colour red blue green "
    "square circle triangle left right of and a an one two three four five six seven eight "
    "nine zero 0 1 2 3 4 5 6 7 8 9 + - = . , ? ! <think> </think> \\boxed{ } so thus it"
).split()

# The generation prompt opens a think block, as r1v2's assembled models' does.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '@IMAGE@' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}"
)

TEXT = {  # the language model's shape, shared by every family
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 512,
}
MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}  # head 32


def _tokenizer(placeholder: str, specials: list[str], named: dict[str, str] | None = None):
    tok = word_tokenizer(
        dict.fromkeys([*WORDS, *vocabulary()]),
        extra_special_tokens=specials,
        chat_template=CHAT_TEMPLATE.replace("@IMAGE@", placeholder),
    )
    if named:
        tok._set_model_specific_special_tokens(special_tokens=named)
    return tok


def _ids(tok, *tokens: str) -> list[int]:
    return [tok.convert_tokens_to_ids(t) for t in tokens]


QWEN_SPECIALS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]


def _qwen(config_cls, model_cls, processor_cls, vision: dict, text_extra: dict | None = None):
    tok = _tokenizer("<|vision_start|><|image_pad|><|vision_end|>", QWEN_SPECIALS)
    start, image, end, video = _ids(tok, *QWEN_SPECIALS)
    text = {**TEXT, "vocab_size": len(tok), "rope_parameters": dict(MROPE), **(text_extra or {})}
    text.update(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    config = config_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=image,
        video_token_id=video,
        vision_start_token_id=start,
        vision_end_token_id=end,
    )
    images = tf.Qwen2VLImageProcessor(
        patch_size=8,
        temporal_patch_size=2,
        merge_size=2,
        size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64},
    )
    videos = tf.Qwen2VLVideoProcessor(
        patch_size=8,
        temporal_patch_size=2,
        merge_size=2,
        size={"shortest_edge": 256, "longest_edge": 4096},
    )
    processor = processor_cls(image_processor=images, tokenizer=tok, video_processor=videos)
    return model_cls(config), processor


def qwen2_vl():
    vision = {"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "patch_size": 8}
    return _qwen(
        tf.Qwen2VLConfig,
        tf.Qwen2VLForConditionalGeneration,
        tf.Qwen2VLProcessor,
        {**vision, "spatial_merge_size": 2, "temporal_patch_size": 2},
    )


def qwen2_5_vl():
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": 8,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 32,
        "fullatt_block_indexes": [1],
    }
    return _qwen(
        tf.Qwen2_5_VLConfig,
        tf.Qwen2_5_VLForConditionalGeneration,
        tf.Qwen2_5_VLProcessor,
        vision,
    )


def qwen3_vl():
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": 8,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 16,
        "deepstack_visual_indexes": [0, 1],
    }
    rope = {**MROPE, "mrope_interleaved": True}
    return _qwen(
        tf.Qwen3VLConfig,
        tf.Qwen3VLForConditionalGeneration,
        tf.Qwen3VLProcessor,
        vision,
        {"head_dim": 32, "rope_parameters": rope},
    )


def _siglip() -> dict:
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }


def _text(tok, model_type: str, **extra: Any) -> dict:
    return {
        "model_type": model_type,
        **TEXT,
        "vocab_size": len(tok),
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": None,
        **extra,
    }


def llava():
    tok = _tokenizer("<image>", ["<image>"])
    (image,) = _ids(tok, "<image>")
    vision = {"model_type": "clip_vision_model", **_siglip(), "projection_dim": 32}
    config = tf.LlavaConfig(
        vision_config=vision,
        text_config=_text(tok, "llama"),
        image_token_index=image,
        image_seq_length=16,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    images = tf.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor = tf.LlavaProcessor(
        image_processor=images,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return tf.LlavaForConditionalGeneration(config), processor


PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def llava_onevision():
    tok = _tokenizer("<image>", ["<image>", "<video>"])
    image, video = _ids(tok, "<image>", "<video>")
    config = tf.LlavaOnevisionConfig(
        vision_config={"model_type": "siglip_vision_model", **_siglip()},
        text_config=_text(tok, "qwen2"),
        image_token_index=image,
        video_token_index=video,
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    images = tf.LlavaOnevisionImageProcessor(
        size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS
    )
    videos = tf.LlavaOnevisionVideoProcessor(size={"height": 32, "width": 32})
    processor = tf.LlavaOnevisionProcessor(
        image_processor=images,
        tokenizer=tok,
        video_processor=videos,
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    return tf.LlavaOnevisionForConditionalGeneration(config), processor


IDEFICS_SPECIALS = [
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *[f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)],
]


def _idefics(config_cls, model_cls, processor_cls, image_processor_cls, **processor_extra):
    tok = _tokenizer("<image>", IDEFICS_SPECIALS)
    (image,) = _ids(tok, "<image>")
    vision = {k: v for k, v in _siglip().items()}
    config = config_cls(
        vision_config=vision,
        text_config=_text(tok, "llama"),
        image_token_id=image,
        scale_factor=2,
        pad_token_id=tok.pad_token_id,
    )
    images = image_processor_cls(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True
    )
    processor = processor_cls(
        image_processor=images, tokenizer=tok, image_seq_len=4, **processor_extra
    )
    return model_cls(config), processor


def idefics3():
    return _idefics(
        tf.Idefics3Config,
        tf.Idefics3ForConditionalGeneration,
        tf.Idefics3Processor,
        tf.Idefics3ImageProcessor,
    )


def smolvlm():
    return _idefics(
        tf.SmolVLMConfig,
        tf.SmolVLMForConditionalGeneration,
        tf.SmolVLMProcessor,
        tf.SmolVLMImageProcessor,
        video_processor=tf.SmolVLMVideoProcessor(),
    )


def gemma3():
    specials = ["<start_of_image>", "<image_soft_token>", "<end_of_image>"]
    named = {"boi_token": specials[0], "image_token": specials[1], "eoi_token": specials[2]}
    tok = _tokenizer("<start_of_image>", specials, named)
    boi, image, eoi = _ids(tok, *specials)
    text = _text(
        tok,
        "gemma3_text",
        head_dim=32,
        query_pre_attn_scalar=32,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
    )
    config = tf.Gemma3Config(
        text_config=text,
        vision_config={"model_type": "siglip_vision_model", **_siglip()},
        mm_tokens_per_image=4,
        boi_token_index=boi,
        eoi_token_index=eoi,
        image_token_index=image,
    )
    images = tf.Gemma3ImageProcessor(size={"height": 32, "width": 32})
    processor = tf.Gemma3Processor(image_processor=images, tokenizer=tok, image_seq_length=4)
    return tf.Gemma3ForConditionalGeneration(config), processor


def internvl():
    """r1v2's own assembled InternVL (:func:`r1v2.model.assemble.assemble` of a tiny
    InternViT-style encoder and a tiny Qwen2 LM)."""
    import tempfile

    from r1v2.model.assemble import assemble
    from r1v2.toy.tiny import tiny_llm, tiny_vision

    with tempfile.TemporaryDirectory() as tmp:
        vision = tiny_vision(Path(tmp) / "vision")
        llm = tiny_llm(dict.fromkeys([*WORDS, *vocabulary()]), Path(tmp) / "llm", hidden_size=64)
        vlm = assemble(vision, llm, Path(tmp) / "vlm", verbose=False)
        model = tf.AutoModelForImageTextToText.from_pretrained(vlm)
        return model, tf.AutoProcessor.from_pretrained(vlm)


BUILDERS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "internvl": internvl,
    "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": qwen2_5_vl,
    "qwen3_vl": qwen3_vl,
    "llava": llava,
    "llava_onevision": llava_onevision,
    "idefics3": idefics3,
    "smolvlm": smolvlm,
    "gemma3": gemma3,
}


def build_family(name: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Save a tiny random checkpoint of family ``name`` (a key of :data:`BUILDERS`) and its
    processor to ``out_dir``; return the folder. The tokenizer knows the synthetic task's
    words (:func:`r1v2.data.synthetic.vocabulary`), so the checkpoints train on it."""
    if name not in BUILDERS:
        raise ValueError(f"unknown family {name!r}: expected one of {', '.join(BUILDERS)}")
    torch.manual_seed(seed)
    model, processor = BUILDERS[name]()
    out = Path(out_dir)
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    return out


# ---- references: what transformers itself computes, one prompt at a time -----------------


def own_inputs(policy, prompt) -> dict:
    """The processor's outputs for one prompt alone (no padding), as a user passes them to
    the model (``policy``: a :class:`r1v2.model.policy.Policy`, ``prompt`` a ``Prompt``)."""
    images = None
    if prompt.images:
        images = [list(prompt.images)] if policy.family.nested_images else list(prompt.images)
    return dict(policy.processor(text=[policy.render(prompt)], images=images, return_tensors="pt"))


@torch.no_grad()
def reference_greedy(policy, prompts, max_new_tokens: int) -> list[list[int]]:
    """Each prompt's greedy completion ids from ``model.generate`` of that prompt alone."""
    out = []
    for prompt in prompts:
        enc = own_inputs(policy, prompt)
        ids = policy.model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=policy.eos_ids,
            pad_token_id=policy.pad_id,
        )[0, enc["input_ids"].shape[1] :]
        out.append(ids.tolist())
    return out


def reference_logprobs(policy, prompts, ids, mask, group_size: int, temperature: float = 1.0):
    """Per-token log-probs ``[N, Tc]`` of completions ``ids`` (mask ``mask``, ``N = len(prompts)
    * group_size``, group-major) from transformers' own forward of each sample alone: prompt
    and completion through the model, which computes positions, attention masks and image
    features itself; log-softmax of logits / ``temperature``, gathered. Runs under the
    caller's grad mode (the naive twin of :meth:`r1v2.model.policy.Policy.logprobs`)."""
    rows = []
    for i in range(ids.shape[0]):
        enc = own_inputs(policy, prompts[i // group_size])
        tp = enc["input_ids"].shape[1]
        new = ids[i : i + 1, : int(mask[i].sum())]  # [1, L]
        enc["input_ids"] = torch.cat([enc["input_ids"], new], dim=1)
        enc["attention_mask"] = torch.cat([enc["attention_mask"], torch.ones_like(new)], dim=1)
        for key in ("mm_token_type_ids", "token_type_ids"):
            if key in enc:
                enc[key] = torch.cat([enc[key], torch.zeros_like(new)], dim=1)
        logits = policy.model(**enc).logits[0, tp - 1 : -1].float() / temperature  # [L, V]
        logps = logits.log_softmax(-1).gather(-1, new[0, :, None])[:, 0]  # [L]
        rows.append(torch.cat([logps, logps.new_zeros(ids.shape[1] - len(logps))]))
    return torch.stack(rows)  # [N, Tc]
