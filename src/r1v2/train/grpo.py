"""GRPO with the hybrid reward and the Selective Sample Buffer (RECIPE sections 3-4).

:func:`train` reads top to bottom: :func:`setup` (policy, reference, optimizer, reward,
buffer, sampler, resume), then the loop of :func:`one_step`:

    1. prompts -> 2. G rollouts each -> 3. hybrid reward -> 4. group advantages
        -> 5. SSB replay -> 6. mu policy-update iterations -> 7. metrics
    (then the probe, the log and a checkpoint; at the end OUTPUT_DIR/final)

Several processes (``accelerate launch --num_processes K -m r1v2 grpo ...``, ``torchrun`` on
a CPU) split each step's prompts into K equal contiguous shards; each process rolls out and
scores its shard, advantages and the buffer's replay are decided once over the gathered
batch, and the gradients are averaged across processes before every optimizer step, so K
processes take the same step as one process holding all prompts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from r1v2.algos.grpo import group_advantages, group_stats, loss_normalizer, policy_loss
from r1v2.algos.ssb import SelectiveSampleBuffer, replay
from r1v2.config import check_range, option, to_dict
from r1v2.errors import R1V2Error
from r1v2.model.policy import SamplingConfig
from r1v2.train.checkpoint import load_checkpoint
from r1v2.train.guard import HallucinationGuard
from r1v2.train.metrics import read_metrics
from r1v2.train.sampler import PromptSampler
from r1v2.train.sharding import RootCall, direct, full_tensor, shard_model
from r1v2.train.stage import (
    RESUMABLE,
    RunSettings,
    ScoredSetup,
    StageRun,
    check_resumable,
    check_same_data,
    clear_folder,
    end_processes,
    gather_lists,
    load_policy,
    load_pool,
    load_probe,
    make_reward,
    mean_over_processes,
    prepare_output,
    run_summary,
    save_final,
    watch,
)

STD_FLOOR = 0.05
STD_FLOOR_NOTE = (
    "Measured on the toy VLM with the reward model on (256 prompts x 8): groups whose rule "
    "terms tie differ by a std of 0 (104 of 132) or 0.007-0.20; a rule difference gives >= 0.22. "
    "0: exact ties only."
)


@dataclass
class SSBConfig:
    """The Selective Sample Buffer (RECIPE section 4)."""

    enabled: bool = option(True, "replay buffered high-|A| samples into zero-advantage slots")
    capacity: int = option(1024, "most samples the buffer keeps (oldest evicted first)")
    alpha: float = option(
        1.0,
        "draw probability proportional to |A|^alpha (1: the paper; 0: uniform). Demo seed 0, "
        "where most prompts are solved (r1v2 demo --ablations): 1 replayed the few largest-|A| "
        "samples at a mean advantage of -0.34 and the guard rolled the run back; 0 replayed at "
        "+0.00 and stayed stable",
    )
    max_age: int | None = option(
        50, "drop buffered samples older than this many steps (null: never)"
    )
    target_ratio: float = option(0.6, "replay until this share of the batch has |A| > eps")
    eps: float = option(1e-6, "advantages with |A| <= eps count as zero")

    def validate(self) -> None:
        check_range("ssb.capacity", self.capacity, 1)
        check_range("ssb.alpha", self.alpha, 0)
        check_range("ssb.max_age", self.max_age, 0)
        check_range("ssb.target_ratio", self.target_ratio, 0, 1)
        check_range("ssb.eps", self.eps, 0)


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = option(
        5e-5,
        "peak learning rate (toy VLM, adapter-only: 5e-5 learned, 3e-4 collapsed; "
        "TRL: learning_rate)",
    )
    weight_decay: float = option(0.0, "AdamW weight decay (TRL: weight_decay)")
    betas: list[float] = option([0.9, 0.999], "AdamW betas (TRL: adam_beta1, adam_beta2)")
    schedule: Literal["constant", "linear", "cosine"] = option(
        "constant", "learning-rate schedule after warmup (TRL: lr_scheduler_type)"
    )
    warmup_steps: int = option(
        0,
        "steps of linear warmup from 0 (TRL: warmup_steps)",
    )
    max_grad_norm: float = option(
        1.0, "clip the gradient norm to this (0: no clipping; TRL: max_grad_norm)"
    )

    def validate(self) -> None:
        check_range("optim.lr", self.lr, 0, low_open=True)
        check_range("optim.weight_decay", self.weight_decay, 0)
        if len(self.betas) != 2:
            raise R1V2Error(f"config field 'optim.betas' must be two numbers, got {self.betas}")
        for beta in self.betas:
            check_range("optim.betas", beta, 0, 1, high_open=True)
        check_range("optim.warmup_steps", self.warmup_steps, 0)
        check_range("optim.max_grad_norm", self.max_grad_norm, 0)


@dataclass
class GRPOConfig(RunSettings, ScoredSetup):
    """``r1v2 grpo``: GRPO with the hybrid reward and the Selective Sample Buffer."""

    output_dir: str = option("runs/grpo", "where checkpoints, metrics.jsonl and logs go")
    max_steps: int = option(
        60, "steps to train; a step is one batch of rollouts and ppo_epochs optimizer steps"
    )
    save_steps: int = option(20, "write a checkpoint every this many steps (and at the end)")
    probe_every: int = option(10, "run the probe every this many steps (and at the end)")

    prompts_per_step: int = option(
        8,
        "prompts per step over all processes (verl: data.train_batch_size); times group_size "
        "= TRL generation_batch_size",
    )
    group_size: int = option(
        8, "G: completions sampled per prompt (TRL: num_generations; verl: rollout.n)"
    )
    prompts_per_generate: int | None = option(
        None,
        "prompts per generate call (null: the whole shard); rollouts are seeded per call, "
        "so equal values give equal rollouts whatever the number of processes",
    )

    sharding: Literal["replicate", "fsdp"] = option(
        "replicate",
        "with several processes: replicate the model on each and average gradients, or shard "
        "parameters, gradients and optimizer state with torch FSDP2 (r1v2.train.sharding)",
    )
    ppo_epochs: int = option(
        1,
        "mu: policy-update iterations (optimizer steps) per batch of rollouts "
        "(TRL: num_iterations; verl: ppo_epochs)",
    )
    micro_batch_size: int = option(
        16,
        "sequences per forward/backward on each process, its share of the step accumulated "
        "over micro-batches (TRL: per_device_train_batch_size)",
    )
    share_prefix: bool = option(
        True,
        "run each prompt through the LLM once for its G samples: generation prefills it once "
        "and expands its KV cache; the update (and the reference/old log-probs) scores a "
        "micro-batch's completions against one forward of each of its prompts, gradients "
        "included. Same log-probs and gradients (fp32: within 1e-5) and the same random draws; "
        "false: every sample carries its own copy of the prompt. Measured by "
        "bench/prefix_sharing.py (toy-sized VLM, CPU, 8 prompts x G=8, 64 new tokens): steps "
        "1.2-1.3x faster with the toy's 39-token prompts, 1.3-1.6x with 111-token ones",
    )
    engine: Literal["transformers", "compiled", "continuous", "vllm"] = option(
        "transformers",
        "rollout engine (r1v2.rollout): transformers = transformers generate on padded batches "
        "(share_prefix applies); compiled = the same prefill, then each decode step through "
        "torch.compile in a sampling loop that draws as generate does (share_prefix applies; "
        "greedy outputs equal, samples the same draws up to float rounding; compiles on the "
        "first step, about 30 s on 2 CPU cores at the toy's sizes from an empty cache; not with "
        "sharding=fsdp); continuous = transformers' continuous batching (paged KV cache, "
        "finished sequences replaced as they end, each prompt prefilled once and forked to its "
        "G samples; text-only and InternVL policies, not with sharding=fsdp; greedy outputs "
        "equal, sampled ones other draws). Measured on a CPU (one thread, bench/RESULTS.md): "
        "compiled generates 1.3-1.8x faster than transformers (GRPO steps 1.1-1.4x) at the "
        "toy's sizes; continuous gives 0.2-0.3x the tokens/s of transformers; neither measured "
        "on a GPU yet; vllm = a vLLM server in its own process (r1v2 vllm-serve; vllm_url), "
        "weights pushed after every optimizer step; images travel beside the prompts' ids",
    )
    static_cache: bool | None = option(
        None,
        "engine=compiled: decode against a static KV cache (batch and length rounded up to "
        "buckets), the step compiled with mode=reduce-overhead, so it replays as CUDA graphs on "
        "CUDA; null: on CUDA (but for sliding-window attention, Gemma 3, which it refuses), "
        "off on a CPU, where there are no graphs to replay",
    )
    vllm_url: str = option(
        "http://127.0.0.1:8100", "the vLLM server of engine=vllm (r1v2 vllm-serve)"
    )
    vllm_timeout: float = option(600.0, "seconds engine=vllm waits for one server request")
    clip_low: float = option(
        0.2, "epsilon_low of the clipped ratio (TRL: epsilon; verl: clip_ratio_low)"
    )
    clip_high: float = option(
        0.2, "epsilon_high of the clipped ratio (TRL: epsilon_high; verl: clip_ratio_high)"
    )
    kl_coef: float = option(
        0.001,
        "beta: weight of KL(pi_theta || pi_ref); 0 skips the reference (TRL: beta; "
        "verl: kl_loss_coef)",
    )
    kl_estimator: Literal["k1", "k2", "k3"] = option(
        "k3", "KL estimator (verl: kl_loss_type, k3 = low_var_kl; TRL always uses k3)"
    )
    kl_clip: float | None = option(
        10.0,
        "bound |log(pi_ref/pi_theta)| per token in the KL estimate (replayed tokens can make k3 "
        "explode); null: no bound",
    )
    std_floor: float = option(
        STD_FLOOR,
        "groups whose total-reward std is below this count as tied: zero advantages (the SSB "
        "fills them). With the reward-model term, rewards are continuous and exact ties rare; "
        "eq. 6 would turn tiny differences into advantages of +-1. " + STD_FLOOR_NOTE,
    )
    aggregation: Literal["seq-mean-token-mean", "token-mean"] = option(
        "seq-mean-token-mean",
        "loss aggregation: seq-mean-token-mean (eq. 8; TRL loss_type='grpo') or token-mean "
        "over all the step's tokens (TRL loss_type='dapo'); verl: loss_agg_mode, same names",
    )
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimizer"})
    ssb: SSBConfig = field(default_factory=SSBConfig, metadata={"help": "Selective Sample Buffer"})

    def validate(self) -> None:
        """Every value checked before anything loads; errors name the dotted field."""
        self.validate_run()
        self.generation.validate("generation.")
        self.optim.validate()
        self.ssb.validate()
        check_range("kl_coef", self.kl_coef, 0)
        check_range("clip_low", self.clip_low, 0, 1, high_open=True)
        check_range("clip_high", self.clip_high, 0)
        check_range("kl_clip", self.kl_clip, 0, low_open=True)
        check_range("std_floor", self.std_floor, 0)
        check_range("prompts_per_generate", self.prompts_per_generate, 1)
        if self.group_size < 2:
            raise R1V2Error("config field 'group_size' must be >= 2 (advantages compare a group)")
        if not self.generation.do_sample:
            raise R1V2Error(
                "config field 'generation.do_sample' is false: a group's rollouts would all be "
                "the same greedy completion, every group would tie and GRPO would learn "
                "nothing; sample (generation.do_sample=true)"
            )
        for name in ("prompts_per_step", "micro_batch_size", "ppo_epochs"):
            if getattr(self, name) < 1:
                raise R1V2Error(f"config field '{name}' must be >= 1")


@dataclass
class Trajectory:
    """One completion of one prompt: what the update and the buffer need."""

    item: Any  # the prompt's Sample
    completion: torch.Tensor  # [Tc] ids, unpadded (EOS included when it was produced)


# ---- pieces of one step ----------------------------------------------------------------------


def rollout_seed(seed: int, step: int, first_prompt: int) -> int:
    """Seed of one generate call: a function of the global position only, not of the process."""
    return (seed * 1_000_003 + step) * 1_000_003 + first_prompt


def generate_shard(engine, items, cfg: GRPOConfig, step: int, offset: int):
    """G completions for each item through the rollout engine: (texts, unpadded completion
    ids, group-major; the number of prompt tokens of all N samples, padding not counted)."""
    chunk = cfg.prompts_per_generate or len(items)
    texts, ids, prompt_tokens = [], [], 0
    for start in range(0, len(items), chunk):
        torch.manual_seed(rollout_seed(cfg.seed, step, offset + start))
        out = engine.generate(
            items[start : start + chunk], cfg.generation, group_size=cfg.group_size
        )
        texts += out.texts
        ids += [row[m] for row, m in zip(out.completion_ids, out.completion_mask)]
        prompt_tokens += int(out.prompts.attention_mask.sum()) * cfg.group_size
    return texts, ids, prompt_tokens


def collate(policy, trajectories: list[Trajectory]):
    """Prompt batch of the distinct prompts, ``prompt_index [N]``, padded ids and mask ``[N, T]``."""
    keys: dict[str, int] = {}  # by sample id: replayed samples may be copies (after resume)
    items = []
    for t in trajectories:
        if t.item.id not in keys:
            keys[t.item.id] = len(items)
            items.append(t.item)
    index = torch.tensor([keys[t.item.id] for t in trajectories])  # [N]
    width = max(1, max(len(t.completion) for t in trajectories))
    ids = torch.full((len(trajectories), width), policy.pad_id, dtype=torch.long)  # [N, T]
    mask = torch.zeros((len(trajectories), width), dtype=torch.bool)  # [N, T]
    for i, t in enumerate(trajectories):
        ids[i, : len(t.completion)] = t.completion
        mask[i, : len(t.completion)] = True
    return policy.encode(items), index, ids, mask


def average_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    """Mean of every gradient over processes (one all-reduce of the flattened gradients)."""
    if world_size == 1:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


SHARES = ("pg_loss", "kl")  # policy_loss gives these as a micro-batch's share of the step
TOKEN_MEANS = ("ratio_mean", "clip_frac_low", "clip_frac_high", "clip_frac", "approx_kl")


def step_counts(
    mask: torch.Tensor, aggregation: str, world_size: int, device
) -> tuple[float, float]:
    """``(normalizer, tokens)`` of the whole step over every process, divided by the number of
    processes (one all-reduce). Each process divides its loss by this normalizer; averaging the
    gradients over processes then gives the gradient of one pass over the whole batch, also
    for ``token-mean``, where the processes' token counts differ."""
    counts = torch.tensor(
        [loss_normalizer(mask, aggregation), int(mask.sum())], dtype=torch.float64, device=device
    )
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(counts)
    normalizer, tokens = (counts / world_size).tolist()
    return normalizer, tokens


def scoring_temperature(sampling: SamplingConfig) -> float:
    """The temperature completions are scored at: the sampler's (logits / T, as the field's
    trainers do), 1 for greedy decoding. top_p / top_k truncation is not reflected in the
    scores (the full tempered softmax is used, as in TRL and verl): with them on, rho and the
    KL are taken against the untruncated distribution."""
    return sampling.temperature if sampling.do_sample else 1.0


def policy_update(
    policy,
    batch,
    advantages: torch.Tensor,
    *,
    cfg: GRPOConfig,
    optimizer,
    scheduler,
    params: list[torch.nn.Parameter],
    world_size: int = 1,
    reference=None,
    root_call: RootCall = direct,
):
    """mu iterations of the clipped surrogate over the batch; returns metrics and whether it stepped.

    ``old_logps`` are the current policy's log-probs before the first iteration, for fresh and
    replayed samples alike (so a replayed sample's ratio starts at 1). With one iteration
    they are the training forward's own log-probs, detached, which saves a forward pass.
    Every log-prob is taken at the sampling temperature (:func:`scoring_temperature`).
    ``reference`` (a :class:`r1v2.train.reference.Reference`, or None without a KL term) puts
    pi_ref's weights in place while its log-probs are taken. ``root_call`` runs each use of the
    model (:mod:`r1v2.train.sharding`); with FSDP the gradients come back already averaged.

    Metrics: ``pg_loss``, ``kl`` and ``loss`` are the step's values (micro-batch shares
    summed); the token means (``ratio_mean``, ``clip_frac*``, ``approx_kl``) are weighted by
    tokens. Each is this process's share scaled so that the mean over processes is the
    whole step's value; all are averaged over the mu iterations.
    """
    prompts, index, ids, mask = batch
    temperature = scoring_temperature(cfg.generation)

    def whole_batch() -> torch.Tensor:  # [N, T], no gradients
        with torch.no_grad():
            return root_call(
                policy.logprobs,
                prompts,
                ids,
                mask,
                prompt_index=index,
                micro_batch_size=cfg.micro_batch_size,
                temperature=temperature,
                share_prefix=cfg.share_prefix,
            )

    old = None if cfg.ppo_epochs == 1 else whole_batch()  # mu = 1: the forward's own, detached
    ref = None
    if reference is not None:  # in eval mode, as pi_ref was: no dropout in its log-probs
        was_training = policy.model.training
        policy.model.eval()
        with reference.active():
            ref = whole_batch()
        policy.model.train(was_training)
    counts = step_counts(mask, cfg.aggregation, world_size, policy.device)
    sums: dict[str, float] = {}
    for _ in range(cfg.ppo_epochs):
        optimizer.zero_grad(set_to_none=True)
        loss_total = backward_pass(
            policy, batch, advantages, old, ref, cfg, temperature, counts, sums, root_call
        )
        if root_call is direct:  # FSDP averaged the gradients in the backward pass
            average_gradients(params, world_size)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm or math.inf)
        grad_norm = full_tensor(grad_norm)
        if not (math.isfinite(loss_total) and torch.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            sums["loss"] = loss_total
            return sums, False
        optimizer.step()
        sums["loss"] = sums.get("loss", 0.0) + loss_total / cfg.ppo_epochs
        sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm) / cfg.ppo_epochs
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return sums, True


def backward_pass(policy, batch, advantages, old, ref, cfg, temperature, counts, sums, root_call):
    """One pass of eq. 8 over the batch in micro-batches, gradients accumulated; adds this
    pass's metrics (divided by mu) into ``sums``; returns the summed loss.

    ``old``/``ref``: ``[N, T]`` log-probs or None (None ``old``: the forward's own, detached).
    ``counts``: :func:`step_counts`, the whole step's normaliser and tokens per process.
    """
    prompts, index, ids, mask = batch
    normalizer, tokens = counts
    loss_total = 0.0
    for start in range(0, ids.shape[0], cfg.micro_batch_size):
        sl = slice(start, min(start + cfg.micro_batch_size, ids.shape[0]))
        logps = root_call(
            policy.logprobs,
            prompts,
            ids[sl],
            mask[sl],
            prompt_index=index[sl],
            temperature=temperature,
            share_prefix=cfg.share_prefix,
        )
        loss, m = policy_loss(
            logps,
            logps.detach() if old is None else old[sl].to(logps.device),
            advantages[sl].to(logps.device),
            mask[sl].to(logps.device),
            clip_low=cfg.clip_low,
            clip_high=cfg.clip_high,
            ref_logps=None if ref is None else ref[sl].to(logps.device),
            kl_coef=cfg.kl_coef,
            kl_estimator=cfg.kl_estimator,
            kl_clip=cfg.kl_clip,
            aggregation=cfg.aggregation,
            normalizer=normalizer,
        )
        loss.backward()
        loss_total += float(loss.detach())
        weight = float(m["tokens"]) / max(tokens, 1.0)
        for k in SHARES:
            sums[k] = sums.get(k, 0.0) + float(m[k]) / cfg.ppo_epochs
        for k in TOKEN_MEANS:
            sums[k] = sums.get(k, 0.0) + weight * float(m[k]) / cfg.ppo_epochs
    return loss_total


# ---- the run -----------------------------------------------------------------------------------


@dataclass
class GRPORun(StageRun):
    """Everything a GRPO run holds, built by :func:`setup`."""

    cfg: GRPOConfig
    accelerator: Any
    policy: Any
    engine: Any  # r1v2.rollout.RolloutEngine
    reference: Any  # r1v2.train.reference.Reference, or None without a KL term
    root_call: RootCall
    params: list[torch.nn.Parameter]
    optimizer: Any
    scheduler: Any
    reward_fn: Any
    buffer: SelectiveSampleBuffer
    sampler: PromptSampler
    pool: list[Any]
    probe_items: list[Any]
    trainable_report: str
    guard: HallucinationGuard
    best: dict[str, Any] | None = None  # {"step", "weights"}: the guard's rollback target
    step: int = 0
    nan_total: int = 0


def setup(cfg: GRPOConfig) -> GRPORun:
    """Validate, load and restore everything a run needs; an earlier run in ``output_dir`` is
    removed (with ``overwrite=true``) only after all of it succeeded."""
    from accelerate import Accelerator

    from r1v2.model.freeze import set_trainable
    from r1v2.rollout import build_engine
    from r1v2.train.reference import Reference

    # Without a GPU, accelerate only joins the processes of a launch (gloo) when told cpu=True.
    accelerator = Accelerator(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    check_distributed_type(accelerator.distributed_type.value)
    if cfg.prompts_per_step % accelerator.num_processes:
        raise R1V2Error(
            f"prompts_per_step={cfg.prompts_per_step} must divide by "
            f"{accelerator.num_processes} processes"
        )
    out = Path(cfg.output_dir)
    ckpt, replace_old = prepare_output(out, cfg.resume, cfg.overwrite)
    torch.manual_seed(cfg.seed)
    pool = load_pool(cfg.data)
    probe_items = load_probe(cfg.probe_data, cfg.probe_size)  # refused here without scenes
    policy = load_policy(cfg, accelerator.device)
    report = set_trainable(policy.model, cfg.trainable)
    # pi_ref = the starting weights of the trainable part, taken before a checkpoint loads
    start_weights = Reference(policy.model).state_dict() if cfg.kl_coef > 0 else None
    state: dict[str, Any] = {}
    if ckpt is not None:  # weights before sharding: the checkpoint holds whole tensors
        state = load_checkpoint(ckpt, policy.model, rank=accelerator.process_index)[0]
        # share_prefix and static_cache change only float rounding, like micro_batch_size
        check_resumable(
            state.get("config", {}),
            cfg,
            ckpt,
            state["step"],
            RESUMABLE | {"share_prefix", "static_cache"},
        )
        check_same_data(state, pool, cfg.data, ckpt)
    root_call = _root_call(cfg, policy, accelerator)
    reference = None
    if start_weights is not None:
        reference = Reference(policy.model, root=None if root_call is direct else root_call)
        reference.load_state_dict(start_weights)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(cfg.optim, params, cfg.max_steps)
    options: dict[str, Any] = {}
    if cfg.engine == "vllm":
        if cfg.sharding == "fsdp":
            raise R1V2Error("engine=vllm takes sharding=replicate: it pushes whole weights")
        options = {"url": cfg.vllm_url, "timeout": cfg.vllm_timeout, "weights_dir": out / "vllm"}
    if cfg.engine == "compiled":
        options = {"static_cache": cfg.static_cache}
    run = GRPORun(
        cfg=cfg,
        accelerator=accelerator,
        policy=policy,
        engine=build_engine(cfg.engine, policy, share_prefix=cfg.share_prefix, **options),
        reference=reference,
        root_call=root_call,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        reward_fn=make_reward(cfg, policy),
        # one buffer, the same on every process: replay decides over the gathered batch
        buffer=SelectiveSampleBuffer(
            cfg.ssb.capacity, cfg.ssb.alpha, cfg.ssb.max_age, cfg.ssb.eps, seed=cfg.seed
        ),
        sampler=PromptSampler(len(pool), seed=cfg.seed),
        pool=pool,
        probe_items=probe_items,
        trainable_report=str(report),
        guard=HallucinationGuard.from_config(cfg.guard),
    )
    if state:
        _restore(run, state, ckpt)
    if replace_old and run.rank == 0:  # everything is validated: only now remove the old run
        clear_folder(out)
    accelerator.wait_for_everyone()
    return run


def _restore(run: GRPORun, state: dict[str, Any], ckpt: Path) -> None:
    """A checkpoint's trainer state into the run (weights and RNG were loaded already)."""
    load_optimizer_state(run.optimizer, state["optimizer"], run.root_call)
    run.scheduler.load_state_dict(state["scheduler"])
    try:
        run.sampler.load_state_dict(state["sampler"])
    except ValueError as e:
        raise R1V2Error(f"{ckpt}: {e}: the prompt pool {run.cfg.data} changed") from e
    run.buffer.load_state_dict(state["buffer"])
    run.step, run.nan_total = state["step"], state["nan_total"]
    if "guard" in state:  # checkpoints of earlier versions have none
        run.guard.load_state_dict(state["guard"])
        run.best = state["best"]


@dataclass
class StepRollouts:
    """Steps 1-2 on this process: its prompts' ``G`` rollouts each (group-major)."""

    per_sample: list[Any]  # the prompt (Sample) of each rollout
    texts: list[str]
    completions: list[torch.Tensor]  # each [Tc]
    prompt_tokens: int
    seconds: float  # generation time


@dataclass
class StepBatch:
    """Steps 3-5 over the whole step (every process's rollouts, in process order)."""

    trajectories: list[Trajectory]
    advantages: torch.Tensor  # [N'] after replay
    rewards: Any  # this process's RewardResult
    stats: dict[str, float]  # of the total reward's groups
    rule_stats: dict[str, float]  # of the accuracy term's groups (empty without one)
    replay_stats: dict[str, float]
    reward_seconds: float


def one_step(run: GRPORun, step: int) -> tuple[dict[str, float], bool]:
    """Steps 1-7 of one GRPO step on this process; returns the step's metrics (averaged over
    processes) and whether the optimizer stepped."""
    cfg, policy = run.cfg, run.policy
    if step > 1:  # the weights may have moved (an update, a resume, a guard rollback)
        run.engine.sync_weights()  # engine=vllm pushes them to its server; others share them
    rollouts = roll_out(run, step)  # 1-2
    batch = score_and_replay(run, rollouts, step)  # 3-5
    n = len(rollouts.completions)
    mine = slice(run.rank * n, (run.rank + 1) * n)
    # 6. mu policy-update iterations on this process's share
    policy.model.train()
    update, stepped = policy_update(
        policy,
        collate(policy, batch.trajectories[mine]),
        batch.advantages[mine],
        cfg=cfg,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        params=run.params,
        world_size=run.world,
        reference=run.reference,
        root_call=run.root_call,
    )
    metrics = step_metrics(run, rollouts, batch, update)  # 7
    return mean_over_processes(metrics, run.accelerator), stepped


def roll_out(run: GRPORun, step: int) -> StepRollouts:
    """1. this process's contiguous shard of the step's prompts; 2. G rollouts per prompt
    (timed: the metrics say where the step's time goes)."""
    cfg, rank = run.cfg, run.rank
    shard = cfg.prompts_per_step // run.world
    indices = run.sampler.next(cfg.prompts_per_step)[rank * shard : (rank + 1) * shard]
    items = [run.pool[i] for i in indices]
    t0 = time.perf_counter()
    texts, completions, prompt_tokens = run.root_call(
        generate_shard, run.engine, items, cfg, step, rank * shard
    )
    seconds = time.perf_counter() - t0
    per_sample = [items[i // cfg.group_size] for i in range(len(texts))]
    return StepRollouts(per_sample, texts, completions, prompt_tokens, seconds)


def score_and_replay(run: GRPORun, rollouts: StepRollouts, step: int) -> StepBatch:
    """3. the hybrid reward (each process scores its own rollouts); 4. group advantages and
    5. the Selective Sample Buffer over the whole step's batch (gathered from every process,
    in process order), so K processes decide as one."""
    cfg, world = run.cfg, run.world
    t0 = time.perf_counter()
    rewards = run.reward_fn(rollouts.texts, rollouts.per_sample)
    reward_seconds = time.perf_counter() - t0
    pairs = zip(rollouts.per_sample, rollouts.completions)
    trajectories = gather_lists([Trajectory(s, c) for s, c in pairs], world)
    total = gather_lists(list(rewards.total), world)
    floor = {"eps": cfg.ssb.eps, "std_floor": cfg.std_floor}
    advantages = group_advantages(total, cfg.group_size, **floor)  # [N]
    stats = group_stats(total, cfg.group_size, **floor)
    rule = rewards.components.get("accuracy")
    rule_stats = (
        group_stats(gather_lists(list(rule), world), cfg.group_size, **floor) if rule else {}
    )
    replay_stats = {
        "effective_ratio_before": stats["effective_ratio"],
        "effective_ratio_after": stats["effective_ratio"],
        "replayed": 0.0,
        "replayed_advantage_sum": 0.0,
    }
    if cfg.ssb.enabled:
        rb = replay(trajectories, advantages, run.buffer, cfg.ssb.target_ratio, step=step)
        trajectories, advantages, replay_stats = rb.samples, rb.advantages, rb.stats
    return StepBatch(
        trajectories, advantages, rewards, stats, rule_stats, replay_stats, reward_seconds
    )


def step_metrics(
    run: GRPORun, rollouts: StepRollouts, batch: StepBatch, update: dict[str, float]
) -> dict[str, float]:
    """7. the step's metrics on this process (rewards and effective ratios are those of the
    whole step already; times and token rates per process, as the field publishes them)."""
    generated = sum(len(c) for c in rollouts.completions)
    n = len(rollouts.completions)
    replay_stats = batch.replay_stats
    return {
        "reward_mean": batch.stats["reward_mean"],
        **{  # reward/total is reward_mean under another name: logged once
            k.replace("reward/", "reward_"): v
            for k, v in batch.rewards.metrics().items()
            if k != "reward/total"
        },
        "effective_ratio": replay_stats["effective_ratio_after"],
        "effective_ratio_before_replay": replay_stats["effective_ratio_before"],
        "effective_ratio_rule": batch.rule_stats.get("effective_ratio", math.nan),
        "zero_std_group_fraction": batch.stats["zero_variance_frac"],
        "kl": update.get("kl", 0.0),
        "approx_kl": update.get("approx_kl", 0.0),
        "clip_fraction": update.get("clip_frac", 0.0),
        "response_length_mean": generated / n,
        "ssb_size": float(len(run.buffer)),
        "replayed": replay_stats["replayed"],
        "replayed_advantage_sum": replay_stats["replayed_advantage_sum"],
        "loss": update.get("loss", math.nan),
        "grad_norm": update.get("grad_norm", math.nan),
        "lr": run.scheduler.get_last_lr()[0],
        "rollouts": float(n * run.world),
        # per process (= per GPU), as the field publishes throughput; see timing_metrics
        "generation_seconds": rollouts.seconds,
        "reward_seconds": batch.reward_seconds,
        "generated_tokens_per_second": generated / max(rollouts.seconds, 1e-9),
        "rollout_tokens": float(rollouts.prompt_tokens + generated),
    }


def timing_metrics(metrics: dict[str, float], step_seconds: float) -> dict[str, float]:
    """Where the step's time went, from :func:`one_step`'s metrics (``rollout_tokens`` is
    replaced by the rate):

    - ``step_seconds``: the whole step (rollouts, rewards, reference, update, all-reduces);
    - ``generation_share``: ``generation_seconds / step_seconds``; ``reward_share`` likewise
      for ``reward_seconds`` (the hybrid reward: rules, reward model, format), when logged;
    - ``tokens_per_second``: prompt + completion tokens of the step's rollouts (padding not
      counted) per second of the step, per process: tokens/s/GPU, the definition verl and
      EasyR1 publish (total tokens / (step time x GPUs)).

    ``generated_tokens_per_second`` (completion tokens per second of generation, per process)
    comes from :func:`one_step`.
    """
    rest = {k: v for k, v in metrics.items() if k != "rollout_tokens"}
    shares = {
        f"{part}_share": metrics[f"{part}_seconds"] / max(step_seconds, 1e-9)
        for part in ("generation", "reward")
        if f"{part}_seconds" in metrics
    }
    return {
        **rest,
        "step_seconds": step_seconds,
        **shares,
        "tokens_per_second": metrics["rollout_tokens"] / max(step_seconds, 1e-9),
    }


def probe(run: GRPORun, step: int) -> dict[str, Any]:
    """Greedy accuracy and hallucination rate on the probe set (averaged over processes),
    fed to the hallucination guard."""
    from r1v2.eval.greedy import probe as greedy_probe

    run.policy.model.eval()
    result = run.root_call(
        greedy_probe, run.engine, run.probe_items, max_new_tokens=run.cfg.generation.max_new_tokens
    )
    result = mean_over_processes(result, run.accelerator)
    row, run.best = watch(run.guard, run.policy.model, run.best, step, result)
    if "guard_event" in row and run.rank == 0:
        print(row["guard_event"])
    return {**result, **row}


def save(run: GRPORun, step: int) -> None:
    """Checkpoint ``step`` (collective: every process calls it)."""
    cfg = run.cfg
    state = {
        "optimizer": optimizer_state(run.optimizer, run.root_call),  # whole tensors
        "scheduler": run.scheduler.state_dict(),
        "sampler": run.sampler.state_dict(),
        "buffer": run.buffer.state_dict(),
        "step": step,
        "nan_total": run.nan_total,
        "guard": run.guard.state_dict(),
        "best": run.best,
        "config": to_dict(cfg),
    }
    run.write_checkpoint(step, state)


# ---- the loop ----------------------------------------------------------------------------------


def train(cfg: GRPOConfig) -> Path:
    """Run GRPO as configured; returns the output folder."""
    from r1v2.train.progress import StepProgress

    run = setup(cfg)
    main = run.rank == 0
    logger = run.metrics_logger() if main else None
    if main:
        print(
            f"{run.trainable_report}\nstarting at step {run.step} of {cfg.max_steps}; "
            f"output: {run.out}"
        )
    if run.probe_items and run.step == 0:  # the starting point: the guard's reference rate
        baseline = probe(run, 0)
        if main:
            logger.log(0, baseline)
    progress = StepProgress(cfg.max_steps, start=run.step, enabled=cfg.progress and main)
    nan_streak = 0
    while run.step < cfg.max_steps and not run.guard_stopped:
        step = run.step = run.step + 1
        t0 = time.perf_counter()
        metrics, stepped = one_step(run, step)
        nan_streak = 0 if stepped else nan_streak + 1
        run.nan_total += 0 if stepped else 1
        metrics = timing_metrics(metrics, time.perf_counter() - t0)
        metrics["skipped_steps"] = float(run.nan_total)
        if run.probe_due(step):
            metrics.update(probe(run, step))
        if main:
            logger.log(step, metrics)
            progress.update(step, metrics)
        run.check_nonfinite(nan_streak, step)
        if stepped and run.save_due(step):
            save(run, step)  # never after a skipped step: the last checkpoint stays a good one
    progress.close()
    save_final(run.policy, run.out, sharded=run.root_call is not direct, rank=run.rank)
    if main:
        logger.close()
        from r1v2.train.plot import plot_runs

        plot_runs([run.out], run.out / "metrics.png")
    return run.out


def make_optimizer(optim: OptimConfig, params: list[torch.nn.Parameter], max_steps: int):
    """``(optimizer, scheduler)``: AdamW over ``params`` and the learning-rate schedule of
    ``optim`` over ``max_steps`` steps (GRPO and MPO alike)."""
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(
        params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay
    )
    scheduler = get_scheduler(
        schedule_name(optim),
        optimizer,
        num_warmup_steps=optim.warmup_steps,
        num_training_steps=max_steps,
    )
    return optimizer, scheduler


def schedule_name(optim: OptimConfig) -> str:
    """transformers' scheduler name: its ``constant`` schedule has no warmup, so a constant
    schedule with warmup is ``constant_with_warmup``."""
    if optim.schedule == "constant" and optim.warmup_steps > 0:
        return "constant_with_warmup"
    return optim.schedule


def _root_call(cfg: GRPOConfig, policy, accelerator) -> RootCall:
    """How every use of the policy runs: as it is, or inside the FSDP2 root (sharding=fsdp)."""
    if cfg.sharding != "fsdp":
        return direct
    if accelerator.num_processes == 1:
        raise R1V2Error(
            "sharding=fsdp needs several processes: accelerate launch --config_file "
            "configs/accelerate/multi_gpu.yaml -m r1v2 grpo ..."
        )
    policy.synced_gpus = True  # every process steps generation until all are done
    return shard_model(policy.model, accelerator.device.type)


def optimizer_state(optimizer, root_call: RootCall) -> dict[str, Any]:
    """The optimizer's state dict; with FSDP gathered into whole tensors (every process must
    call it), so a checkpoint does not depend on the number of processes."""
    if root_call is direct:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(root_call, optimizer, options=options)


def load_optimizer_state(optimizer, state: dict[str, Any], root_call: RootCall) -> None:
    """Inverse of :func:`optimizer_state`."""
    if root_call is direct:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(root_call, optimizer, optim_state_dict=state, options=options)


SHARDED = ("FSDP", "DEEPSPEED", "MEGATRON_LM")


def check_distributed_type(kind: str) -> None:
    """Refuse accelerate setups that would wrap the model themselves: this trainer never hands
    its model to accelerate (it shards with torch FSDP2 itself, ``sharding=fsdp``), so such a
    config would be silently ignored."""
    if kind in SHARDED:
        raise R1V2Error(
            f"the accelerate config asks for {kind}, which r1v2 grpo does not use: launch with "
            "configs/accelerate/multi_gpu.yaml and add sharding=fsdp to shard the model with "
            "torch FSDP2 (or torchrun --nproc_per_node K -m r1v2 grpo on a CPU)."
        )


def run(cfg: GRPOConfig) -> int:
    """``r1v2 grpo``: train, then print the run's summary."""
    start = time.perf_counter()
    out = train(cfg)
    from accelerate import PartialState

    if PartialState().is_main_process:
        rows = read_metrics(out)
        print(f"done: {run_summary(rows, time.perf_counter() - start)}")
        print(
            f"curves: {out / 'metrics.png'}; model: {out / 'final'}; "
            f"checkpoints: {out}/checkpoint-*"
        )
    end_processes()
    return 0
