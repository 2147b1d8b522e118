"""``r1v2 chat``: one answer from any assembled or trained checkpoint, streamed as it is
generated.

    r1v2 chat --model runs/grpo/final --image runs/toy/data/test/images/x.png "how many red circles ?"

The question goes through the model's own chat template (which opens ``<think>`` for an
assembled model), with the images first, exactly as training and evaluation render prompts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from r1v2.config import option
from r1v2.errors import R1V2Error
from r1v2.model.dtypes import Device, Dtype


@dataclass
class ChatConfig:
    """``r1v2 chat``: ask a checkpoint one question, optionally about images."""

    question: str = option(help="the question (the positional argument)")
    model: str = option("runs/demo/model", "checkpoint folder (assembled, trained or exported)")
    image: list[str] = option([], "image file(s) the question is about; repeatable")
    max_new_tokens: int = option(256, "most tokens to generate")
    temperature: float = option(0.0, "sampling temperature; 0 = greedy")
    seed: int = option(0, "seed when sampling")
    device: Device = option("auto", "auto (CUDA when available), cpu or cuda")
    dtype: Dtype = option("float32", "model dtype")

    def validate(self) -> None:
        if not self.question.strip():
            raise R1V2Error("the question is empty")
        try:
            self.question.encode("utf-8")
        except UnicodeEncodeError as e:  # undecodable bytes on the command line
            raise R1V2Error(
                f"field 'question': not valid UTF-8 (an undecodable byte at character {e.start})"
            ) from e
        if self.max_new_tokens < 1:
            raise R1V2Error("config field 'max_new_tokens' must be >= 1")
        if self.temperature < 0:
            raise R1V2Error("config field 'temperature' must be >= 0")
        for path in self.image:
            if Path(path).is_dir():
                raise R1V2Error(f"field 'image': {path} is a folder, not an image file")
            if not Path(path).is_file():
                raise R1V2Error(f"field 'image': file not found: {path}")


def run(cfg: ChatConfig) -> int:
    import torch
    from transformers import TextStreamer

    from r1v2.data.images import open_image
    from r1v2.model.dtypes import torch_dtype
    from r1v2.model.policy import Policy, Prompt, SamplingConfig

    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device
    device = "cpu" if device == "auto" else device
    policy = Policy.from_pretrained(cfg.model, dtype=torch_dtype(cfg.dtype), device=device)
    if cfg.image and not policy.is_vlm:
        raise R1V2Error(f"{cfg.model} is a text-only model: it cannot take --image")
    images = tuple(open_image(path) for path in cfg.image)
    policy.check_length(cfg.question, None, "the question")
    batch = policy.encode([Prompt(cfg.question, images)], names=["the question"])
    check_room(policy, batch.input_ids.shape[1], cfg.max_new_tokens)
    sampling = SamplingConfig(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=cfg.temperature > 0,
        temperature=cfg.temperature if cfg.temperature > 0 else 1.0,
    )
    torch.manual_seed(cfg.seed)
    streamer = TextStreamer(policy.tokenizer, skip_prompt=True, skip_special_tokens=True)
    policy.generate(batch, sampling, streamer=streamer)
    sys.stdout.flush()
    return 0


def check_room(policy, prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuse a question whose answer would run past the model's context."""
    limit = policy.context_length
    if limit is not None and prompt_tokens + max_new_tokens > limit:
        room = limit - prompt_tokens
        hint = f"lower --max-new-tokens to {room} or less" if room > 0 else "shorten the question"
        raise R1V2Error(
            f"the question takes {prompt_tokens:,} tokens and --max-new-tokens {max_new_tokens:,} "
            f"more: past the model's context of {limit:,} positions; {hint}"
        )
