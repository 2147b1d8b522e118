"""GPU benchmark of r1v2's GRPO step on a real-shaped VLM: rollout, reference, update, memory.

Model: ``InternVLForConditionalGeneration`` built directly from an ``InternVLConfig`` with
random weights (nothing is downloaded), bf16, of real shapes: a Qwen2.5-1.5B-shaped LLM
(hidden 1536, 28 layers, 12 heads, 2 KV heads, intermediate 8960, vocab 151936, tied
embeddings, rope theta 1e6) and an InternViT-300M-shaped encoder (hidden 1024, 24 layers,
16 heads, intermediate 4096, 448 px images, patch 14), joined by InternVL's MLP adapter with
downsample 0.5, so one image tile is 256 image tokens. The tokenizer is r1v2's word-level one
over a made-up vocabulary of the same size: only shapes and lengths matter with random weights.
Generation and log-probs go through r1v2's own :class:`r1v2.model.policy.Policy` (and
r1v2's rollout engines), so the numbers are r1v2's.

Measured, on one device, for ``P`` prompts x ``G`` samples with one image tile each:

- ``rollout/<engine>``: completion tokens/s of each rollout engine in :data:`ENGINES`
  (``transformers``: transformers ``generate`` through :class:`r1v2.rollout.TransformersEngine`,
  every sample prefilling its own copy of the prompt; ``compiled``: r1v2's sampling loop with
  torch.compile'd decode steps, :class:`r1v2.rollout.CompiledEngine`, each prompt prefilled
  once and its KV cache expanded to its G samples (``share_prefix``), on a static KV cache
  with the step captured as CUDA graphs (its default on CUDA), compiled and captured in the
  untimed warm-up call at the timed length; ``compiled_dynamic``: the same on transformers'
  dynamic cache (``static_cache=False``); ``continuous``: transformers' continuous
  batching through :class:`r1v2.rollout.ContinuousBatchingEngine`, each prompt prefilled once
  and forked to its G samples, the manager built and its cache sized for each call), sampling
  at temperature 1 with EOS held off (``min_new_tokens`` for ``generate``, no EOS for the
  others) so every completion has ``max_new_tokens`` tokens;
- ``reference``: per-token log-probs of the batch under a frozen copy of the model (the KL
  reference of eq. 8), no gradients;
- ``update/<trainable>``: one GRPO update (the micro-batch loop of
  ``r1v2.train.grpo.policy_update`` with one PPO epoch: ``Policy.logprobs`` +
  ``r1v2.algos.grpo.policy_loss`` with the KL term + backward, gradient clipping, one AdamW
  step) for trainable=adapter (r1v2's default, the paper's best) and trainable=all (full
  fine-tune, the field's usual reference). tokens/s/GPU = all tokens of the batch (prompt,
  image tokens included, + completion) / (update time x GPUs). MFU = model FLOPs / (time x
  peak), with model FLOPs = c x params x tokens per part: c = 6 for a part that trains
  (forward 2, activation gradients 2, weight gradients 2), 4 for a frozen part that gradients
  must cross (the LLM under trainable=adapter), 2 for a frozen part upstream of everything
  that trains (the vision encoder under trainable=adapter). The LLM counts its tokens (tied
  embeddings once), the vision encoder its patch tokens (+1 class token) once per image; both
  MFU with and without the vision encoder are given. Attention's quadratic term is not counted
  (the 6ND convention);
- ``step/<trainable>/<engine>``: a full step = generation by that engine + reference
  log-probs + update, composed from the timings above (rewards and prompt preprocessing
  excluded), its tokens/s/GPU (EasyR1's
  and verl's ``perf/throughput``) and the share of the step each phase takes;
- peak memory per phase: ``torch.cuda.max_memory_allocated`` (reset before each phase; the
  policy and the reference model stay resident throughout, as in ``r1v2 grpo``).

Each measurement is warmed up once and timed between ``torch.cuda.synchronize`` calls; an
out-of-memory error is reported in its row and the next measurement runs. The run prints
progress, then notes with the field's published numbers, then a markdown table (last), and
writes the same as JSON.

Run (one GPU; a few minutes on an H200, under 8; nothing is downloaded, so
``HF_HUB_OFFLINE=1`` is safe):

    python bench/gpu.py --json bench/gpu_results.json

``--quick`` is sized to finish in under 5 minutes on one H100, not yet timed there (the
engines of :data:`QUICK_ENGINES`, 256 new tokens, one timed update), and runs ``--check``
first: on a tiny fp32 model on the same device, whether ``compiled`` and ``compiled_dynamic``
give the transformers engine's tokens, greedy and sampled for a seed (``check/*`` rows, their
own table). ``--dry-run`` runs the same code on the CPU
with tiny shapes in fp32 (about a minute);
``--peak-tflops`` overrides the peak looked up from the card's name; ``--help`` lists the rest.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from r1v2.algos.grpo import group_advantages, loss_normalizer, policy_loss
from r1v2.model.freeze import MODES, model_parts, set_trainable
from r1v2.model.policy import Policy, PromptBatch, SamplingConfig
from r1v2.rollout import (
    CompiledEngine,
    ContinuousBatchingEngine,
    RolloutEngine,
    TransformersEngine,
)

GIB = 1024**3

# bf16 dense peak TFLOP/s by card name (first match wins); H100 and H200 SXM share the peak.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
)
CPU_NOMINAL_TFLOPS = 1.0  # dry run only: a nominal peak so that MFU is a number

# EasyR1's published baselines (verl metrics): perf/throughput = all tokens / (step x GPUs).
REFERENCE = {
    "tokens_per_s_per_gpu": (1600, 2000),
    "actor_mfu": (0.16, 0.23),
    "model": "Qwen2.5-VL-7B (a 7B VLM, about 8.3B parameters with its vision encoder)",
    "params": 8.29e9,
    "hardware": "8 x H100",
}


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Model shapes and workload of one run."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    image: int
    patch: int
    downsample: float
    prompts: int
    group_size: int
    new_tokens: int
    prompt_words: int
    micro_batch: int
    repeats: int
    dtype: str

    @property
    def image_tokens(self) -> int:
        return int(self.image // self.patch * self.downsample) ** 2


GPU_SHAPES = Shapes(
    vocab=151936,
    hidden=1536,
    layers=28,
    heads=12,
    kv_heads=2,
    intermediate=8960,
    vision_hidden=1024,
    vision_layers=24,
    vision_heads=16,
    vision_intermediate=4096,
    image=448,
    patch=14,
    downsample=0.5,
    prompts=8,
    group_size=8,
    new_tokens=512,
    prompt_words=64,
    micro_batch=16,
    repeats=3,
    dtype="bfloat16",
)
DRY_SHAPES = Shapes(
    vocab=512,
    hidden=64,
    layers=2,
    heads=4,
    kv_heads=2,
    intermediate=128,
    vision_hidden=32,
    vision_layers=1,
    vision_heads=2,
    vision_intermediate=64,
    image=64,
    patch=8,
    downsample=0.5,
    prompts=2,
    group_size=2,
    new_tokens=8,
    prompt_words=8,
    micro_batch=2,
    repeats=1,
    dtype="float32",
)


# ---- model ---------------------------------------------------------------------------------


def make_tokenizer(vocab: int):
    """r1v2's word-level tokenizer with exactly ``vocab`` tokens and InternVL's image tokens."""
    from transformers import TokenizersBackend

    from r1v2.model.assemble import IMAGE_TOKENS
    from r1v2.toy.tokenizer import SPECIAL_TOKENS, word_tokenizer

    image = list(IMAGE_TOKENS.values())
    fixed = len(SPECIAL_TOKENS) + len(image) + 3 + 2  # specials, image, roles, think tags
    words = ["<think>", "</think>", *(f"w{i}" for i in range(vocab - fixed))]
    tokenizer = word_tokenizer(words, extra_special_tokens=image)
    # Named image tokens are only registered at construction (as r1v2.model.assemble does).
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return TokenizersBackend.from_pretrained(tmp, **IMAGE_TOKENS)


def build_policy(s: Shapes, device: torch.device) -> Policy:
    """A random-weight InternVL model of shapes ``s`` and its processor, as a Policy."""
    from transformers import (
        GenerationConfig,
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        InternVLVisionConfig,
        Qwen2Config,
    )

    from r1v2.model.assemble import IMAGE_CONTEXT_TOKEN, IMAGENET_MEAN, IMAGENET_STD
    from r1v2.model.tokenizer import CHATML_THINK_TEMPLATE

    tokenizer = make_tokenizer(s.vocab)
    vision = InternVLVisionConfig(
        hidden_size=s.vision_hidden,
        num_hidden_layers=s.vision_layers,
        num_attention_heads=s.vision_heads,
        intermediate_size=s.vision_intermediate,
        image_size=s.image,
        patch_size=s.patch,
    )
    text = Qwen2Config(
        vocab_size=max(s.vocab, len(tokenizer)),
        hidden_size=s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        intermediate_size=s.intermediate,
        max_position_embeddings=32768,
        rope_theta=1e6,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = InternVLConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_CONTEXT_TOKEN),
        image_seq_length=s.image_tokens,
        downsample_ratio=s.downsample,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = InternVLForConditionalGeneration._from_config(config, dtype=getattr(torch, s.dtype))
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    size = {"height": s.image, "width": s.image}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(
            size=size,
            crop_to_patches=False,
            max_patches=1,
            image_mean=IMAGENET_MEAN,
            image_std=IMAGENET_STD,
        ),
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(
            size=size, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
        ),
        image_seq_length=s.image_tokens,
        chat_template=CHATML_THINK_TEMPLATE,
    )
    return Policy(model, processor)


def make_items(s: Shapes, seed: int = 0) -> list[tuple[str, list[Image.Image]]]:
    """``P`` prompts: ``prompt_words`` random vocabulary words and one random image each."""
    rng = np.random.default_rng(seed)
    words = s.vocab - 20  # stay among the w<i> words
    items = []
    for _ in range(s.prompts):
        question = " ".join(f"w{i}" for i in rng.integers(0, words, s.prompt_words))
        pixels = rng.integers(0, 256, (s.image, s.image, 3), dtype=np.uint8)
        items.append((question, [Image.fromarray(pixels)]))
    return items


def unique_params(modules) -> int:
    seen = {id(p): p for m in modules for p in m.parameters()}  # a tied LM head counts once
    return sum(p.numel() for p in seen.values())


# ---- rollout engines -----------------------------------------------------------------------


def transformers_engine(policy: Policy, sampling: SamplingConfig) -> RolloutEngine:
    """transformers ``generate`` through r1v2's TransformersEngine, all sequences at once.

    Fixed lengths: Policy leaves ``min_new_tokens`` unset, and ``generate`` fills unset values
    from the model's ``generation_config``, so setting it there masks EOS until the end.
    """
    policy.model.generation_config.min_new_tokens = sampling.max_new_tokens
    return TransformersEngine(policy)


def compiled_engine(policy: Policy, sampling: SamplingConfig) -> RolloutEngine:
    """r1v2's CompiledEngine with ``share_prefix`` on, as ``r1v2 grpo`` runs it on CUDA: a
    static KV cache, the decode step captured as CUDA graphs (on the CPU of a dry run the same
    code without graphs). Fixed lengths: EOS is switched off."""
    return CompiledEngine(policy, share_prefix=True, ignore_eos=True, static_cache=True)


def compiled_dynamic_engine(policy: Policy, sampling: SamplingConfig) -> RolloutEngine:
    """CompiledEngine on transformers' dynamic KV cache (``static_cache=False``): one
    ``dynamic=True`` graph for every length, no CUDA graphs."""
    return CompiledEngine(policy, share_prefix=True, ignore_eos=True, static_cache=False)


def continuous_engine(policy: Policy, sampling: SamplingConfig) -> RolloutEngine:
    """transformers' continuous batching through r1v2's ContinuousBatchingEngine. Fixed
    lengths: the manager drops ``min_new_tokens``, so EOS is switched off instead."""
    return ContinuousBatchingEngine(policy, ignore_eos=True)


# name -> factory(policy, sampling) -> engine. engine=vllm has no row: the GPU machine has no
# vLLM (and no network to install it), and its VLM path is untested against real vLLM.
ENGINES: dict[str, Callable[[Policy, SamplingConfig], RolloutEngine]] = {
    "transformers": transformers_engine,
    "compiled": compiled_engine,
    "compiled_dynamic": compiled_dynamic_engine,
    "continuous": continuous_engine,
}
# Engines that run each prompt's prefill once for its G samples (FLOPs count it once).
PREFILL_ONCE = {"compiled", "compiled_dynamic", "continuous"}
# --quick: every engine but the second compile (a minute or two of its own on a GPU)
QUICK_ENGINES = ("transformers", "compiled", "continuous")


# ---- measuring -----------------------------------------------------------------------------


class Device:
    """Synchronised timing and per-phase peak memory on CUDA (or, dry run, the CPU)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - start

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:  # peak resident set; the reset is refused on some kernels (then process-wide)
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass

    def peak_gib(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / GIB
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / GIB
        return math.nan

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower()
    )


def guarded(dev: Device, name: str, kind: str, fn: Callable[[], dict]) -> dict:
    """``fn()``'s row, or an error row when it runs out of memory (then memory is freed)."""
    log(f"[{name}] ...")
    dev.reset_peak()
    error = None
    try:
        row = fn()
    except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
        if not is_oom(e):
            raise
        error = f"out of memory: {str(e).splitlines()[0][:200]}"
    if error is not None:
        dev.free()
        log(f"[{name}] {error}; continuing")
        return {"name": name, "kind": kind, "error": error}
    row = {"name": name, "kind": kind, **row, "peak_mem_gib": dev.peak_gib()}
    log(f"[{name}] " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k not in ("name",)))
    return row


def log(message: str) -> None:
    print(message, flush=True)


@dataclasses.dataclass
class Batch:
    """A rollout batch as the update sees it (group-major; sample i answers prompt i // G)."""

    prompts: PromptBatch
    index: torch.Tensor  # [N]
    ids: torch.Tensor  # [N, Tc]
    mask: torch.Tensor  # [N, Tc] bool

    def tokens(self) -> tuple[int, int]:
        """(prompt tokens, completion tokens) over the batch, padding excluded."""
        prompt = self.prompts.attention_mask.sum(dim=1)[self.index.cpu()]  # [N]
        return int(prompt.sum()), int(self.mask.sum())


class Bench:
    def __init__(self, s: Shapes, policy: Policy, dev: Device, peak_tflops: float):
        self.s = s
        self.policy = policy
        self.dev = dev
        self.peak = peak_tflops * 1e12
        parts = model_parts(policy.model)
        self.params = {name: unique_params(mods) for name, mods in parts.items()}
        self.vision_tokens = (s.image // s.patch) ** 2 + 1  # patches + class token, per tile
        self.ref_model = None
        self.ref_logps = None

    # -- FLOPs

    def flops(self, batch: Batch, coef: dict[str, int], llm_tokens: int) -> dict[str, float]:
        """Model FLOPs per part: coef x params x tokens (images counted once per tile)."""
        tiles = sum(batch.prompts.tiles)
        return {
            "llm": coef["llm"] * self.params["llm"] * llm_tokens,
            "adapter": coef["adapter"] * self.params["adapter"] * tiles * self.s.image_tokens,
            "vision": coef["vision"] * self.params["vision"] * tiles * self.vision_tokens,
        }

    def rates(self, flops: dict[str, float], seconds: float) -> dict[str, float]:
        total = sum(flops.values())
        return {
            "tflops": total / seconds / 1e12,
            "mfu": total / seconds / self.peak,
            "mfu_llm": flops["llm"] / seconds / self.peak,
        }

    # -- phases

    def rollout(self, engine_name: str, prompts: PromptBatch) -> tuple[dict, Batch]:
        s = self.s
        factory = ENGINES[engine_name]
        sampling = SamplingConfig(max_new_tokens=s.new_tokens, temperature=1.0)
        engine = factory(self.policy, sampling)
        # Warmed up on the engine it times. A static cache's graphs are per (batch, length)
        # bucket: its warm-up runs the timed length, the others' a short one.
        static = getattr(engine, "static_cache", False)
        warm = SamplingConfig(
            max_new_tokens=s.new_tokens if static else min(16, s.new_tokens), temperature=1.0
        )
        engine.generate(prompts, warm, group_size=s.group_size)
        torch.manual_seed(1)
        out, seconds = self.dev.time(
            lambda: engine.generate(prompts, sampling, group_size=s.group_size)
        )
        batch = Batch(out.prompts, out.prompt_index, out.completion_ids, out.completion_mask)
        prompt_tokens, completion_tokens = batch.tokens()
        # Prefill runs every sample's prompt (embeddings repeated G times), or each prompt
        # once (PREFILL_ONCE); frozen: c = 2.
        prefill = prompt_tokens // s.group_size if engine_name in PREFILL_ONCE else prompt_tokens
        flops = self.flops(batch, {"llm": 2, "adapter": 2, "vision": 2}, prefill)
        flops["llm"] += 2 * self.params["llm"] * completion_tokens
        lengths = batch.mask.sum(dim=1)
        row = {
            "seconds": seconds,
            "tokens": completion_tokens,
            "tokens_per_s": completion_tokens / seconds,
            "sequences": batch.ids.shape[0],
            "min_completion_tokens": int(lengths.min()),
            **{k: v for k, v in self.rates(flops, seconds).items() if k != "mfu_llm"},
        }
        return row, batch

    def reference(self, batch: Batch) -> dict:
        if self.ref_model is None:
            self.ref_model = copy.deepcopy(self.policy.model).eval().requires_grad_(False)

        def score():
            with torch.no_grad():
                return self.policy.logprobs(
                    batch.prompts,
                    batch.ids,
                    batch.mask,
                    prompt_index=batch.index,
                    micro_batch_size=self.s.micro_batch,
                    model=self.ref_model,
                )

        score()
        seconds = []
        for _ in range(self.s.repeats):
            self.ref_logps, dt = self.dev.time(score)
            seconds.append(dt)
        tokens = sum(batch.tokens())
        t = float(np.mean(seconds))
        flops = self.flops(batch, {"llm": 2, "adapter": 2, "vision": 2}, tokens)
        return {
            "seconds": t,
            "tokens": tokens,
            "tokens_per_s": tokens / t,
            **{k: v for k, v in self.rates(flops, t).items() if k != "mfu_llm"},
        }

    def update(self, trainable: str, batch: Batch) -> dict:
        """One GRPO update, as r1v2.train.grpo.policy_update does it with ppo_epochs=1."""
        policy, s = self.policy, self.s
        report = set_trainable(policy.model, trainable)
        params = [p for p in policy.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-6)
        device = policy.device
        n = batch.ids.shape[0]
        rewards = torch.rand(n, generator=torch.Generator().manual_seed(0))
        advantages = group_advantages(rewards, s.group_size).to(device)  # [N]
        mask = batch.mask.to(device)  # [N, Tc]
        ids = batch.ids.to(device)  # [N, Tc]
        ref = self.ref_logps.to(device) if self.ref_logps is not None else None
        normalizer = loss_normalizer(mask)

        def step():
            optimizer.zero_grad(set_to_none=True)
            for start in range(0, n, s.micro_batch):
                sl = slice(start, min(start + s.micro_batch, n))
                logps = policy.logprobs(
                    batch.prompts, ids[sl], mask[sl], prompt_index=batch.index[sl]
                )
                loss, _ = policy_loss(
                    logps,
                    logps.detach(),  # one PPO epoch: old log-probs = these, detached
                    advantages[sl],
                    mask[sl],
                    ref_logps=None if ref is None else ref[sl],
                    kl_coef=0.0 if ref is None else 1e-3,  # r1v2 grpo's default beta
                    kl_clip=10.0,
                    normalizer=normalizer,
                )
                loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        try:
            policy.model.train()
            step()
            seconds = [self.dev.time(step)[1] for _ in range(s.repeats)]
        finally:
            policy.model.eval()
            optimizer.zero_grad(set_to_none=True)
        t = float(np.mean(seconds))
        tokens = sum(batch.tokens())
        flops = self.flops(batch, flop_coefficients(trainable), tokens)
        return {
            "seconds": t,
            "tokens": tokens,
            "tokens_per_s_per_gpu": tokens / (t * 1),  # one GPU
            **self.rates(flops, t),
            "trainable_params": report.trainable,
        }


def flop_coefficients(trainable: str) -> dict[str, int]:
    """FLOPs per parameter per token: forward 2, + activation gradients 2 when the part or a
    part before it trains, + weight gradients 2 when it trains (data flows vision ->
    adapter -> llm)."""
    order = ("vision", "adapter", "llm")
    trains = set(order) if trainable == "all" else set(MODES[trainable])
    coef = {}
    for i, part in enumerate(order):
        crossed = any(p in trains for p in order[: i + 1])  # gradients flow through it
        coef[part] = 2 + 2 * crossed + 2 * (part in trains)
    return coef


def step_row(trainable: str, engine: str, rollout: dict, reference: dict, update: dict) -> dict:
    """A full step composed from its phases' timings (generation by ``engine``)."""
    phases = {
        "generation": rollout["seconds"],
        "reference": reference["seconds"],
        "update": update["seconds"],
    }
    total = sum(phases.values())
    return {
        "name": f"step/{trainable}/{engine}",
        "kind": "step",
        "seconds": total,
        "tokens": update["tokens"],
        "tokens_per_s_per_gpu": update["tokens"] / (total * 1),  # one GPU
        **{f"{k}_share": v / total for k, v in phases.items()},
        "peak_mem_gib": max(
            rollout["peak_mem_gib"], reference["peak_mem_gib"], update["peak_mem_gib"]
        ),
    }


def step_rows(rollouts: dict[str, dict], reference: dict, updates: dict[str, dict]) -> list[dict]:
    """A step row per trainable and engine (an error row where one of its phases failed)."""
    rows = []
    for trainable, update in updates.items():
        for name, rollout in rollouts.items():
            parts = (rollout, reference, update)
            if any("error" in r for r in parts):
                error = {"error": "a phase failed"}
                rows.append({"name": f"step/{trainable}/{name}", "kind": "step", **error})
            else:
                rows.append(step_row(trainable, name, *parts))
    return rows


def random_batch(policy: Policy, prompts: PromptBatch, s: Shapes) -> Batch:
    """Stand-in completions (when a rollout failed): random words, full length."""
    n = len(prompts) * s.group_size
    gen = torch.Generator().manual_seed(0)
    low = policy.tokenizer.convert_tokens_to_ids("w0")
    ids = torch.randint(low, low + s.vocab - 20, (n, s.new_tokens), generator=gen)
    index = torch.arange(len(prompts)).repeat_interleave(s.group_size)
    return Batch(prompts, index, ids, torch.ones_like(ids, dtype=torch.bool))


# ---- report --------------------------------------------------------------------------------

COLUMNS = (
    "measurement",
    "tokens counted",
    "seconds",
    "tokens",
    "tokens/s/GPU",
    "TFLOP/s",
    "MFU",
    "MFU (LLM only)",
    "gen / ref / update",
    "peak GiB",
)


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return f"{v:,d}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _pct(v: float | None) -> str:
    if v is None:
        return ""
    return f"{100 * v:.1f}%" if 100 * v >= 0.1 else f"{100 * v:.2g}%"


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def table(rows: list[dict]) -> str:
    """One markdown row per measurement; empty cells where a figure does not apply."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        if row["kind"] == "check":  # check_table's
            continue
        if "error" in row:
            cells = [row["name"], row["error"]] + [""] * (len(COLUMNS) - 2)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        rate = row.get("tokens_per_s_per_gpu", row.get("tokens_per_s"))
        shares = [row.get(f"{k}_share") for k in ("generation", "reference", "update")]
        cells = [
            row["name"],
            "completion" if row["kind"] == "rollout" else "prompt + completion",
            _fmt(row["seconds"]),
            _fmt(row["tokens"]),
            _fmt(rate),
            _fmt(row["tflops"]) if "tflops" in row else "",
            _pct(row.get("mfu")),
            _pct(row.get("mfu_llm")),
            " / ".join(_pct(x) for x in shares) if shares[0] is not None else "",
            _fmt(row["peak_mem_gib"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_table(rows: list[dict]) -> str:
    """The check/* rows as markdown ('' when there are none)."""
    checks = [r for r in rows if r["kind"] == "check"]
    if not checks:
        return ""
    lines = [
        "| check | greedy = transformers | sampled (seed 7) = transformers | compiled |",
        "|---|---|---|---|",
    ]
    for r in checks:

        def verdict(kind: str, r=r) -> str:
            if r[f"{kind}_equal"]:
                return "equal"
            return f"differs from token {r[f'{kind}_first_difference']}"

        compiled = "yes" if r["compile_failed"] is None else f"no: {r['compile_failed']}"
        lines.append(f"| {r['name']} | {verdict('greedy')} | {verdict('sampled')} | {compiled} |")
    return "\n".join(lines)


def notes(meta: dict, rows: list[dict]) -> list[str]:
    p = meta["params"]
    total = sum(p.values())
    ratio = REFERENCE["params"] / total
    lo, hi = REFERENCE["tokens_per_s_per_gpu"]
    mlo, mhi = REFERENCE["actor_mfu"]
    w = meta["workload"]
    out = [
        f"device: {meta['device']} ({meta['dtype']}); peak {meta['peak_tflops']:g} TFLOP/s "
        f"({meta['peak_source']})",
        f"model: random-weight InternVL, LLM {_count(p['llm'])} (tied embeddings counted once) "
        f"+ vision {_count(p['vision'])} + adapter {_count(p['adapter'])} = {_count(total)} "
        f"parameters; attention {meta['attn_implementation']}",
        f"workload: {w['prompts']} prompts x G={w['group_size']}, 1 tile each "
        f"({w['image_tokens']} image tokens), {w['mean_prompt_tokens']:.0f} prompt tokens "
        f"per sample on average, {w['new_tokens']} new tokens per completion "
        f"(fixed lengths: {meta['fixed_lengths']}), micro-batch {w['micro_batch']}, "
        f"update timings averaged over {w['repeats']} after a warm-up",
        "FLOPs: c x params x tokens per part, c = 6 for a part that trains, 4 for a frozen part "
        "gradients cross, 2 forward only; 'MFU' counts LLM + vision + adapter, 'MFU (LLM only)' "
        "the LLM alone (the vision encoder sees each image once per update: "
        f"{meta['vision_tokens_per_tile']} patch tokens a tile); attention's quadratic term "
        f"(about {100 * meta['attention_extra']:.0f}% more here) is not counted",
        "r1v2 re-encodes all P images in each micro-batch of the update (Policy.logprobs per "
        "micro-batch); the vision FLOPs above count each image once",
        f"rollout engines: {', '.join(meta['engines'])}; compiled = a static KV cache (batch "
        "and length in buckets) and the decode step compiled with mode=reduce-overhead (CUDA "
        "graphs on CUDA), compiled_dynamic = the dynamic cache and a dynamic=True graph, both "
        "with share_prefix on and compiled in the untimed warm-up (the static one's at the "
        "timed length); compiled and continuous batching prefill each prompt once for its G "
        "samples; transformers uses CUDA graphs and its decode fast path for continuous "
        "batching only with flash attention (here: "
        f"{'available' if meta.get('flash_attn') else 'not installed, so neither'})",
        "step rows = generation + reference + update timings; their tokens/s/GPU is the "
        "definition of EasyR1's/verl's perf/throughput (all tokens / (step time x GPUs))",
        f"field reference: EasyR1's baselines give {lo:,}-{hi:,} tokens/s/GPU at "
        f"{100 * mlo:.0f}-{100 * mhi:.0f}% actor MFU for {REFERENCE['model']} on "
        f"{REFERENCE['hardware']} (vLLM rollouts, FSDP). This model has {_count(total)} "
        f"parameters, {ratio:.1f}x fewer, so per-token FLOPs are {ratio:.1f}x lower: the same "
        f"MFU would give about {lo * ratio:,.0f}-{hi * ratio:,.0f} tokens/s/GPU. Compare the "
        "step rows with that range and the update rows' MFU (trainable=all) with their MFU",
        f"optimizer: AdamW on the {meta['dtype']} parameters, as r1v2 grpo with that dtype "
        "does; frameworks that keep fp32 master weights and states (EasyR1's FSDP) hold "
        "about twice the memory per trained parameter",
    ]
    failed = [r["name"] for r in rows if "error" in r]
    if failed:
        out.append(f"failed: {', '.join(failed)} (see the table)")
    return out


# ---- main ----------------------------------------------------------------------------------


def flash_attn_available() -> bool:
    """Whether transformers finds a flash attention 2 or 3 package (what continuous batching
    needs for its CUDA graphs and decode fast path)."""
    from transformers.utils import is_flash_attn_2_available

    try:
        from transformers.utils import is_flash_attn_3_available
    except ImportError:  # an older transformers
        return bool(is_flash_attn_2_available())
    return bool(is_flash_attn_2_available() or is_flash_attn_3_available())


def peak_for(device: torch.device) -> tuple[float, str]:
    if device.type != "cuda":
        return CPU_NOMINAL_TFLOPS, "nominal, CPU dry run: MFU is not meaningful"
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_TFLOPS:
        if key in name:
            return peak, f"bf16 dense peak of {key}"
    log(f"warning: no known peak for {name!r}; using 989 TFLOP/s (set --peak-tflops)")
    return 989.0, "unknown card, H100/H200 peak assumed"


WORKLOAD = ("prompts", "group_size", "new_tokens", "prompt_words", "micro_batch", "repeats")
QUICK = {"new_tokens": 256, "repeats": 1}  # --quick: the same shapes, half the completion


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default="bench/gpu_results.json", help="where to write the JSON")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU, fp32")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="sized for under 5 minutes on an H100 (not yet timed there): the engines "
        f"{', '.join(QUICK_ENGINES)}, {QUICK['new_tokens']} new tokens, one timed update; "
        "with --check",
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="first compare the engines' tokens on a tiny fp32 model on the same device: "
        "greedy, and sampled for a seed (check/* rows)",
    )
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (TFLOP/s)")
    ap.add_argument("--engines", nargs="+", default=None, choices=list(ENGINES))
    ap.add_argument("--trainable", nargs="+", default=["adapter", "all"], choices=list(MODES))
    for field in WORKLOAD:
        ap.add_argument("--" + field.replace("_", "-"), type=int, default=None)
    args = ap.parse_args(argv)
    if args.engines is None:
        args.engines = list(QUICK_ENGINES if args.quick else ENGINES)
    args.check = args.check or args.quick
    return args


def workload(args: argparse.Namespace) -> Shapes:
    """The shapes and workload of a run: the dry run's or the GPU's, --quick's sizes, then
    the flags given."""
    base = DRY_SHAPES if args.dry_run else GPU_SHAPES
    values = dict(QUICK) if args.quick and not args.dry_run else {}
    values |= {k: getattr(args, k) for k in WORKLOAD if getattr(args, k) is not None}
    return dataclasses.replace(base, **values)


CHECK_ENGINES = {
    "compiled": lambda policy: CompiledEngine(policy, share_prefix=True, static_cache=True),
    "compiled_dynamic": lambda policy: CompiledEngine(
        policy, share_prefix=True, static_cache=False
    ),
}


def check_engines(device: torch.device) -> list[dict]:
    """``check/<engine>`` rows: on a tiny fp32 InternVL on ``device``, whether each compiled
    engine gives TransformersEngine's tokens, greedy (3 prompts x 3 samples, 40 tokens) and
    sampled for one seed (temperature 0.8, top-p 0.9), and the first position where a row
    differs (None: none does). Stopping at EOS, as in training."""
    s = dataclasses.replace(DRY_SHAPES, prompts=3)
    policy = build_policy(s, device)
    prompts = policy.encode(make_items(s, seed=1))
    settings = {
        "greedy": SamplingConfig(max_new_tokens=40, do_sample=False),
        "sampled": SamplingConfig(max_new_tokens=40, temperature=0.8, top_p=0.9),
    }
    expected = {}
    for kind, sampling in settings.items():
        torch.manual_seed(7)
        expected[kind] = TransformersEngine(policy).generate(prompts, sampling, group_size=3)
    rows = []
    for name, factory in CHECK_ENGINES.items():
        engine, row = factory(policy), {"name": f"check/{name}", "kind": "check"}
        for kind, sampling in settings.items():
            torch.manual_seed(7)
            got = engine.generate(prompts, sampling, group_size=3)
            row[f"{kind}_equal"], row[f"{kind}_first_difference"] = compare(expected[kind], got)
        row["compile_failed"] = engine.failed
        log(f"[{row['name']}] " + ", ".join(f"{k}={v}" for k, v in row.items() if k != "name"))
        rows.append(row)
    return rows


def compare(a, b) -> tuple[bool, int | None]:
    """Whether two rollouts' completions are equal, and the first token position where
    any row differs (None when none does)."""
    x, y = a.completion_ids * a.completion_mask, b.completion_ids * b.completion_mask
    width = max(x.shape[1], y.shape[1])
    x = torch.nn.functional.pad(x, (0, width - x.shape[1]))
    y = torch.nn.functional.pad(y, (0, width - y.shape[1]))
    columns = (x != y).any(dim=0).nonzero()
    first = None if len(columns) == 0 else int(columns[0])
    return first is None, first


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    s = workload(args)
    # Every engine, bucket and model here is a compile of the same forward: keep them all
    # compiled (past torch's default limit a frame silently runs eagerly).
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
    if args.dry_run:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        log("no CUDA device: use --dry-run for the CPU")
        return 2
    peak, peak_source = peak_for(device)
    if args.peak_tflops is not None:
        peak, peak_source = args.peak_tflops, "--peak-tflops"
    dev = Device(device)
    rows: list[dict] = []
    if args.check:
        log("[check] the engines' tokens on a tiny fp32 model ...")
        rows += check_engines(device)
        dev.free()

    log(f"building the model ({'dry run' if args.dry_run else 'real shapes'}) on {device} ...")
    policy, seconds = dev.time(lambda: build_policy(s, device))
    log(f"built in {seconds:.1f} s")
    bench = Bench(s, policy, dev, peak)
    prompts = policy.encode(make_items(s))

    batch = None
    rollouts = {}
    for name in args.engines:
        holder = {}

        def run_rollout(name=name, holder=holder):
            row, holder["batch"] = bench.rollout(name, prompts)
            return row

        row = guarded(dev, f"rollout/{name}", "rollout", run_rollout)
        rows.append(row)
        rollouts[name] = row
        if batch is None and "batch" in holder:
            batch = holder["batch"]
        holder.clear()
        dev.free()
    if batch is None:
        log("no rollout succeeded: the other phases use random completions of full length")
        batch = random_batch(policy, prompts, s)
    fixed = bool((batch.mask.sum(dim=1) == s.new_tokens).all())
    if not fixed:
        log("warning: completions have different lengths (min_new_tokens not applied)")

    reference = guarded(dev, "reference", "reference", lambda: bench.reference(batch))
    rows.append(reference)
    dev.free()
    updates = {}
    for trainable in args.trainable:
        updates[trainable] = guarded(
            dev, f"update/{trainable}", "update", lambda t=trainable: bench.update(t, batch)
        )
        rows.append(updates[trainable])
        dev.free()
    rows += step_rows(rollouts, reference, updates)

    prompt_tokens, _ = batch.tokens()
    import transformers

    meta = {
        "device": torch.cuda.get_device_name(device) if dev.cuda else platform.processor() or "cpu",
        "dtype": s.dtype,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "dry_run": args.dry_run,
        "quick": args.quick,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "shapes": dataclasses.asdict(s),
        "params": bench.params,
        "attn_implementation": policy.model.config._attn_implementation,
        "flash_attn": flash_attn_available(),
        "rope_parameters": getattr(policy.model.config.text_config, "rope_parameters", None),
        "vision_tokens_per_tile": bench.vision_tokens,
        "fixed_lengths": fixed,
        "workload": {
            "prompts": s.prompts,
            "group_size": s.group_size,
            "image_tokens": s.image_tokens,
            "mean_prompt_tokens": prompt_tokens / batch.ids.shape[0],
            "new_tokens": s.new_tokens,
            "micro_batch": s.micro_batch,
            "repeats": s.repeats,
        },
        # PaLM's 12 L d T per token over 6 N, T = mean sequence length
        "attention_extra": 12
        * s.layers
        * s.hidden
        * (sum(batch.tokens()) / batch.ids.shape[0])
        / (6 * bench.params["llm"]),
        "engines": list(args.engines),
        "reference": REFERENCE,
        "wall_seconds": time.perf_counter() - started,
    }
    meta["notes"] = notes(meta, rows)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str) + "\n")
    log(f"\nwrote {out} ({meta['wall_seconds']:.0f} s in all)\n")
    for line in meta["notes"]:
        log(f"- {line}")
    log("")
    if check_table(rows):
        log(check_table(rows) + "\n")
    log(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
