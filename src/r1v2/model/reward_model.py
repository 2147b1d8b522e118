r"""Reward models from transformers checkpoints: a scalar score per (question, images, completion).

Two kinds of checkpoint are read:

- a sequence classifier (``AutoModelForSequenceClassification`` with ``num_labels=1``): the
  score is its logit, pooled by the model itself (its last non-pad token);
- a value head on a (vision-)language model, in this project's format: the base model's
  ordinary checkpoint (``save_pretrained``: config, weights, tokenizer or processor) plus

      value_head.safetensors   "weight" [1, H] and "bias" [1] of a Linear(H, 1), float32
      value_head.json          {"format": "r1v2-value-head", "version": 1,
                                "base_class": "Qwen2ForCausalLM", "hidden_size": H,
                                "pooling": "last"}

  ``base_class`` names the transformers class the base loads with; ``pooling`` (``"last"``
  when absent) says what the head reads:

  - ``"last"``: the base model's last hidden state (after its final norm) at the last token
    whose attention mask is 1; the head is Linear(H, 1).
  - ``"logprob"``: the mean log-probability of the completion's tokens (EOS included) under
    the base model's own LM head, given the prompt and images; the head is Linear(1, 1)
    (a scale and an offset), and ``hidden_size`` is 1. A generative reward model: the
    language model itself says how likely each stated count is given the image, and
    Bradley-Terry training sharpens that. The base must be a model with an LM head.

Inputs are rendered with the checkpoint's chat template. The default ``template="generation"``
renders the user turn (images first, then the question) with the generation prompt and
appends the completion and the EOS token: exactly the tokens the policy produced, since its
completions start after the generation prompt (``<think>\n`` included). ``"conversation"``
renders a user and an assistant message instead, for reward models trained on that layout.
VLM checkpoints go through their ``AutoProcessor``, which expands each image's tokens.
Sequences are right-padded. Scores are unbounded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from r1v2.algos.logprobs import token_logprobs
from r1v2.data.images import open_image
from r1v2.errors import R1V2Error
from r1v2.model.dtypes import torch_dtype
from r1v2.rewards.rm_interface import RewardModel, RMInput

__all__ = [
    "RMInput",
    "RewardModel",
    "TransformersRewardModel",
    "ValueHeadModel",
    "encode",
    "render",
    "save_value_head",
]

HEAD_WEIGHTS = "value_head.safetensors"
HEAD_CONFIG = "value_head.json"
HEAD_FORMAT = "r1v2-value-head"
Template = Literal["generation", "conversation"]
Pooling = Literal["last", "logprob"]
POOLINGS: tuple[str, ...] = get_args(Pooling)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, per row; works for left and right padding.

    attention_mask: [B, T] (0/1 or bool) -> [B] long.
    """
    mask = attention_mask.long()  # [B, T]
    return mask.shape[1] - 1 - mask.flip(1).argmax(dim=1)  # [B]


class ValueHeadModel(torch.nn.Module):
    """A (vision-)language model with a scalar head: one score per row.

    ``pooling="last"``: ``head`` is Linear(H, 1) on the last attended token's hidden state,
    by default fresh (float32) with weight ~ N(0, 1/H) and bias 0 (our choice: unit-scale
    scores for unit-scale hidden states at the start of training). ``pooling="logprob"``:
    ``head`` is Linear(1, 1) on the mean completion-token log-probability, by default weight 1
    and bias 0 (the score starts as the mean log-probability itself); ``forward`` then needs a
    ``completion_mask`` (``encode(..., completion_mask=True)``).
    """

    def __init__(
        self, base: torch.nn.Module, head: torch.nn.Linear | None = None, pooling: Pooling = "last"
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.base = base
        hidden = base.config.get_text_config().hidden_size if pooling == "last" else 1
        if head is None:
            head = torch.nn.Linear(hidden, 1, dtype=torch.float32)
            if pooling == "last":
                torch.nn.init.normal_(head.weight, std=hidden**-0.5)
            else:
                torch.nn.init.ones_(head.weight)
            torch.nn.init.zeros_(head.bias)
        if head.in_features != hidden or head.out_features != 1:
            raise ValueError(f"a {pooling!r} value head must be Linear({hidden}, 1), got {head}")
        self.head = head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        completion_mask: torch.Tensor | None = None,
        **inputs: Any,
    ) -> torch.Tensor:
        """input_ids, attention_mask (, completion_mask): [B, T] (+ ``pixel_values`` for a VLM)
        -> scores [B]."""
        pooled = self.pooled(input_ids, attention_mask, completion_mask, **inputs)
        return self.head(pooled.to(self.head.weight.dtype)).squeeze(-1)  # [B]

    def pooled(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        completion_mask: torch.Tensor | None = None,
        **inputs: Any,
    ) -> torch.Tensor:
        """The head's input: [B, 1] mean completion log-probabilities (``"logprob"``) or
        [B, H] last-token hidden states (``"last"``)."""
        if self.pooling == "logprob":
            if completion_mask is None:
                raise ValueError("a 'logprob' value head needs completion_mask [B, T]")
            logits = self.base(input_ids=input_ids, attention_mask=attention_mask, **inputs).logits
            logps = token_logprobs(logits[:, :-1], input_ids[:, 1:])  # [B, T-1]
            mask = completion_mask[:, 1:].to(logps.device, logps.dtype)  # [B, T-1]
            pooled = ((logps * mask).sum(1) / mask.sum(1).clamp(min=1)).unsqueeze(-1)  # [B, 1]
        else:
            out = self.base.base_model(input_ids=input_ids, attention_mask=attention_mask, **inputs)
            hidden = out.last_hidden_state  # [B, T, H]
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            pooled = hidden[rows, last_token_index(attention_mask).to(hidden.device)]  # [B, H]
        return pooled


def save_value_head(path: str | Path, model: ValueHeadModel, processor: Any = None) -> Path:
    """Save ``model`` (base checkpoint + value head files) and its processor/tokenizer to ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.base.save_pretrained(path)
    if processor is not None:
        processor.save_pretrained(path)
    head = model.head
    tensors = {
        "weight": head.weight.detach().to("cpu", torch.float32).contiguous(),  # [1, H]
        "bias": head.bias.detach().to("cpu", torch.float32).contiguous(),  # [1]
    }
    save_file(tensors, str(path / HEAD_WEIGHTS))
    meta = {
        "format": HEAD_FORMAT,
        "version": 1,
        "base_class": type(model.base).__name__,
        "hidden_size": head.in_features,
        "pooling": model.pooling,
    }
    (path / HEAD_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_value_head(path: str | Path, *, dtype: torch.dtype = torch.float32) -> ValueHeadModel:
    """Load a checkpoint written by :func:`save_value_head`; errors name the bad file."""
    import transformers

    path = Path(path)
    config_file = path / HEAD_CONFIG
    try:
        meta = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise R1V2Error(f"{config_file}: cannot read the value head description: {e}") from e
    if meta.get("format") != HEAD_FORMAT:
        raise R1V2Error(
            f"{config_file}: field 'format' must be {HEAD_FORMAT!r}, got {meta.get('format')!r}"
        )
    base_cls = getattr(transformers, str(meta.get("base_class")), None)
    if base_cls is None or not hasattr(base_cls, "from_pretrained"):
        raise R1V2Error(
            f"{config_file}: field 'base_class' {meta.get('base_class')!r} is not a transformers model class"
        )
    pooling = meta.get("pooling", "last")
    if pooling not in POOLINGS:
        raise R1V2Error(
            f"{config_file}: field 'pooling' must be one of {POOLINGS}, got {pooling!r}"
        )
    base = base_cls.from_pretrained(path, dtype=dtype)
    hidden = base.config.get_text_config().hidden_size if pooling == "last" else 1
    weights_file = path / HEAD_WEIGHTS
    try:
        tensors = load_file(str(weights_file))
    except OSError as e:
        raise R1V2Error(f"{weights_file}: cannot read the value head weights: {e}") from e
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if (
        weight is None
        or bias is None
        or tuple(weight.shape) != (1, hidden)
        or tuple(bias.shape) != (1,)
    ):
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        raise R1V2Error(
            f"{weights_file}: expected 'weight' [1, {hidden}] and 'bias' [1] "
            f"(hidden size of {meta['base_class']}), found {shapes}"
        )
    head = torch.nn.Linear(hidden, 1, dtype=torch.float32)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return ValueHeadModel(base, head, pooling)


def render(
    processor: Any, sample: RMInput, template: Template = "generation", *, completion: bool = True
) -> str:
    """The text of one sample under the checkpoint's chat template (see the module docstring);
    with ``completion=False`` (``"generation"`` only) the prompt alone."""
    if sample.images:
        content: Any = [{"type": "image"} for _ in sample.images]
        content.append({"type": "text", "text": sample.question})
    else:
        content = sample.question
    user = [{"role": "user", "content": content}]
    tokenizer = getattr(processor, "tokenizer", processor)
    # The tokenizer's template, as the policy renders its prompts; the processor's otherwise.
    templater = tokenizer if getattr(tokenizer, "chat_template", None) else processor
    if not getattr(templater, "chat_template", None):
        raise R1V2Error("the reward model's tokenizer/processor has no chat template")
    if template == "generation":
        prompt = templater.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        if not completion:
            return prompt
        return prompt + sample.completion + (tokenizer.eos_token or "")
    if template == "conversation":
        messages = [*user, {"role": "assistant", "content": sample.completion}]
        return templater.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    raise ValueError(f"template must be 'generation' or 'conversation', got {template!r}")


def _tokenize(processor: Any, texts: list[str], images: list[Image.Image]) -> dict:
    if images:
        if not hasattr(processor, "image_processor"):
            raise R1V2Error("this reward model is text-only: it cannot take images")
        return dict(
            processor(
                text=texts, images=images, padding=True, padding_side="right", return_tensors="pt"
            )
        )
    tokenizer = getattr(processor, "tokenizer", processor)
    return dict(
        tokenizer(
            texts, padding=True, padding_side="right", add_special_tokens=False, return_tensors="pt"
        )
    )


def encode(
    processor: Any,
    samples: Sequence[RMInput],
    template: Template = "generation",
    *,
    completion_mask: bool = False,
) -> dict:
    """Tokenise ``samples`` (right padding) and process their images: model inputs as tensors.

    With ``completion_mask`` (``"generation"`` template only) the result also holds
    ``completion_mask`` [B, T]: 1 on the completion's tokens and the EOS, found by encoding
    the prompts alone (the rendered text is prompt + completion + EOS).
    """
    texts = [render(processor, s, template) for s in samples]
    images = [open_image(im) for s in samples for im in s.images]
    batch = _tokenize(processor, texts, images)
    if completion_mask:
        if template != "generation":
            raise ValueError("completion_mask needs the 'generation' template")
        prompts = [render(processor, s, template, completion=False) for s in samples]
        prompt_len = _tokenize(processor, prompts, images)["attention_mask"].sum(1)  # [B]
        total = batch["attention_mask"].sum(1)  # [B]
        positions = torch.arange(batch["input_ids"].shape[1])  # [T]
        batch["completion_mask"] = (
            (positions >= prompt_len[:, None]) & (positions < total[:, None])
        ).long()  # [B, T]
    return batch


class TransformersRewardModel:
    """A :class:`RewardModel` over a transformers checkpoint with a scalar head.

    ``model`` maps encoded inputs to scores ``[B]``: a :class:`ValueHeadModel`, or a sequence
    classifier (its ``logits[:, 0]``). Use :meth:`from_pretrained` to load one from disk.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        *,
        batch_size: int = 8,
        template: Template = "generation",
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        self.template = template

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = "float32",
        batch_size: int = 8,
        template: Template = "generation",
    ) -> TransformersRewardModel:
        """Load a value-head checkpoint (has ``value_head.json``) or a sequence classifier."""
        from transformers import AutoConfig, AutoModelForSequenceClassification

        path = Path(path)
        if not (path / "config.json").is_file():
            raise R1V2Error(
                f"{path / 'config.json'}: file not found (not a reward model checkpoint)"
            )
        dtype = torch_dtype(dtype)
        config = AutoConfig.from_pretrained(path)
        if (path / HEAD_CONFIG).is_file():
            model: torch.nn.Module = load_value_head(path, dtype=dtype)
        elif any(a.endswith("ForSequenceClassification") for a in config.architectures or ()):
            if config.num_labels != 1:
                raise R1V2Error(
                    f"{path / 'config.json'}: field 'num_labels' is {config.num_labels}; a reward "
                    "model classifier has one label (its logit is the score)"
                )
            model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)
        else:
            raise R1V2Error(
                f"{path}: not a reward model: expected a sequence classifier (architectures "
                f"'...ForSequenceClassification', num_labels=1) or a value head ({HEAD_CONFIG}); "
                f"config.json lists {config.architectures}"
            )
        processor = _load_processor(path, config)
        tokenizer = getattr(processor, "tokenizer", processor)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not isinstance(model, ValueHeadModel) and model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id  # the classifier pools on it
        return cls(model.to(device), processor, batch_size=batch_size, template=template)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def score(self, samples: Sequence[RMInput]) -> list[float]:
        """One unbounded score per sample, computed ``batch_size`` samples at a time."""
        scores: list[float] = []
        dtype = next(self.model.parameters()).dtype
        for start in range(0, len(samples), self.batch_size):
            batch = encode(
                self.processor,
                samples[start : start + self.batch_size],
                self.template,
                completion_mask=getattr(self.model, "pooling", None) == "logprob",
            )
            batch = {
                k: v.to(self.device, dtype) if k == "pixel_values" else v.to(self.device)
                for k, v in batch.items()
            }
            scores.extend(self._forward(batch).float().tolist())
        return scores

    def _forward(self, batch: dict) -> torch.Tensor:
        if isinstance(self.model, ValueHeadModel):
            return self.model(**batch)  # [B]
        return self.model(**batch).logits[:, 0]  # [B]


def _load_processor(path: Path, config: Any) -> Any:
    """The checkpoint's processor (VLM) or tokenizer, loaded as saved."""
    from transformers import AutoProcessor

    from r1v2.model.tokenizer import load_tokenizer

    if hasattr(config, "vision_config"):
        return AutoProcessor.from_pretrained(path)
    return load_tokenizer(path)
