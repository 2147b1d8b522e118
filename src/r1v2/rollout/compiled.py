"""Compiled decoding: a sampling loop whose decode step runs through ``torch.compile``,
behind :class:`r1v2.rollout.RolloutEngine`.

A decode step feeds each sequence one new token against its KV cache. On small models, and
on any model whose batch is small for its device, the step's time goes to Python and to
launching dozens of small kernels, not to arithmetic: at the toy's sizes a 2-layer model's
step runs about 60 modules, its mask and rotary code, in 2-5 ms on a CPU whatever the batch
size (1 to 128 sequences), and transformers ``generate`` adds about 1 ms per token of its own
bookkeeping. This engine

- prefills eagerly, as :class:`r1v2.rollout.TransformersEngine` does (the vision features
  once per prompt; with ``share_prefix`` each prompt once, its KV cache expanded to its
  samples: :meth:`r1v2.model.policy.Policy.generate`, which calls :meth:`decode` per batch);
- runs every decode step (``input_ids`` ``[B, 1]``, the dynamic KV cache) through
  ``torch.compile(model, dynamic=True)``: one graph serves every cache length and prompt
  length (a first change of batch size may recompile once, after which the batch size is
  symbolic too);
- or, with ``static_cache`` (the default on CUDA but for sliding-window attention, which
  it refuses: Gemma 3), decodes against transformers' ``StaticCache`` with the batch and
  the cache length rounded up to buckets (:class:`StaticDecode`), so that every step input
  has one shape per bucket, and compiles the step with ``mode="reduce-overhead"``: on CUDA
  it is captured once per bucket (a bucket is a recompile: GRPO's fixed batch and the
  prompts' few lengths make a few) and replayed as a CUDA graph (a launch-bound decode step
  then costs one graph launch); on a CPU the same code runs as a plain compiled graph
  (tested there; with no graphs to replay it is off by default; ``bench/static_cache.py``
  compares the two caches);
- samples as ``generate`` does: float32 logits, transformers' own temperature, top-k and
  top-p warpers in ``generate``'s order, a softmax and one ``torch.multinomial`` over the
  whole batch per step (finished rows included), the pad id after a row's first EOS, a stop
  when every row has ended or ``max_new_tokens`` is reached. A seed therefore draws the same
  random numbers as the transformers engine; the compiled kernels round floats differently,
  so greedy outputs agree, and sampled ones until a near tie. Positions count real tokens
  only, as in scoring (``generate`` counts the left padding; rotary attention depends only on
  position differences, so the two agree up to rounding).

The first call compiles (about 30 s on 2 CPU cores at the toy's sizes with an empty cache,
a few seconds once torch's on-disk cache holds the kernels; bench/RESULTS.md). The
weights are graph inputs, so training's in-place updates and the reference's in-place swap
reach the compiled step without recompiling. A model whose forward the compiler cannot
trace decodes eagerly after a one-line warning. Refused: a policy sharded across processes
(FSDP), and a streamer (use :class:`r1v2.rollout.TransformersEngine`).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

import torch
from transformers import StaticCache
from transformers.generation import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from r1v2.errors import R1V2Error
from r1v2.model.policy import (
    CACHE_KWARG,
    Policy,
    PromptInputs,
    SamplingConfig,
    kv_cache,
    prefill,
)
from r1v2.rollout.engine import TransformersEngine


class CompiledEngine(TransformersEngine):
    """Samples with a compiled decode step on the policy's model (shares its weights, so
    :meth:`sync_weights` has nothing to copy); ``share_prefix`` and ``batch_size`` as in
    :class:`r1v2.rollout.TransformersEngine`, whose ``generate`` it runs with
    :meth:`decode` in place of transformers ``generate``. ``ignore_eos``: never stop at EOS,
    every completion runs to ``max_new_tokens`` (for benchmarks). ``failed``: why compiling
    failed, after which decoding stays eager (None while it works)."""

    def __init__(
        self,
        policy: Policy,
        *,
        batch_size: int | None = None,
        share_prefix: bool = False,
        ignore_eos: bool = False,
        static_cache: bool | None = None,
    ):
        refuse_sharded(policy)
        super().__init__(policy, batch_size=batch_size, share_prefix=share_prefix)
        self.ignore_eos = ignore_eos
        sliding = has_sliding_layers(policy.model)
        if static_cache is None:
            static_cache = policy.device.type == "cuda" and not sliding
        if static_cache and sliding:
            raise R1V2Error(
                f"engine=compiled: static_cache does not serve {type(policy.model).__name__}'s "
                "sliding-window attention layers: set static_cache=false"
            )
        self.static_cache = static_cache
        # transformers before 5.17 takes the cache slots a forward writes (cache_position)
        self.by_slot = "cache_position" in inspect.signature(policy.model.forward).parameters
        self.failed: str | None = None
        self._compiled: Callable[..., Any] | None = None  # built on first use
        self._cache: tuple[tuple[int, int], StaticCache] | None = None  # static_cache's

    def _generate_options(self) -> dict[str, Any]:
        return {"share_prefix": self.share_prefix, "decode": self.decode}

    @torch.no_grad()
    def decode(
        self,
        inputs: PromptInputs,
        sampling: SamplingConfig,
        streamer: Any = None,
        cache: Any = None,
    ) -> torch.Tensor:
        """New token ids ``[B, T_new]`` (the pad id after each row's first EOS) for the ``B``
        prompts ``inputs`` (embeddings ``[B, Tp, H]``, left padding); ``cache``: the KV cache
        of their first ``Tp - 1`` tokens (``share_prefix``), or None."""
        refuse_sharded(self.policy)  # sharded after the engine was built
        if streamer is not None:
            raise R1V2Error("engine=compiled takes no streamer: use engine=transformers")
        policy = self.policy
        batch = inputs.embeds.shape[0]
        if self.static_cache:
            step = StaticDecode(self, inputs, sampling, cache)
        else:
            step = DynamicDecode(self, inputs, cache)
        logits = step.first_logits
        warpers = logits_warpers(sampling)
        eos_ids = [] if self.ignore_eos else policy.eos_ids
        eos = torch.tensor(eos_ids, dtype=torch.long, device=inputs.embeds.device)
        done = torch.zeros(batch, dtype=torch.bool, device=inputs.embeds.device)
        tokens: list[torch.Tensor] = []
        for t in range(sampling.max_new_tokens):
            token = sample(logits, sampling, warpers, tokens)  # [B]
            token = token.masked_fill(done, policy.pad_id)
            tokens.append(token)
            done |= torch.isin(token, eos)
            if t + 1 == sampling.max_new_tokens or bool(done.all()):
                break
            logits = step(token)
        return torch.stack(tokens, dim=1)

    def _step(self, **inputs: Any) -> Any:
        """One decode step: compiled, or eager once compiling has failed."""
        model = self.policy.model
        if self.failed is None:
            if self._compiled is None:
                self._compiled = self._compile(model)
            try:
                if self.static_cache:
                    torch.compiler.cudagraph_mark_step_begin()  # replays reuse output memory
                    # a graph per bucket: past torch's default of 8 a frame would run eagerly
                    with torch._dynamo.config.patch(**{RECOMPILE_LIMIT: STATIC_BUCKETS}):
                        return self._compiled(**inputs)
                return self._compiled(**inputs)
            except Exception as e:  # a forward torch.compile cannot trace: decode eagerly
                lines = str(e).strip().splitlines()
                self.failed = f"{type(e).__name__}: {lines[0][:200] if lines else ''}"
                print(
                    f"warning: engine=compiled could not compile {type(model).__name__}'s "
                    f"decode step ({self.failed}); decoding eagerly",
                    file=sys.stderr,
                )
        return model(**inputs)

    def _compile(self, model: torch.nn.Module) -> Callable[..., Any]:
        if self.static_cache:  # every shape fixed per bucket: CUDA graphs on CUDA
            return torch.compile(model, mode="reduce-overhead", dynamic=False)
        return torch.compile(model, dynamic=True)

    def static_cache_for(self, rows: int, length: int) -> StaticCache:
        """The engine's static KV cache for ``rows`` sequences of up to ``length`` tokens,
        emptied: kept while the bucket repeats (its tensors' addresses are what a captured
        graph reads and writes), replaced when it changes."""
        if self._cache is None or self._cache[0] != (rows, length):
            self._cache = (
                (rows, length),
                StaticCache(config=self.policy.model.config, max_cache_len=length),
            )
        self._cache[1].reset()
        return self._cache[1]


class DynamicDecode:
    """Decode steps against transformers' dynamic KV cache: the attention mask grows by a
    column per step, the compiled graph takes every length (``dynamic=True``)."""

    def __init__(self, engine: CompiledEngine, inputs: PromptInputs, cache: Any):
        model = engine.policy.model
        self.engine = engine
        positions = inputs.prompt_positions()  # [B, Tp] or [3, B, Tp]
        if cache is None:
            out = prefill(model, inputs)
        else:  # the prompts' last token (text) against the cache of the others
            out = model(
                inputs_embeds=inputs.embeds[:, -1:],
                attention_mask=inputs.mask.long(),
                position_ids=positions[..., -1:],
                use_cache=True,
                logits_to_keep=1,
                **{CACHE_KWARG: cache},
            )
        self.cache = kv_cache(out)
        self.first_logits = out.logits[:, -1].float()  # [B, V]
        self.attention = inputs.mask.long()  # [B, Tp + t]
        self.position = positions[..., -1:]  # [B, 1] or [3, B, 1]

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        """The logits ``[B, V]`` after feeding ``token`` ``[B]``."""
        self.attention = torch.cat([self.attention, self.attention.new_ones(len(token), 1)], 1)
        self.position = self.position + 1
        out = self.engine._step(
            input_ids=token[:, None],
            attention_mask=self.attention,
            position_ids=self.position,
            use_cache=True,
            **{CACHE_KWARG: self.cache},
        )
        return out.logits[:, -1].float()


class StaticDecode:
    """Decode steps against a static KV cache: the batch rounded up to a multiple of
    :data:`ROWS_BUCKET` (extra rows repeat the last prompt; their tokens are never sampled
    nor returned), the cache length (prompt + ``max_new_tokens``) to a multiple of
    :data:`LENGTH_BUCKET`, so a step's every input has one shape per bucket and the compiled
    step (``mode="reduce-overhead"``) runs as a CUDA graph on CUDA. The attention mask is the
    prompts' followed by ones to the cache's end, the same for every step: causal masking
    hides the slots not written yet."""

    def __init__(
        self, engine: CompiledEngine, inputs: PromptInputs, sampling: SamplingConfig, cache: Any
    ):
        model = engine.policy.model
        self.engine, self.batch = engine, inputs.embeds.shape[0]
        tp = inputs.mask.shape[1]
        rows = round_up(self.batch, ROWS_BUCKET)
        length = round_up(tp + sampling.max_new_tokens, LENGTH_BUCKET)
        device = inputs.embeds.device
        index = torch.arange(rows, device=device).clamp(max=self.batch - 1)  # [R]
        self.index = index
        inputs = inputs.rows(index)
        self.cache = engine.static_cache_for(rows, length)
        positions = inputs.prompt_positions()  # [R, Tp] or [3, R, Tp]
        self.attention = torch.cat(
            [inputs.mask.long(), inputs.mask.new_ones(rows, length - tp).long()], dim=1
        )  # [R, L]
        if cache is None:
            out = inputs.forward(
                model, use_cache=True, logits_to_keep=1, **self._slots(0, tp, device)
            )
        else:  # the shared prefix's cache copied in, then the prompts' last token
            slots = torch.arange(tp - 1, device=device)
            for i, layer in enumerate(cache.layers):
                self.cache.update(
                    layer.keys[index], layer.values[index], i, {"cache_position": slots}
                )
            out = model(
                inputs_embeds=inputs.embeds[:, -1:],
                attention_mask=self.attention,
                position_ids=positions[..., -1:],
                use_cache=True,
                logits_to_keep=1,
                **self._slots(tp - 1, tp, device),
            )
        self.first_logits = out.logits[: self.batch, -1].float()  # [B, V]
        self.position = positions[..., -1:]  # [R, 1] or [3, R, 1]
        self.slot = tp

    def _slots(self, start: int, stop: int, device: torch.device) -> dict[str, Any]:
        """The cache and, for transformers versions whose models take it, the cache slots
        ``start..stop - 1`` the forward writes (later versions count them in the cache)."""
        kwargs: dict[str, Any] = {CACHE_KWARG: self.cache}
        if self.engine.by_slot:
            kwargs["cache_position"] = torch.arange(start, stop, device=device)
        return kwargs

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        """The logits ``[B, V]`` after feeding ``token`` ``[B]`` (the extra rows repeat the
        last one's)."""
        self.position = self.position + 1
        out = self.engine._step(
            input_ids=token[self.index][:, None],
            attention_mask=self.attention,
            position_ids=self.position,
            use_cache=True,
            **self._slots(self.slot, self.slot + 1, token.device),
        )
        self.slot += 1
        # a copy: the next replay of a captured graph overwrites its outputs
        return out.logits[: self.batch, -1].float().clone()


ROWS_BUCKET = 8  # the static cache's batch: a multiple of this (one graph per bucket)
LENGTH_BUCKET = 64  # the static cache's length: a multiple of this
STATIC_BUCKETS = 64  # compiled graphs kept for the static cache (torch's own limit: 8)
# torch's name for the most graphs one frame keeps (cache_size_limit before 2.6)
RECOMPILE_LIMIT = (
    "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def logits_warpers(sampling: SamplingConfig) -> LogitsProcessorList:
    """transformers' warpers for ``sampling``, in the order ``generate`` applies them
    (temperature, top-k, top-p); empty for greedy decoding or when all are off."""
    warpers = LogitsProcessorList()
    if not sampling.do_sample:
        return warpers
    if sampling.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    return warpers


def sample(
    logits: torch.Tensor,
    sampling: SamplingConfig,
    warpers: LogitsProcessorList,
    tokens: list[torch.Tensor],
) -> torch.Tensor:
    """The next token ``[B]`` from float32 ``logits`` ``[B, V]``: the argmax, or one draw from
    the softmax of the warped logits (``tokens``: those sampled so far, for the warpers)."""
    if not sampling.do_sample:
        return logits.argmax(dim=-1)
    scores = logits
    if warpers:
        so_far = torch.stack(tokens, dim=1) if tokens else logits.new_zeros(len(logits), 0)
        scores = warpers(so_far.long(), logits)
    return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)


def has_sliding_layers(model: torch.nn.Module) -> bool:
    """Whether transformers' ``StaticCache`` for ``model`` has sliding-window layers (Gemma
    3's): their rolling buffers hold the last window of tokens, which the static decode's one
    attention mask over the whole cache does not describe."""
    cache = StaticCache(config=model.config, max_cache_len=1)  # tensors come on first use
    return any(getattr(layer, "is_sliding", False) for layer in cache.layers)


def refuse_sharded(policy: Policy) -> None:
    if policy.synced_gpus:
        raise R1V2Error(
            "engine=compiled cannot decode a policy sharded across processes "
            "(sharding=fsdp): use engine=transformers, or sharding=replicate"
        )
