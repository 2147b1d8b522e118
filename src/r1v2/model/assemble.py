"""Modular reassembly (RECIPE section 1, eq. 1): ``y = L(A(V(x_v)), x_t)``.

A pretrained vision encoder V and a pretrained reasoning LLM L are joined by a freshly
initialised MLP adapter A (InternVL's projector: pixel shuffle, LayerNorm, Linear, GELU, Linear)
into one ordinary transformers checkpoint (``InternVLForConditionalGeneration``) with its
processor. The vision and LLM weights are carried over bit for bit; only the adapter and the
embedding rows of the added image tokens are new.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GenerationConfig,
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
    PreTrainedTokenizerBase,
)
from transformers.models.internvl.modeling_internvl import InternVLMultiModalProjector

from r1v2.config import ConfigError, option
from r1v2.errors import R1V2Error
from r1v2.fsutil import check_output_dir, replace_dir
from r1v2.model.dtypes import DTYPE_NAMES, DTYPES, DtypeOrAuto
from r1v2.model.tokenizer import CHATML_THINK_TEMPLATE, load_tokenizer

# The tokenizer attributes InternVLProcessor reads, and the tokens they name.
IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",  # unused here, but InternVLProcessor requires it
}
IMAGE_CONTEXT_TOKEN = IMAGE_TOKENS["context_image_token"]
THINK_PROMPT = "<think>\n"

# config.json model_type -> what it is; the only encoders this module can assemble.
SUPPORTED_ENCODERS = {"internvl_vision": "InternViT (transformers InternVLVisionModel)"}

# Image normalisation of InternViT (ImageNet statistics), used when the encoder directory has
# no preprocessor_config.json of its own.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class CheckpointError(R1V2Error):
    """A checkpoint directory with a missing, unreadable or mismatched file (named)."""


class MissingTokenizerError(CheckpointError):
    """The LLM directory has no tokenizer files."""


class UnsupportedModelError(R1V2Error):
    """A checkpoint of a model type that cannot be assembled; the message lists what can."""


@dataclasses.dataclass
class AssembleConfig:
    """``r1v2 assemble``: vision encoder + fresh adapter + LLM -> one checkpoint."""

    vision: str = option(help="directory of the vision encoder checkpoint (InternViT-style)")
    llm: str = option(help="directory of the causal LM checkpoint, with its tokenizer")
    out: str = option(help="directory to write the assembled checkpoint and processor to")
    downsample_ratio: float = option(
        0.5, "pixel-shuffle ratio: 0.5 merges 2x2 patches into one image token"
    )
    image_size: int | None = option(
        None, "input image side in pixels; null uses the encoder's configured size"
    )
    seed: int = option(0, "seed of the adapter's random initialisation")
    dtype: DtypeOrAuto = option(
        "auto",
        "dtype of the saved weights; auto keeps the LLM's stored dtype (parts stored in "
        "another dtype are cast, so only they are not bit-identical)",
    )
    overwrite: bool = option(
        False, "replace the output directory if it is not empty (once the new one is written)"
    )

    def validate(self) -> None:
        _check_ratio(self.downsample_ratio)


@dataclasses.dataclass(frozen=True)
class AssemblySummary:
    """What was assembled: parameter counts per part and the image token budget."""

    vision_params: int
    adapter_params: int
    llm_params: int
    image_size: int
    image_tokens: int  # <IMG_CONTEXT> tokens per image (plus <img> and </img> around them)
    added_tokens: dict[str, int]  # token -> id, for tokens added to the LLM's tokenizer
    dtype: str
    chat_template: str  # where the chat template came from

    def lines(self) -> list[str]:
        total = self.vision_params + self.adapter_params + self.llm_params
        added = ", ".join(f"{t}={i}" for t, i in self.added_tokens.items()) or "none"
        return [
            f"vision encoder : {self.vision_params:>14,d} parameters (copied)",
            f"adapter        : {self.adapter_params:>14,d} parameters (new)",
            f"LLM            : {self.llm_params:>14,d} parameters (copied, plus new token rows)",
            f"total          : {total:>14,d} parameters, dtype {self.dtype}",
            f"image          : {self.image_size}x{self.image_size} px -> "
            f"{self.image_tokens} image tokens",
            f"added tokens   : {added}",
            f"chat template  : {self.chat_template}",
        ]


@dataclasses.dataclass
class Assembled:
    model: InternVLForConditionalGeneration
    processor: InternVLProcessor
    summary: AssemblySummary


def assemble(
    vision_dir: str | Path,
    llm_dir: str | Path,
    out_dir: str | Path,
    *,
    downsample_ratio: float = 0.5,
    image_size: int | None = None,
    seed: int = 0,
    dtype: DtypeOrAuto = "auto",
    overwrite: bool = False,
    verbose: bool = True,
) -> Path:
    """Assemble ``vision_dir`` + a fresh adapter + ``llm_dir`` and save it to ``out_dir``.

    The result loads with ``AutoModelForImageTextToText`` and ``AutoProcessor``. Prints the
    summary when ``verbose``. Returns ``out_dir``. ``out_dir`` may not be, lie inside or hold an
    input; an existing non-empty one is replaced only with ``overwrite``, and only once the new
    checkpoint is completely written (:func:`r1v2.fsutil.replace_dir`): a failure leaves it as
    it was.
    """
    out = check_output_dir(
        out_dir, overwrite=overwrite, inputs={"vision encoder": vision_dir, "LLM": llm_dir}
    )
    built = build_assembled(  # reads and checks every input before OUT is touched
        vision_dir,
        llm_dir,
        downsample_ratio=downsample_ratio,
        image_size=image_size,
        seed=seed,
        dtype=dtype,
    )
    with replace_dir(out, overwrite=overwrite) as tmp:
        built.model.save_pretrained(tmp)
        built.processor.save_pretrained(tmp)
    if verbose:
        print(f"assembled {vision_dir} + adapter + {llm_dir} -> {out}")
        for line in built.summary.lines():
            print("  " + line)
    return out


def build_assembled(
    vision_dir: str | Path,
    llm_dir: str | Path,
    *,
    downsample_ratio: float = 0.5,
    image_size: int | None = None,
    seed: int = 0,
    dtype: DtypeOrAuto = "auto",
) -> Assembled:
    """The assembled model and processor, in memory (what :func:`assemble` saves)."""
    _check_ratio(downsample_ratio)
    vision_dir, llm_dir = Path(vision_dir), Path(llm_dir)
    vision_config = _read_config(vision_dir, "vision encoder")
    if vision_config.model_type not in SUPPORTED_ENCODERS:
        supported = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_ENCODERS.items())
        raise UnsupportedModelError(
            f"{vision_dir / 'config.json'}: vision encoder type '{vision_config.model_type}' is "
            f"not supported; supported encoders: {supported}"
        )
    llm_config = _read_config(llm_dir, "LLM")
    _require_weights(vision_dir)
    _require_weights(llm_dir)
    if not any((llm_dir / f).is_file() for f in TOKENIZER_FILES):
        raise MissingTokenizerError(
            f"{llm_dir}: the LLM has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
            "save its tokenizer into the same directory"
        )
    torch_dtype = _resolve_dtype(dtype, llm_config)
    side, patch = _image_geometry(vision_config, image_size, downsample_ratio)
    image_tokens = int(side // patch * downsample_ratio) ** 2

    vision = _load(AutoModel, vision_dir, torch_dtype, "vision encoder")
    llm = _load(AutoModelForCausalLM, llm_dir, torch_dtype, "LLM")
    if not hasattr(llm, "model") or llm.get_output_embeddings() is None:
        raise UnsupportedModelError(
            f"{llm_dir / 'config.json'}: '{llm_config.model_type}' has no decoder + LM head "
            "layout (model.* and lm_head); use a Qwen2, Qwen3 or Llama-family causal LM"
        )
    try:
        tokenizer = load_tokenizer(llm_dir)
    except (OSError, ValueError) as e:
        raise MissingTokenizerError(f"{llm_dir}: cannot load the LLM's tokenizer: {e}") from e

    template, template_source = vision_chat_template(tokenizer)
    wanted = dict(IMAGE_TOKENS)
    if template_source == "installed ChatML":
        wanted.update({"chatml_start_token": "<|im_start|>", "chatml_end_token": "<|im_end|>"})
    old_ids = sorted(tokenizer.get_vocab().values())
    tokenizer, added = _add_tokens(tokenizer, wanted)
    tokenizer.chat_template = template
    if tokenizer.pad_token is None:
        # Choice: left padding needs a pad id; the EOS token serves (completion masks come from
        # the EOS position, never from the pad id).
        tokenizer.pad_token = tokenizer.eos_token
    _grow_embeddings(llm, len(tokenizer), old_ids, list(added.values()))

    config = InternVLConfig(
        vision_config=vision.config.to_dict(),
        text_config=llm.config.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_CONTEXT_TOKEN),
        image_seq_length=image_tokens,
        downsample_ratio=downsample_ratio,
        # Carried over from the LLM: a tied top-level config over an untied LLM would overwrite
        # the input embeddings with the LM head when loading.
        tie_word_embeddings=bool(llm.config.tie_word_embeddings),
    )
    config.dtype = torch_dtype
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    model.model.vision_tower = vision
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    model.model.multi_modal_projector = new_adapter(
        config, std=getattr(llm.config, "initializer_range", 0.02), seed=seed
    ).to(torch_dtype)
    model.generation_config = _generation_config(llm, tokenizer, template_source)
    model.eval()

    processor = _processor(tokenizer, vision_dir, side, image_tokens, template)
    summary = AssemblySummary(
        vision_params=_count(vision),
        adapter_params=_count(model.model.multi_modal_projector),
        llm_params=_count(llm),
        image_size=side,
        image_tokens=image_tokens,
        added_tokens=added,
        dtype=str(torch_dtype).removeprefix("torch."),
        chat_template=template_source,
    )
    return Assembled(model=model, processor=processor, summary=summary)


def new_adapter(config: InternVLConfig, *, std: float, seed: int) -> InternVLMultiModalProjector:
    """InternVL's projector with a seeded initialisation.

    Init: LayerNorm weight 1 and bias 0; both Linear layers' weights ~ N(0, std) with std the
    LLM's ``initializer_range`` (0.02 when unset), biases 0. This is the init transformers
    gives this projector, drawn from a private generator so that ``seed`` alone decides it.
    """
    adapter = InternVLMultiModalProjector(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        adapter.layer_norm.weight.fill_(1.0)
        adapter.layer_norm.bias.zero_()
        for linear in (adapter.linear_1, adapter.linear_2):
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen) * std)
            linear.bias.zero_()
    return adapter


def vision_chat_template(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    """A chat template for the assembled model, and where it came from.

    Keeps the LLM's template when it has one. If that template does not render an image part
    as ``<IMG_CONTEXT>``, a prefix first flattens list contents into strings (each image part
    becomes ``<IMG_CONTEXT>\\n``, text parts are joined; only ``role`` and ``content`` of each
    message are kept). If its generation prompt does not end in ``<think>\\n``, that is
    appended (R1 style). An LLM without a template gets the ChatML one of
    :data:`r1v2.model.tokenizer.CHATML_THINK_TEMPLATE`.
    """
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        return CHATML_THINK_TEMPLATE, "installed ChatML"
    source = "LLM's template"
    probe = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "probe"}]}]
    rendered = _render(tokenizer, template, probe, True)
    if rendered is None or IMAGE_CONTEXT_TOKEN not in rendered or "probe" not in rendered:
        template = FLATTEN_CONTENT + template
        source += ", with image parts flattened to <IMG_CONTEXT>"
    rendered = _render(tokenizer, template, probe, True)
    if rendered is None:
        raise UnsupportedModelError("the LLM's chat template cannot render a user message")
    if not rendered.endswith(THINK_PROMPT):
        template += (
            "{% if add_generation_prompt %}{{ '"
            + THINK_PROMPT.replace("\n", "\\n")
            + "' }}{% endif %}"
        )
        source += ", with <think>\\n appended to the generation prompt"
    return template, source


# Rewrites `messages` so that every content is a string: image parts -> '<IMG_CONTEXT>\n'.
FLATTEN_CONTENT = (
    "{%- set ns = namespace(messages=[]) -%}"
    "{%- for m in messages -%}"
    "{%- if m['content'] is string -%}"
    "{%- set ns.messages = ns.messages + [m] -%}"
    "{%- else -%}"
    "{%- set text = namespace(value='') -%}"
    "{%- for part in m['content'] -%}"
    "{%- if part['type'] == 'image' -%}{%- set text.value = text.value + '<IMG_CONTEXT>\\n' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set text.value = text.value + part['text'] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set ns.messages = ns.messages + [{'role': m['role'], 'content': text.value}] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set messages = ns.messages -%}"
)


def _render(tokenizer, template: str, messages, generation_prompt: bool) -> str | None:
    try:
        return tokenizer.apply_chat_template(
            messages,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )
    except Exception:  # noqa: BLE001 - any template error means "cannot render this"
        return None


def _check_ratio(ratio: float) -> None:
    inverse = 1.0 / ratio if ratio > 0 else 0.0
    if not (0 < ratio <= 1) or abs(inverse - round(inverse)) > 1e-6:
        raise ConfigError(
            f"config field 'downsample_ratio': {ratio} is not 1/k for an integer k (e.g. 0.5)"
        )


def _read_config(path: Path, what: str):
    if not path.is_dir():
        raise CheckpointError(f"{path}: {what} checkpoint directory not found")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file}: file not found ({what} checkpoint)")
    try:
        json.loads(config_file.read_text())
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{config_file}: cannot read the {what} config: {e}") from e


def _require_weights(path: Path) -> None:
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise CheckpointError(
            f"{path / WEIGHT_FILES[0]}: file not found (no weights: expected one of "
            f"{', '.join(WEIGHT_FILES)})"
        )
    index = next((path / f for f in WEIGHT_FILES if f.endswith(".index.json")), None)
    if index is not None and index.is_file():
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        for shard in sorted(shards):
            if not (path / shard).is_file():
                raise CheckpointError(f"{path / shard}: file not found (listed in {index.name})")


def _load(auto_cls, path: Path, dtype: torch.dtype, what: str):
    weights = next(path / f for f in WEIGHT_FILES if (path / f).is_file())
    try:
        model, info = auto_cls.from_pretrained(path, dtype=dtype, output_loading_info=True)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise UnsupportedModelError(
                f"{path / 'config.json'}: not a causal LM checkpoint ({e}); "
                "use a Qwen2, Qwen3 or Llama-family causal LM"
            ) from e
        raise CheckpointError(f"{weights}: cannot load the {what} weights: {e}") from e
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"{weights}: cannot load the {what} weights: {e}") from e
    for kind in ("missing_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in info.get(kind) or ())
        if keys:
            shown = ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")
            raise CheckpointError(
                f"{weights}: {what} weights do not match {path / 'config.json'} "
                f"({kind.replace('_', ' ')}: {shown})"
            )
    return model.eval()


def _resolve_dtype(name: str, llm_config) -> torch.dtype:
    if name != "auto":
        if name not in DTYPE_NAMES:
            raise ConfigError(
                f"config field 'dtype': {name!r} is not one of auto, {', '.join(DTYPE_NAMES)}"
            )
        return DTYPES[name]
    stored = getattr(llm_config, "dtype", None)
    if isinstance(stored, str):
        stored = DTYPES.get(stored)
    # Choice: one dtype for the whole model; "auto" follows the LLM (the bulk of the weights).
    return stored if isinstance(stored, torch.dtype) else torch.float32


def _image_geometry(vision_config, image_size: int | None, ratio: float) -> tuple[int, int]:
    """``(side, patch)`` in pixels, checked so that pixel shuffle gets a whole grid."""
    configured = vision_config.image_size
    patch = vision_config.patch_size
    configured = configured[0] if isinstance(configured, (list, tuple)) else configured
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    side = image_size or configured
    step = int(patch * round(1 / ratio))
    if side % step:
        raise ConfigError(
            f"config field 'image_size': {side} px is not a multiple of patch size {patch} x "
            f"{round(1 / ratio)} (downsample {ratio}); try {max(step, side // step * step)}"
        )
    return side, patch


def _add_tokens(tokenizer, wanted: dict[str, str]):
    """Add the missing ``wanted`` tokens as special tokens, registered under their names.

    ``<think>`` and ``</think>`` are added as ordinary tokens when the tokenizer can only
    spell them as unknown (word-level vocabularies). Returns the reloaded tokenizer (so the
    named tokens are saved in its config) and ``{token: id}`` for the tokens new to the vocabulary.
    """
    vocab = tokenizer.get_vocab()
    new = [t for t in dict.fromkeys(wanted.values()) if t not in vocab]
    if new:
        tokenizer.add_special_tokens(
            {"extra_special_tokens": new}, replace_extra_special_tokens=False
        )
    unk = tokenizer.unk_token_id
    plain = [
        t
        for t in ("<think>", "</think>")
        if unk is not None and unk in tokenizer(t, add_special_tokens=False).input_ids
    ]
    if plain:
        tokenizer.add_tokens(plain)
    named = {k: v for k, v in wanted.items() if k in IMAGE_TOKENS}
    # Named model-specific tokens are only registered at construction: round-trip once.
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        tokenizer = type(tokenizer).from_pretrained(tmp, **named)
    return tokenizer, {t: tokenizer.convert_tokens_to_ids(t) for t in [*new, *plain]}


def _grow_embeddings(llm, vocab_size: int, old_ids: list[int], new_ids: list[int]) -> None:
    """Resize the LLM's embeddings to ``vocab_size`` rows; set each new token's rows to the mean.

    Choice: a new token's input embedding (and LM-head row, when untied) starts as the mean of
    the rows of the tokens the tokenizer had before, so it starts as an "average" token and its
    logit starts near the others'. Rows already present keep their values bit for bit.
    """
    embed = llm.get_input_embeddings()
    if vocab_size > embed.weight.shape[0]:
        llm.resize_token_embeddings(vocab_size, mean_resizing=False)
    if not new_ids:
        return
    with torch.no_grad():
        matrices = [llm.get_input_embeddings().weight]
        head = llm.get_output_embeddings().weight
        if head.data_ptr() != matrices[0].data_ptr():
            matrices.append(head)
        for w in matrices:
            mean = w[old_ids].float().mean(dim=0).to(w.dtype)  # [H]
            w[new_ids] = mean


def _generation_config(llm, tokenizer, template_source: str) -> GenerationConfig:
    config = GenerationConfig.from_dict(llm.generation_config.to_dict())
    eos = config.eos_token_id
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    if template_source == "installed ChatML":
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if im_end not in eos_ids:
            eos_ids.append(im_end)  # the installed template ends every turn with <|im_end|>
    config.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    config.pad_token_id = tokenizer.pad_token_id
    return config


def _processor(tokenizer, vision_dir: Path, side: int, image_tokens: int, template: str):
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    pre = vision_dir / "preprocessor_config.json"
    if pre.is_file():
        stats = json.loads(pre.read_text())
        mean, std = stats.get("image_mean", mean), stats.get("image_std", std)
    size = {"height": side, "width": side}
    # One resized image per picture: no tiling into crops (crop_to_patches off, at most 1 patch).
    image_processor = GotOcr2ImageProcessor(
        size=size, crop_to_patches=False, max_patches=1, image_mean=mean, image_std=std
    )
    video_processor = InternVLVideoProcessor(size=size, image_mean=mean, image_std=std)
    return InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        image_seq_length=image_tokens,
        chat_template=template,
    )


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def run(cfg: AssembleConfig) -> int:
    assemble(
        cfg.vision,
        cfg.llm,
        cfg.out,
        downsample_ratio=cfg.downsample_ratio,
        image_size=cfg.image_size,
        seed=cfg.seed,
        dtype=cfg.dtype,
        overwrite=cfg.overwrite,
    )
    return 0
