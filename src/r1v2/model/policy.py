"""The policy: prompts with images in, sampled completions and per-token log-probs out.

A :class:`Policy` wraps a vision-language model of a supported family (Qwen2-VL, Qwen2.5-VL,
Qwen3-VL, InternVL, LLaVA, LLaVA-OneVision, Idefics3/SmolVLM, Gemma 3; its processor beside
it; what differs between families lives in :mod:`r1v2.model.families`) or a plain causal LM
(and its tokenizer). It

- renders chat prompts (question, lettered choices, images) through the chat template, whose
  generation prompt ends in ``<think>\\n``;
- samples ``G`` completions per prompt with transformers ``generate``;
- scores completions: per-token log-probs of each completion given its prompt.

Samples of one prompt share its vision features: the vision encoder and the adapter run once
per prompt, their output is merged into the prompt's token embeddings at the image-token
positions, and those embeddings are repeated ``G`` times for the language model (in
generation and in the log-prob pass alike). With ``share_prefix`` the language model, too,
runs each prompt once: its KV cache is expanded to the prompt's samples, which are decoded
(generation) or scored (log-probs, gradients included) against it.

Sample order is group-major: sample ``i`` belongs to prompt ``i // G``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import GenerationConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

from r1v2.algos.logprobs import token_logprobs
from r1v2.config import option
from r1v2.data.images import open_image
from r1v2.errors import R1V2Error
from r1v2.model.families import Family, family_of, family_of_config


@dataclasses.dataclass
class SamplingConfig:
    """How completions are sampled (the model's own generation defaults are not used).

    Training scores its rollouts at the sampling temperature (log-softmax of logits / T; T = 1
    for greedy decoding), as TRL and verl do. top_p / top_k truncation is not reflected in the
    scores, as in TRL and verl: the ratio and the KL use the full tempered softmax.
    """

    max_new_tokens: int = option(
        256, "most tokens generated per completion (TRL: max_completion_length)"
    )
    do_sample: bool = option(True, "sample; false = greedy decoding")
    temperature: float = option(
        1.0,
        "softmax temperature when sampling; training scores rollouts at it too (logits / T), "
        "as TRL and verl do (TRL: temperature)",
    )
    top_p: float = option(
        1.0, "nucleus sampling mass; 1.0 = off; not reflected in the scores (TRL: top_p)"
    )
    top_k: int = option(
        0, "sample among the k likeliest tokens; 0 = off; not reflected in the scores (TRL: top_k)"
    )

    def validate(self, prefix: str = "") -> None:
        """Check the fields; errors name them with ``prefix`` (``generation.`` where the
        settings are a config's ``generation`` section)."""
        if self.max_new_tokens < 1:
            raise R1V2Error(f"config field '{prefix}max_new_tokens' must be >= 1")
        if self.do_sample and self.temperature <= 0:
            raise R1V2Error(f"config field '{prefix}temperature' must be > 0 when sampling")
        if not 0 < self.top_p <= 1:
            raise R1V2Error(f"config field '{prefix}top_p' must be in (0, 1]")
        if self.top_k < 0:
            raise R1V2Error(f"config field '{prefix}top_k' must be >= 0")


@dataclasses.dataclass(frozen=True)
class Prompt:
    """What the policy needs of one sample: the user turn's text and its images."""

    text: str
    images: tuple[Image.Image, ...] = ()


@dataclasses.dataclass
class PromptBatch:
    """``P`` rendered, tokenised, left-padded prompts and their image tensors.

    ``input_ids``/``attention_mask`` are ``[P, Tp]`` (mask bool, True = a real token);
    ``pixel_values`` holds the pixels of all prompts in order (``tiles[p]`` rows of it for
    prompt ``p``: image tiles for InternVL, patches for Qwen, one row per prompt for
    Idefics3), or None when no prompt has an image. The family's other processor outputs:
    ``vision`` (image-aligned, e.g. Qwen's ``image_grid_thw``; ``vision_rows[key][p]`` rows
    per prompt), ``tokens`` (per token, ``[P, Tp]``: ``mm_token_type_ids``,
    ``token_type_ids``) and ``positions`` (``[3, P, Tp]`` M-RoPE positions, None for 1-D
    positions counted from the mask). ``images[p]``: prompt ``p``'s image count.
    """

    input_ids: torch.Tensor  # [P, Tp]
    attention_mask: torch.Tensor  # [P, Tp] bool
    pixel_values: torch.Tensor | None  # [I, ...]
    tiles: list[int]
    texts: list[str]
    vision: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    vision_rows: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    tokens: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # each [P, Tp]
    positions: torch.Tensor | None = None  # [3, P, Tp]
    images: list[int] | None = None  # None: one image per tile

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def image_counts(self) -> list[int]:
        return list(self.tiles) if self.images is None else list(self.images)

    def select(self, indices: Sequence[int]) -> PromptBatch:
        """The prompts at ``indices`` (in that order, repeats allowed), with their images."""
        idx = list(indices)
        pixels = None
        if self.pixel_values is not None:
            pixels = take_rows(self.pixel_values, self.tiles, idx)
            pixels = pixels if len(pixels) else None
        return PromptBatch(
            input_ids=self.input_ids[idx],
            attention_mask=self.attention_mask[idx],
            pixel_values=pixels,
            tiles=[self.tiles[i] for i in idx],
            texts=[self.texts[i] for i in idx],
            vision={k: take_rows(v, self.vision_rows[k], idx) for k, v in self.vision.items()},
            vision_rows={k: [rows[i] for i in idx] for k, rows in self.vision_rows.items()},
            tokens={k: v[idx] for k, v in self.tokens.items()},
            positions=None if self.positions is None else self.positions[:, idx],
            images=None if self.images is None else [self.images[i] for i in idx],
        )


def take_rows(values: torch.Tensor, rows: Sequence[int], idx: Sequence[int]) -> torch.Tensor:
    """The rows of ``values`` (dim 0) of the prompts ``idx``, prompt ``p`` owning the next
    ``rows[p]`` of them."""
    starts = [0]
    for n in rows:
        starts.append(starts[-1] + n)
    picked = [r for i in idx for r in range(starts[i], starts[i + 1])]
    return values[picked]


@dataclasses.dataclass
class PromptInputs:
    """What the language model reads of ``P`` prompts: their embeddings with the image
    features merged in, and whatever else the family's forward needs beside them.

    ``positions`` ``[3, P, Tp]`` (M-RoPE) or None (1-D, counted from ``mask``);
    ``token_types`` ``[P, Tp]`` (Gemma 3's ``token_type_ids``) or None; ``visual`` ``[P, Tp]``
    bool and ``deepstack`` (each ``[P, Tp, H]``, zero off the image slots): Qwen3-VL's
    deepstack features, or None. Completion tokens are text: after the prompt they get the
    next positions, token type 0 and no deepstack feature.
    """

    family: Family
    input_ids: torch.Tensor  # [P, Tp]
    embeds: torch.Tensor  # [P, Tp, H]
    mask: torch.Tensor  # [P, Tp] bool
    positions: torch.Tensor | None = None  # [3, P, Tp]
    token_types: torch.Tensor | None = None  # [P, Tp]
    visual: torch.Tensor | None = None  # [P, Tp] bool
    deepstack: list[torch.Tensor] | None = None  # each [P, Tp, H]

    def rows(self, idx: torch.Tensor) -> PromptInputs:
        """The prompts ``idx`` ``[B]`` (repeats allowed), differentiably."""
        return PromptInputs(
            self.family,
            self.input_ids[idx],
            self.embeds[idx],
            self.mask[idx],
            None if self.positions is None else self.positions[:, idx],
            None if self.token_types is None else self.token_types[idx],
            None if self.visual is None else self.visual[idx],
            None if self.deepstack is None else [d[idx] for d in self.deepstack],
        )

    def prompt_positions(self) -> torch.Tensor:
        """``[P, Tp]`` or ``[3, P, Tp]``: the prompts' position ids."""
        if self.positions is not None:
            return self.positions
        return (self.mask.long().cumsum(dim=1) - 1).clamp(min=0)  # [P, Tp]

    def next_positions(self, new_mask: torch.Tensor) -> torch.Tensor:
        """Position ids ``[B, T]`` (or ``[3, B, T]``) of ``T`` tokens after the prompts, whose
        mask is ``new_mask`` ``[B, T]`` (1-D: real tokens counted on from the prompt's)."""
        if self.positions is None:
            mask = torch.cat([self.mask, new_mask], dim=1).long()  # [B, Tp + T]
            return (mask.cumsum(dim=1) - 1).clamp(min=0)[:, self.mask.shape[1] :]
        steps = torch.arange(1, new_mask.shape[1] + 1, device=self.positions.device)  # [T]
        return self.positions[..., -1:] + steps  # [3, B, T]

    def forward(
        self,
        model: torch.nn.Module,
        new_embeds: torch.Tensor | None = None,
        new_mask: torch.Tensor | None = None,
        *,
        upto: int | None = None,
        **kwargs: Any,
    ):
        """One forward of the prompts (their first ``upto`` tokens) followed by
        ``new_embeds`` ``[B, T, H]`` (mask ``new_mask`` ``[B, T]``), with the family's
        positions, token types and deepstack features; ``kwargs`` go to the model."""
        tp = self.mask.shape[1] if upto is None else upto
        embeds, mask = self.embeds[:, :tp], self.mask[:, :tp]
        positions = self.prompt_positions()[..., :tp]
        token_types, visual = self.token_types, self.visual
        token_types = None if token_types is None else token_types[:, :tp]
        visual = None if visual is None else visual[:, :tp]
        deepstack = None if self.deepstack is None else [d[:, :tp] for d in self.deepstack]
        if new_embeds is not None:
            embeds = torch.cat([embeds, new_embeds.to(embeds.dtype)], dim=1)
            positions = torch.cat([positions, self.next_positions(new_mask)], dim=-1)
            mask = torch.cat([mask, new_mask], dim=1)  # [B, Tp + T]
            pad = new_mask.new_zeros(new_mask.shape)  # [B, T]: text, no image slot
            token_types = None if token_types is None else torch.cat([token_types, pad.long()], 1)
            if visual is not None:
                visual = torch.cat([visual, pad.bool()], dim=1)
                deepstack = [torch.cat([d, torch.zeros_like(new_embeds)], 1) for d in deepstack]
        extra = {} if token_types is None else {"token_type_ids": token_types}
        with deepstack_injected(model, self.family, visual, deepstack):
            return model(
                inputs_embeds=embeds,
                attention_mask=mask.long(),
                position_ids=positions,
                **extra,
                **kwargs,
            )


@contextlib.contextmanager
def deepstack_injected(model, family: Family, visual, deepstack) -> Iterator[None]:
    """While inside, the language model of ``model`` (Qwen3-VL) adds ``deepstack`` (each
    ``[B, T, H]``) at the ``visual`` ``[B, T]`` slots in its first layers, as the model's own
    forward does when it computes the image features itself."""
    target = family.deepstack_target(model) if visual is not None else None
    if target is None or not bool(visual.any()):
        yield
        return

    def inject(module, args, kwargs):
        kwargs["visual_pos_masks"] = visual
        kwargs["deepstack_visual_embeds"] = [d[visual] for d in deepstack]  # each [F, H]
        return args, kwargs

    handle = target.register_forward_pre_hook(inject, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@dataclasses.dataclass
class Rollout:
    """``N = P * G`` completions, group-major (sample ``i`` answers prompt ``i // G``).

    ``completion_ids`` is ``[N, Tc]``, padded with the pad id after the first EOS;
    ``completion_mask`` is ``[N, Tc]`` bool, True up to and including the first EOS.
    """

    prompts: PromptBatch
    group_size: int
    completion_ids: torch.Tensor  # [N, Tc]
    completion_mask: torch.Tensor  # [N, Tc] bool
    finished: torch.Tensor  # [N] bool: the completion ended with EOS
    texts: list[str]

    @property
    def prompt_index(self) -> torch.Tensor:
        """``[N]``: the prompt each sample answers."""
        return torch.arange(len(self.prompts)).repeat_interleave(self.group_size)


def format_question(question: str, choices: Sequence[str] | None = None) -> str:
    """The user-turn text: the question, then one ``A. choice`` line per choice.

    Example: ``format_question("Colour?", ["red", "blue"]) == "Colour?\\nA. red\\nB. blue"``.
    """
    if not choices:
        return question
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    if len(choices) > len(letters):
        raise R1V2Error(f"{len(choices)} choices: at most {len(letters)} can be lettered")
    lines = [f"{letters[i]}. {c}" for i, c in enumerate(choices)]
    return "\n".join([question, *lines])


def to_prompt(item: Any) -> Prompt:
    """A :class:`Prompt` from a Sample-like object, a ``(question, images)`` pair or a string.

    Sample-like: has ``question``, optionally ``choices``, and images through
    ``open_images()`` (preferred) or an ``images`` attribute. Images may be PIL images, paths
    or encoded bytes; they are converted to RGB.
    """
    if isinstance(item, Prompt):
        return item
    if isinstance(item, str):
        return Prompt(item)
    if isinstance(item, tuple) and len(item) == 2:
        question, images = item
        return Prompt(question, tuple(open_image(im) for im in images or ()))
    if not hasattr(item, "question"):
        raise R1V2Error(
            f"cannot make a prompt from {type(item).__name__}: expected an object with "
            "'question' (and 'choices', 'images'), a (question, images) pair, or a string"
        )
    text = format_question(item.question, getattr(item, "choices", None))
    if callable(getattr(item, "open_images", None)):
        images = item.open_images()
    else:
        images = getattr(item, "images", None) or ()
    return Prompt(text, tuple(open_image(im) for im in images))


# A token covers rarely more than this many characters: longer texts are refused untokenised.
CHARS_PER_POSITION = 64


def prompt_name(item: Any, index: int) -> str:
    """How errors name a prompt: its sample id when it has one."""
    name = getattr(item, "id", None)
    return f"prompt {name!r}" if name else f"prompt {index}"


def policy_kind(config: Any, path: str | Path) -> str:
    """``"vlm"`` or ``"lm"``: how a checkpoint with this transformers ``config`` loads as a
    policy. Raises R1V2Error for one that is neither, e.g. a vision encoder alone (an input of
    ``r1v2 assemble``), instead of transformers' list of every supported config class."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
    )

    if hasattr(config, "vision_config") and type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        return "vlm"
    if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
        return "lm"
    kind = " ".join(getattr(config, "architectures", None) or [config.model_type])
    hint = (
        ": a vision encoder alone is an input of `r1v2 assemble`, not a policy"
        if "vision" in f"{kind} {config.model_type}".lower()
        else ""
    )
    raise R1V2Error(f"{path}: {kind} is neither a causal LM nor a vision-language model{hint}")


class Policy:
    """A model plus its processor (VLM) or tokenizer (text-only LM).

    Args:
        model: a vision-language model of a supported family (:mod:`r1v2.model.families`),
            or any causal LM for text-only prompts.
        processor: the model's processor (VLM) or tokenizer (text-only).
        system_prompt: an optional system turn placed before every prompt.
    """

    def __init__(self, model, processor, *, system_prompt: str | None = None):
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.system_prompt = system_prompt
        self.is_vlm = hasattr(processor, "image_processor") and hasattr(model, "get_image_features")
        self.family = family_of(model, vision=self.is_vlm)
        self.image_token_id = model.config.image_token_id if self.is_vlm else None
        self.eos_ids = _eos_ids(model, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]
        # Sharded models (FSDP) need every process to keep stepping generation until all are
        # done; r1v2.train.grpo sets this when it shards the policy.
        self.synced_gpus = False

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype | str = "auto",
        device: str | torch.device | None = None,
        system_prompt: str | None = None,
    ) -> Policy:
        """Load a VLM (``AutoModelForImageTextToText`` + ``AutoProcessor``) or a causal LM.

        ``device``: None keeps the model on the CPU; ``"auto"`` picks CUDA when available.
        """
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
        )

        from r1v2.model.tokenizer import load_tokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise R1V2Error(f"{path / 'config.json'}: file not found (not a checkpoint)")
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as e:  # broken JSON, a model type transformers lacks
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise R1V2Error(
                f"{path / 'config.json'}: cannot read the model config: {reason}"
            ) from e
        from safetensors import SafetensorError

        vision = policy_kind(config, path) == "vlm"
        if vision:
            family_of_config(config)  # an unsupported family: one line, before loading it
        try:
            auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
            model = auto.from_pretrained(path, dtype=dtype)
            processor = AutoProcessor.from_pretrained(path) if vision else load_tokenizer(path)
        except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # truncated, missing
            lines = str(e).strip().splitlines()
            reason = lines[0] if lines else type(e).__name__
            raise R1V2Error(f"{path}: cannot load the checkpoint: {reason}") from e
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device is not None:
            model = model.to(device)
        return cls(model.eval(), processor, system_prompt=system_prompt)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int | None:
        """The language model's positions (``max_position_embeddings``), or None."""
        config = self.model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        return getattr(text, "max_position_embeddings", None)

    def check_length(self, text: str, tokens: int | None, what: str) -> None:
        """Refuse ``what`` (``text``, ``tokens`` long when known) when it is longer than the
        context; far longer texts are refused before they are tokenised."""
        limit = self.context_length
        if limit is None:
            return
        if tokens is None and len(text) > CHARS_PER_POSITION * limit:
            raise R1V2Error(
                f"{what} is {len(text):,} characters: far longer than the model's context of "
                f"{limit:,} positions (max_position_embeddings); shorten it"
            )
        if tokens is not None and tokens > limit:
            raise R1V2Error(
                f"{what} is {tokens:,} tokens: longer than the model's context of {limit:,} "
                "positions (max_position_embeddings); shorten it"
            )

    @property
    def opens_think(self) -> bool:
        """Whether the chat template's generation prompt opens a think block (R1 style): then
        only an answer after ``</think>`` counts in training rewards."""
        return self.render(Prompt("?")).rstrip().endswith("<think>")

    # ---- prompts -------------------------------------------------------------------------

    def render(self, prompt: Prompt) -> str:
        """The chat-template text of one prompt, ending in the generation prompt."""
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        if prompt.images:
            if not self.is_vlm:
                raise R1V2Error("this policy is a text-only LM: it cannot take images")
            parts = [{"type": "image"} for _ in prompt.images]
            messages.append(
                {"role": "user", "content": [*parts, {"type": "text", "text": prompt.text}]}
            )
        else:
            messages.append({"role": "user", "content": prompt.text})
        # The tokenizer's template, else the processor's (LLaVA-style checkpoints keep theirs
        # in chat_template.json beside the processor only).
        template = getattr(self.tokenizer, "chat_template", None) or (
            getattr(self.processor, "chat_template", None) if self.is_vlm else None
        )
        if not template:
            raise R1V2Error(
                "neither the tokenizer nor the processor has a chat template "
                "(assemble the model first, or add one to the checkpoint)"
            )
        return self.tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )

    def encode(self, items: Sequence[Any], names: Sequence[str] | None = None) -> PromptBatch:
        """Render and tokenise prompts (left padding); process their images. A prompt longer
        than the model's context is refused, named by ``names`` (default: its sample id)."""
        prompts = [to_prompt(item) for item in items]
        if not prompts:
            raise R1V2Error("no prompts given")
        texts = [self.render(p) for p in prompts]
        names = names or [prompt_name(item, i) for i, item in enumerate(items)]
        for text, name in zip(texts, names):
            self.check_length(text, None, name)
        counts = [len(p.images) for p in prompts]
        if not self.is_vlm:
            enc = self.tokenizer(
                texts,
                padding=True,
                padding_side="left",
                add_special_tokens=False,
                return_tensors="pt",
            )
            self._check_lengths(enc["attention_mask"], names)
            return PromptBatch(
                enc["input_ids"], enc["attention_mask"].bool(), None, [0] * len(prompts), texts
            )
        family = self.family
        images = None
        if any(counts):
            nested = [list(p.images) for p in prompts]
            images = nested if family.nested_images else [im for ims in nested for im in ims]
        enc = self.processor(
            text=texts, images=images, padding=True, padding_side="left", return_tensors="pt"
        )
        input_ids, mask = enc["input_ids"], enc["attention_mask"].bool()
        self._check_lengths(mask, names)
        slots = (input_ids == self.image_token_id).sum(dim=1).tolist()  # [P]
        vision = {k: enc[k] for k in family.image_keys if images and k in enc}
        rows = family.vision_rows(vision, counts, slots) if vision else {}
        tokens = {k: enc[k] for k in family.token_keys if k in enc}
        positions = (
            family.positions(self.model, input_ids, mask, tokens, vision) if vision else None
        )
        pixel_values = vision.pop("pixel_values", None)
        tiles = rows.pop("pixel_values", [0] * len(prompts))
        return PromptBatch(
            input_ids=input_ids,
            attention_mask=mask,
            pixel_values=pixel_values,
            tiles=tiles,
            texts=texts,
            vision=vision,
            vision_rows=rows,
            tokens=tokens,
            positions=positions,
            images=counts,
        )

    def _check_lengths(self, mask: torch.Tensor, names: Sequence[str]) -> None:
        for n, name in zip(mask.sum(dim=1).tolist(), names):
            self.check_length("", int(n), name)

    def prompt_embeds(
        self, batch: PromptBatch, model: torch.nn.Module | None = None
    ) -> torch.Tensor:
        """``[P, Tp, H]`` token embeddings with each prompt's image features merged in
        (:meth:`prompt_inputs`)."""
        return self.prompt_inputs(batch, model).embeds

    def prompt_inputs(
        self, batch: PromptBatch, model: torch.nn.Module | None = None
    ) -> PromptInputs:
        """What the language model reads of the prompts (:class:`PromptInputs`).

        Runs the vision encoder and adapter once over all images of the batch (the family's
        :meth:`~r1v2.model.families.Family.image_features`) and merges the features at the
        image-token slots, in order. Gradients reach whichever of them has trainable
        parameters; a frozen encoder records no graph.
        """
        model = model if model is not None else self.model
        device, family = self.device, self.family
        input_ids = batch.input_ids.to(device)
        embeds = model.get_input_embeddings()(input_ids)  # [P, Tp, H]
        tokens = {k: v.to(device) for k, v in batch.tokens.items()}
        token_types = next((tokens[k] for k in family.forward_token_keys if k in tokens), None)
        inputs = PromptInputs(
            family,
            input_ids,
            embeds,
            batch.attention_mask.to(device),
            None if batch.positions is None else batch.positions.to(device),
            token_types,
        )
        slots = input_ids == self.image_token_id  # [P, Tp]
        if batch.pixel_values is None or not bool(slots.any()):
            return inputs
        vision = {k: v.to(device) for k, v in batch.vision.items()}
        vision["pixel_values"] = batch.pixel_values.to(device=device, dtype=embeds.dtype)
        features = family.image_features(model, vision, batch.image_counts)
        if int(slots.sum()) != features.embeds.shape[0]:
            raise R1V2Error(
                f"prompt has {int(slots.sum())} image tokens but the images give "
                f"{features.embeds.shape[0]} features"
            )
        where = slots.unsqueeze(-1)  # [P, Tp, 1]
        inputs.embeds = embeds.masked_scatter(where, features.embeds.to(embeds.dtype))
        if features.deepstack:
            inputs.visual = slots
            inputs.deepstack = [
                torch.zeros_like(embeds).masked_scatter(where, f.to(embeds.dtype))
                for f in features.deepstack
            ]
        return inputs

    # ---- generation ----------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        items: Sequence[Any] | PromptBatch,
        sampling: SamplingConfig | None = None,
        *,
        group_size: int = 1,
        batch_size: int | None = None,
        streamer: Any = None,
        share_prefix: bool = False,
        decode: Callable[..., torch.Tensor] | None = None,
    ) -> Rollout:
        """Sample ``group_size`` completions per prompt.

        ``batch_size`` caps the sequences per ``generate`` call (None: all ``P * G`` at once);
        the prompts' vision features are computed once either way. Sampling draws from
        torch's global RNG (seed it for reproducible samples). ``streamer`` (a transformers
        ``TextStreamer``) receives the new tokens as they are generated (one sequence).
        ``share_prefix``: prefill each prompt once per call and decode its samples from its
        expanded KV cache (:meth:`_shared_cache`); the same random draws, so the same samples
        up to float rounding of the logits. ``decode``: a function with :meth:`_generate`'s
        arguments and result that samples instead of transformers ``generate``
        (:class:`r1v2.rollout.CompiledEngine`).
        """
        sampling = sampling or SamplingConfig()
        sampling.validate()
        batch = items if isinstance(items, PromptBatch) else self.encode(items)
        inputs = self.prompt_inputs(batch)  # embeddings [P, Tp, H], ...
        n = len(batch) * group_size
        decode = decode or self._generate
        own = self.family.own_prefill
        chunks = []
        for sl in iter_chunks(n, batch_size):
            rows = torch.arange(sl.start, sl.stop, device=self.device) // group_size  # [n_c]
            cache = self._shared_cache(inputs, rows, always=own) if share_prefix or own else None
            chunks.append(decode(inputs.rows(rows), sampling, streamer, cache))
        width = max(c.shape[1] for c in chunks)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        row = 0
        for c in chunks:
            ids[row : row + c.shape[0], : c.shape[1]] = c.cpu()
            row += c.shape[0]
        completion_mask, finished = completion_masks(ids, self.eos_ids)
        return self.make_rollout(batch, group_size, ids, completion_mask, finished)

    def make_rollout(
        self,
        batch: PromptBatch,
        group_size: int,
        ids: torch.Tensor,
        completion_mask: torch.Tensor,
        finished: torch.Tensor,
    ) -> Rollout:
        """The :class:`Rollout` of new token ids ``[N, T]`` and their ``completion_mask``
        ``[N, T]`` / ``finished`` ``[N]``: the pad id outside the mask, trimmed to the longest
        completion, decoded."""
        ids = ids.masked_fill(~completion_mask, self.pad_id)
        keep = int(completion_mask.sum(dim=1).max()) if len(ids) else 0
        ids, completion_mask = ids[:, :keep], completion_mask[:, :keep]
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return Rollout(batch, group_size, ids, completion_mask, finished, texts)

    def generation_config(self, sampling: SamplingConfig, **extra: Any) -> GenerationConfig:
        """transformers' GenerationConfig for ``sampling`` with this policy's EOS and pad ids
        (``extra`` overrides or adds fields)."""
        sample = sampling.do_sample
        values = {
            "max_new_tokens": sampling.max_new_tokens,
            "do_sample": sample,
            "temperature": sampling.temperature if sample else None,
            "top_p": sampling.top_p if sample else None,
            "top_k": sampling.top_k if sample else None,
            "eos_token_id": self.eos_ids,
            "pad_token_id": self.pad_id,
        }
        return GenerationConfig(**{**values, **extra})

    def _shared_cache(self, inputs: PromptInputs, rows: torch.Tensor, *, always: bool = False):
        """The KV cache of the first ``Tp - 1`` tokens of the prompts ``rows`` ``[B]`` name,
        computed once per distinct prompt and expanded to the ``B`` sequences (None when no
        prompt repeats and not ``always``: nothing to share). ``generate`` then runs only each
        sequence's last prompt token, whose logits give the first sampled token as without
        the cache. ``always``: families whose prompts only r1v2 can prefill."""
        prompts, local = rows.unique(return_inverse=True)  # [P'], [B]
        tp = inputs.mask.shape[1]
        if (len(prompts) == len(rows) and not always) or tp < 2:
            return None
        cache = kv_cache(prefill(self.model, inputs.rows(prompts), upto=tp - 1))
        cache.batch_select_indices(local)  # [P', ...] -> [B, ...]
        return cache

    def _generate(
        self, inputs: PromptInputs, sampling: SamplingConfig, streamer=None, cache=None
    ) -> torch.Tensor:
        """New token ids ``[B, T_new]`` for prompts ``inputs`` (``B`` of them; ``cache``: the
        KV cache of their first tokens, from :meth:`_shared_cache`)."""
        kwargs = {
            "attention_mask": inputs.mask.long(),
            "generation_config": self.generation_config(sampling),
            "synced_gpus": self.synced_gpus,
            "streamer": streamer,
            CACHE_KWARG: cache,
        }
        if inputs.positions is not None:  # M-RoPE: generate steps all three axes on
            kwargs["position_ids"] = inputs.positions
        if self.family.own_prefill and cache is not None:
            # Every prompt token but the last is in the cache, and the last is text: generate
            # embeds it from its id (Gemma 3's generate takes no inputs_embeds).
            prompt = inputs.input_ids
            return self.model.generate(input_ids=prompt, **kwargs)[:, prompt.shape[1] :]
        if inputs.token_types is not None:
            kwargs["token_type_ids"] = inputs.token_types
        # With inputs_embeds and no input_ids, generate returns only the new tokens.
        return self.model.generate(inputs_embeds=inputs.embeds, **kwargs)

    # ---- scoring -------------------------------------------------------------------------

    def logprobs(
        self,
        prompts: PromptBatch,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        *,
        group_size: int = 1,
        prompt_index: torch.Tensor | None = None,
        micro_batch_size: int | None = None,
        temperature: float = 1.0,
        model: torch.nn.Module | None = None,
        share_prefix: bool = False,
    ) -> torch.Tensor:
        """Per-token log-probs ``[N, Tc]`` (float32) of completions given their prompts.

        ``completion_ids``/``completion_mask`` are ``[N, Tc]`` with ``N = len(prompts) *
        group_size`` in group-major order. Entry ``[i, t]`` is ``log p(c_t | prompt, c_<t)``
        under ``softmax(logits / temperature)``; entries where the mask is False are 0. Runs
        under the caller's grad mode: with grad enabled the result carries the graph to every
        trainable parameter (the shared image features included). Vision features are computed
        once per prompt for the whole call (only for the prompts ``prompt_index`` names); the
        language model runs in micro-batches of ``micro_batch_size`` sequences (None: all at
        once). ``share_prefix``: the language model runs each prompt once per micro-batch and
        scores its completions against its expanded KV cache (:meth:`_score_shared`); the
        same log-probs and gradients up to float rounding.

        ``prompt_index`` (``[N]`` ints) maps each completion to its prompt instead of
        ``group_size`` (batches mixing fresh and replayed samples). ``model`` scores with another
        model of the same architecture (e.g. the frozen reference) and this policy's processor.
        """
        n = completion_ids.shape[0]
        device = self.device
        if prompt_index is None:
            if n != len(prompts) * group_size:
                raise R1V2Error(
                    f"{n} completions for {len(prompts)} prompts x group size {group_size}"
                )
            prompt_index = torch.arange(len(prompts)).repeat_interleave(group_size)  # [N]
        elif prompt_index.shape != (n,) or int(prompt_index.max()) >= len(prompts):
            raise R1V2Error(f"prompt_index must be [{n}] indices into {len(prompts)} prompts")
        model = model if model is not None else self.model
        # Only the prompts named (e.g. one micro-batch's); a sharded model keeps the batch, so
        # that every process runs the vision encoder alike (each forward is a collective).
        used, index = prompt_index.unique(return_inverse=True)  # [P'], [N]
        if len(used) < len(prompts) and not self.synced_gpus:
            prompts, prompt_index = prompts.select(used.tolist()), index
        prompt_index = prompt_index.to(device)
        inputs = self.prompt_inputs(prompts, model=model)  # embeddings [P, Tp, H], ...
        ids = completion_ids.to(device)
        cmask = completion_mask.to(device).bool()
        out = []
        for sl in iter_chunks(n, micro_batch_size):
            rows = prompt_index[sl]  # [n_c]
            distinct, local = rows.unique(return_inverse=True)  # [P_c], [n_c]
            # share when some prompt repeats (sharded: always, every process calls alike)
            if share_prefix and (len(distinct) < len(rows) or self.synced_gpus):
                part = inputs.rows(distinct)
                logps = self._score_shared(model, part, local, ids[sl], cmask[sl], temperature)
            else:
                logps = self._score(model, inputs.rows(rows), ids[sl], cmask[sl], temperature)
            out.append(logps)
        return torch.cat(out, dim=0)  # [N, Tc]

    def _score(self, model, inputs: PromptInputs, ids, cmask, temperature: float):
        """Log-probs ``[B, Tc]`` for one micro-batch (prompts ``inputs``, one per row)."""
        tc = ids.shape[1]
        if tc == 0:
            return torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
        completion_embeds = model.get_input_embeddings()(ids)  # [B, Tc, H]
        out = inputs.forward(
            model, completion_embeds, cmask, logits_to_keep=tc + 1, use_cache=False
        )
        logits = out.logits[:, :-1]  # [B, Tc, V]: position Tp-1+t predicts completion token t
        if temperature != 1.0:
            logits = logits / temperature
        logps = token_logprobs(logits, ids)  # [B, Tc]
        return logps.masked_fill(~cmask, 0.0)

    def _score_shared(self, model, inputs: PromptInputs, rows, ids, cmask, temperature):
        """:meth:`_score` with each prompt run once: log-probs ``[B, Tc]`` of completions ``ids``
        ``[B, Tc]`` whose prompts are ``rows`` ``[B]`` into ``inputs`` (``P`` prompts).

        One forward of the ``P`` prompts keeps its KV cache (under grad, with its graph); the
        cache is expanded to the ``B`` completions (an index, whose backward sums the ``G``
        copies' gradients into the one prompt forward) and the completions run against it.
        The last prompt position's logits score completion token 0; completion position
        ``t`` scores token ``t + 1``.
        """
        tc = ids.shape[1]
        if tc == 0:
            return torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
        out = prefill(model, inputs)  # logits [P, 1, V]
        first = token_logprobs(out.logits[rows], ids[:, :1], temperature=temperature)  # [B, 1]
        cache = kv_cache(out)
        cache.batch_select_indices(rows)  # [P, ...] -> [B, ...], differentiable
        expanded = inputs.rows(rows)
        mask = torch.cat([expanded.mask, cmask], dim=1)  # [B, Tp + Tc]
        completion_embeds = model.get_input_embeddings()(ids)  # [B, Tc, H]
        rest = model(
            inputs_embeds=completion_embeds.to(inputs.embeds.dtype),
            attention_mask=mask.long(),  # the cache's Tp positions, then the Tc new ones
            position_ids=expanded.next_positions(cmask),
            use_cache=True,
            **{CACHE_KWARG: cache},
        ).logits[:, :-1]  # [B, Tc - 1, V]: position t predicts token t + 1 (the last: unused)
        rest = token_logprobs(rest, ids[:, 1:], temperature=temperature)  # [B, Tc - 1]
        return torch.cat([first, rest], dim=1).masked_fill(~cmask, 0.0)  # [B, Tc]


# transformers renamed ``past_key_values`` (keyword and output field) to ``cache`` in 5.x
# (5.24 has ``cache``, 5.17 ``past_key_values``): use the name the installed version has.
CACHE_KWARG = (
    "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
)


def kv_cache(output) -> Any:
    """The KV cache a forward with ``use_cache=True`` returned, under either field name."""
    return getattr(output, CACHE_KWARG)


def prefill(model, inputs: PromptInputs, *, upto: int | None = None):
    """One forward of left-padded prompts (their first ``upto`` tokens) that keeps the KV
    cache (:func:`kv_cache` of the output) and the last position's ``.logits``
    ``[P, 1, V]``, with the family's positions (1-D ones count real tokens only)."""
    return inputs.forward(model, upto=upto, use_cache=True, logits_to_keep=1)


def completion_masks(
    ids: torch.Tensor, eos_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask [N, T] bool, finished [N] bool)`` for generated ids ``[N, T]``.

    ``mask[i, t]`` is True while no EOS occurred before ``t`` (the first EOS itself counts).
    Example: ids ``[5, 3, 0]`` with EOS 3 -> mask ``[True, True, False]``, finished True.
    """
    is_eos = torch.isin(ids, torch.tensor(list(eos_ids), dtype=ids.dtype))  # [N, T]
    eos_before = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0  # [N, T]
    return ~eos_before, is_eos.any(dim=1)


def _eos_ids(model, tokenizer) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise R1V2Error("the model has no EOS token (generation_config.eos_token_id)")
    return ids


def iter_chunks(n: int, size: int | None) -> Iterator[slice]:
    """Slices covering ``range(n)`` in steps of ``size`` (one slice when None)."""
    step = size or max(n, 1)
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))
