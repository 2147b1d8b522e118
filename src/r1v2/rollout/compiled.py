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

import sys
from collections.abc import Callable
from typing import Any

import torch
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
    ):
        refuse_sharded(policy)
        super().__init__(policy, batch_size=batch_size, share_prefix=share_prefix)
        self.ignore_eos = ignore_eos
        self.failed: str | None = None
        self._compiled: Callable[..., Any] | None = None  # built on first use

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
        policy, model = self.policy, self.policy.model
        embeds, mask = inputs.embeds, inputs.mask
        batch = embeds.shape[0]
        positions = inputs.prompt_positions()  # [B, Tp] or [3, B, Tp]
        if cache is None:
            out = prefill(model, inputs)
        else:  # the prompts' last token (text) against the cache of the others
            out = model(
                inputs_embeds=embeds[:, -1:],
                attention_mask=mask.long(),
                position_ids=positions[..., -1:],
                use_cache=True,
                logits_to_keep=1,
                **{CACHE_KWARG: cache},
            )
        cache = kv_cache(out)
        logits = out.logits[:, -1].float()  # [B, V]
        warpers = logits_warpers(sampling)
        eos_ids = [] if self.ignore_eos else policy.eos_ids
        eos = torch.tensor(eos_ids, dtype=torch.long, device=embeds.device)
        attention = mask.long()  # [B, Tp + t]
        position = positions[..., -1:]  # [B, 1] or [3, B, 1]
        done = torch.zeros(batch, dtype=torch.bool, device=embeds.device)
        tokens: list[torch.Tensor] = []
        for t in range(sampling.max_new_tokens):
            token = sample(logits, sampling, warpers, tokens)  # [B]
            token = token.masked_fill(done, policy.pad_id)
            tokens.append(token)
            done |= torch.isin(token, eos)
            if t + 1 == sampling.max_new_tokens or bool(done.all()):
                break
            attention = torch.cat([attention, attention.new_ones(batch, 1)], dim=1)
            position = position + 1
            logits = (
                self._step(
                    input_ids=token[:, None],
                    attention_mask=attention,
                    position_ids=position,
                    use_cache=True,
                    **{CACHE_KWARG: cache},
                )
                .logits[:, -1]
                .float()
            )
        return torch.stack(tokens, dim=1)

    def _step(self, **inputs: Any) -> Any:
        """One decode step: compiled, or eager once compiling has failed."""
        model = self.policy.model
        if self.failed is None:
            if self._compiled is None:
                self._compiled = torch.compile(model, dynamic=True)
            try:
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


def refuse_sharded(policy: Policy) -> None:
    if policy.synced_gpus:
        raise R1V2Error(
            "engine=compiled cannot decode a policy sharded across processes "
            "(sharding=fsdp): use engine=transformers, or sharding=replicate"
        )
