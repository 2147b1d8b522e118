"""Rollouts with transformers' continuous batching: a paged KV cache and a scheduler that
refills the batch as sequences finish, behind :class:`r1v2.rollout.RolloutEngine`.

transformers' continuous batching (``model.init_continuous_batching``, the manager
``generate_batch`` wraps; its API as of transformers 5.17, tested with 5.17 and 5.24) takes
prompts as token ids only: no ``inputs_embeds``, no ``pixel_values``. This engine feeds it:

- text-only policies: the prompts' token ids;
- vision-language policies (InternVL, as ``r1v2 assemble`` builds): the image features are
  computed once per prompt before decoding starts (the vision encoder and adapter, as in
  :meth:`r1v2.model.policy.Policy.prompt_embeds`), and each image-token position of each
  prompt gets its own id past the vocabulary (``vocab + k`` for the ``k``-th feature row of
  the call); while the manager runs, the language model's input embedding looks those ids up
  in the feature table. The model sees the same embeddings as ``generate(inputs_embeds=...)``.

Each prompt is prefilled once and its ``G`` samples fork from its KV cache (the manager's
``num_return_sequences``), so prefix sharing is built in. Greedy decoding decodes each prompt
once and repeats it ``G`` times (the samples of a group are identical anyway).

Refused with an :class:`R1V2Error`: a transformers older than 5.17 or a model without
continuous batching, a policy sharded across processes (FSDP: every process must step
generation in lockstep, which the manager's own loop does not do), images for a model other
than InternVL (others, e.g. Qwen2-VL's 3-D rotary positions, are untested), and
``group_size < 1``. Temperature, top-k and top-p are
applied by the manager's logits processors, as ``generate`` applies them; samples follow
torch's global RNG (seed it before a call), but they are not the same draws as
:class:`r1v2.rollout.TransformersEngine`'s (the batches differ), only greedy outputs agree.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from r1v2.errors import R1V2Error
from r1v2.model.policy import Policy, PromptBatch, Rollout, SamplingConfig, completion_masks

RESULT_POLL_S = 1.0  # how long one wait for a finished sequence lasts before checking the loop
MIN_TRANSFORMERS = (5, 17)  # the manager API used here (init_continuous_batching, WorkloadHints)
CACHE_MEMORY_SHARE = 0.4  # most of the free GPU memory a call's paged cache may take
IMAGE_MODEL_TYPES = {"internvl"}  # vision-language models whose image path is tested here


class ContinuousBatchingEngine:
    """Samples with transformers' continuous batching on the policy's model (shares its
    weights, so :meth:`sync_weights` has nothing to copy).

    ``ignore_eos``: never stop at EOS (every completion runs to ``max_new_tokens``; for
    benchmarks, where ``generate``'s ``min_new_tokens`` does the same for the transformers
    engine: continuous batching drops that processor).
    """

    def __init__(self, policy: Policy, *, ignore_eos: bool = False):
        version = transformers_version()
        if tuple(int(x) for x in version.split(".")[:2]) < MIN_TRANSFORMERS:
            raise R1V2Error(
                "engine=continuous needs transformers >= {}.{} (its continuous batching API), "
                "found {}: upgrade it or use engine=transformers".format(*MIN_TRANSFORMERS, version)
            )
        if not hasattr(policy.model, "init_continuous_batching"):
            raise R1V2Error(
                f"engine=continuous: transformers {version} has no continuous batching for "
                f"{type(policy.model).__name__}; use engine=transformers"
            )
        self.policy = policy
        self.ignore_eos = ignore_eos
        _refuse_sharded(policy)

    def generate(
        self,
        items: Sequence[Any] | PromptBatch,
        sampling: SamplingConfig | None = None,
        *,
        group_size: int = 1,
    ) -> Rollout:
        """``group_size`` completions per prompt (group-major), as
        :meth:`r1v2.model.policy.Policy.generate` returns them."""
        policy = self.policy
        _refuse_sharded(policy)
        if group_size < 1:
            raise R1V2Error(f"group_size must be >= 1, got {group_size}")
        sampling = sampling or SamplingConfig()
        sampling.validate()
        batch = items if isinstance(items, PromptBatch) else policy.encode(items)
        was_training = policy.model.training
        policy.model.eval()  # no dropout while sampling
        try:
            with torch.no_grad():
                prompts, features = self._requests(batch)
                # Greedy samples of one prompt are identical: decode each prompt once.
                copies = group_size if sampling.do_sample else 1
                with _features_as_tokens(policy.model, features):
                    outputs = self._run(prompts, sampling, copies)
        finally:
            policy.model.train(was_training)
        if copies == 1 and group_size > 1:
            outputs = [out for out in outputs for _ in range(group_size)]
        return self._rollout(batch, group_size, outputs)

    def sync_weights(self) -> None:
        """Nothing to copy: generation runs on the policy's own modules."""

    # ---- pieces ----------------------------------------------------------------------------

    def _requests(self, batch: PromptBatch) -> tuple[list[list[int]], torch.Tensor | None]:
        """Each prompt's token ids without padding, and the ``[F, H]`` table of the batch's
        image features (None without images), whose row ``k`` stands at the positions whose
        id became ``vocab + k``."""
        ids = batch.input_ids.clone()  # [P, Tp]
        features = None
        if batch.pixel_values is not None:
            policy = self.policy
            kind = policy.model.config.model_type
            if kind not in IMAGE_MODEL_TYPES:
                raise R1V2Error(
                    f"engine=continuous takes images only for {', '.join(IMAGE_MODEL_TYPES)} "
                    f"models, not {kind}: use engine=transformers"
                )
            slots = ids == policy.image_token_id  # [P, Tp]
            embeds = policy.prompt_embeds(batch)  # [P, Tp, H], features merged at the slots
            features = embeds[slots.to(embeds.device)]  # [F, H], in slot order
            vocab = policy.model.get_input_embeddings().num_embeddings
            ids[slots] = vocab + torch.arange(features.shape[0])
        mask = batch.attention_mask
        return [row[m].tolist() for row, m in zip(ids, mask)], features

    def _run(
        self, prompts: list[list[int]], sampling: SamplingConfig, copies: int
    ) -> list[list[int]]:
        """New tokens of ``copies`` sequences per prompt, group-major."""
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
        from transformers.generation.continuous_batching.utils import WorkloadHints

        policy = self.policy
        config = policy.generation_config(
            sampling,
            num_return_sequences=copies,
            eos_token_id=-1 if self.ignore_eos else list(policy.eos_ids),
        )
        longest = max(len(p) for p in prompts) + sampling.max_new_tokens
        sequences = len(prompts) * copies
        cb_config = ContinuousBatchingConfig()
        _size_cache(cb_config, policy.model, sequences, longest, sum(len(p) for p in prompts))
        hints = WorkloadHints(
            max_prompt_length=longest - sampling.max_new_tokens,
            max_generated_length=sampling.max_new_tokens,
            num_requests=sequences,
        )
        model = policy.model
        attn = model.config._attn_implementation
        # transformers seeds torch with a draw + the process rank when it builds the batch
        # processor (in warmup); seeding again from a draw of the caller's RNG after that makes
        # the samples a function of the caller's seed alone, whatever the number of processes.
        seed = int(torch.randint(0, 2**62, (1,)))
        manager = None
        try:
            manager = model.init_continuous_batching(
                generation_config=config, continuous_batching_config=cb_config, workload_hints=hints
            )
            manager.warmup()  # builds the batch processor; captures CUDA graphs where used
            torch.manual_seed(seed)
            # All requests queued before the loop starts: the same batches, hence the same
            # random draws, for the same seed.
            ids = manager.add_requests(prompts, max_new_tokens=sampling.max_new_tokens)
            manager.start()
            results = _collect(manager, sequences)
        finally:
            if manager is not None:
                if manager.is_running():
                    manager.stop(block=True)
                manager.destroy()
            if model.config._attn_implementation != attn:  # the manager switched it
                model.set_attn_implementation(attn)
        out = []
        for rid in ids:
            group = [rid] + [f"{rid}__child#{i}" for i in range(copies - 1)]
            missing = [r for r in group if r not in results]
            if missing:
                raise R1V2Error(
                    f"continuous batching returned no sequence for requests {missing} "
                    "(see transformers' log above)"
                )
            out += [list(results[r].generated_tokens) for r in group]
        return out

    def _rollout(self, batch: PromptBatch, group_size: int, outputs: list[list[int]]) -> Rollout:
        """A Rollout as :meth:`r1v2.model.policy.Policy.generate` makes one: padded with the pad
        id after the first EOS, trimmed to the longest completion."""
        policy = self.policy
        n = len(outputs)
        width = max((len(o) for o in outputs), default=0)
        ids = torch.full((n, width), policy.pad_id, dtype=torch.long)  # [N, Tc]
        for i, out in enumerate(outputs):
            ids[i, : len(out)] = torch.tensor(out, dtype=torch.long)
        lengths = torch.tensor([len(o) for o in outputs], dtype=torch.long)  # [N]
        within = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)  # [N, Tc]
        eos = [] if self.ignore_eos else policy.eos_ids
        # -1 past each sequence's end: never an EOS, whatever the pad id is
        completion_mask, finished = completion_masks(ids.masked_fill(~within, -1), eos)
        return policy.make_rollout(batch, group_size, ids, completion_mask & within, finished)


def _size_cache(cb_config, model, sequences: int, longest: int, prompt_tokens: int) -> None:
    """Size the paged cache for this call rather than for 90% of the free device memory
    (transformers' default, which would also size sdpa's ``[M, cache + M]`` masks by it):
    every sequence's longest length in pages plus one page of slack, when that (and the mask)
    fits in ``CACHE_MEMORY_SHARE`` of the free GPU memory. Otherwise transformers sizes the
    cache within that share and its scheduler queues the sequences that do not fit."""
    page = getattr(cb_config, "page_size", None) or getattr(cb_config, "block_size", 256)
    blocks = sequences * (math.ceil(longest / page) + 1)
    batch_tokens = min(8192, max(prompt_tokens, sequences))
    device = model.device
    if device.type == "cuda":
        text = model.config.get_text_config()
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        size = model.dtype.itemsize
        per_token = 2 * text.num_hidden_layers * kv_heads * head_dim * size  # K and V
        tokens = blocks * page
        need = tokens * per_token + batch_tokens * (tokens + batch_tokens) * size  # + the mask
        free = torch.cuda.mem_get_info(device)[0]
        if need > CACHE_MEMORY_SHARE * free:
            cb_config.max_memory_percent = CACHE_MEMORY_SHARE
            cb_config.max_batch_tokens = batch_tokens
            return
    cb_config.num_blocks = blocks
    cb_config.max_batch_tokens = batch_tokens


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def _refuse_sharded(policy: Policy) -> None:
    if policy.synced_gpus:
        raise R1V2Error(
            "engine=continuous cannot generate with a policy sharded across processes "
            "(sharding=fsdp): use engine=transformers, or sharding=replicate"
        )


def _collect(manager, expected: int) -> dict[str, Any]:
    """The finished outputs by request id, until ``expected`` are in or the loop has died."""
    results: dict[str, Any] = {}
    while len(results) < expected:
        out = manager.get_result(timeout=RESULT_POLL_S)
        if out is None:
            if not manager.is_running():
                break
            continue
        if getattr(out, "error", None):
            raise R1V2Error(f"continuous batching failed on {out.request_id}: {out.error}")
        if out.is_finished():
            results[out.request_id] = out
    return results


class _FeatureEmbedding(nn.Module):
    """The token embedding, extended with rows past the vocabulary: id ``vocab + k`` embeds
    as ``features[k]``. Fixed shapes and no data-dependent branch, so it can be captured in a
    CUDA graph."""

    def __init__(self, base: nn.Embedding, features: torch.Tensor):
        super().__init__()
        self.base = base
        self.features = features  # [F, H]
        self.vocab = base.num_embeddings

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        extra = ids >= self.vocab  # [B, T]
        words = self.base(ids.clamp(max=self.vocab - 1))  # [B, T, H]
        rows = self.features[(ids - self.vocab).clamp(min=0)]  # [B, T, H]
        return torch.where(extra.unsqueeze(-1), rows.to(words.dtype), words)


@contextlib.contextmanager
def _features_as_tokens(model, features: torch.Tensor | None) -> Iterator[None]:
    """While inside, ``model``'s input embedding also embeds the ids past its vocabulary as
    rows of ``features`` ``[F, H]`` (nothing changes when None)."""
    if features is None or features.shape[0] == 0:
        yield
        return
    base = model.get_input_embeddings()
    model.set_input_embeddings(_FeatureEmbedding(base, features))
    try:
        yield
    finally:
        model.set_input_embeddings(base)
