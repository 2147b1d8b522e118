"""GRPO with the hybrid reward and the Selective Sample Buffer (RECIPE sections 3-4).

One step, top to bottom (:func:`train`):

    prompts -> G rollouts each -> hybrid reward -> group advantages -> SSB replay
        -> mu policy-update iterations -> metrics -> checkpoint

Several processes (``accelerate launch --num_processes K -m r1v2 grpo ...``) split each
step's prompts into K equal contiguous shards; each process rolls out and scores its shard,
and the gradients are averaged across processes before every optimizer step, so K processes
take the same step as one process holding all prompts.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from r1v2.algos.grpo import group_advantages, group_stats, loss_normalizer, policy_loss
from r1v2.algos.ssb import SelectiveSampleBuffer, replay
from r1v2.config import option, to_dict
from r1v2.errors import R1V2Error
from r1v2.model.policy import SamplingConfig
from r1v2.rewards.hybrid import HybridRewardConfig
from r1v2.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from r1v2.train.metrics import MetricsLogger, read_metrics
from r1v2.train.sampler import PromptSampler
from r1v2.train.sharding import Runner, direct, full_tensor, shard_model

STD_FLOOR = 0.05
STD_FLOOR_NOTE = "0: exact ties only."


@dataclass
class SSBConfig:
    """The Selective Sample Buffer (RECIPE section 4)."""

    enabled: bool = option(True, "replay buffered high-|A| samples into zero-advantage slots")
    capacity: int = option(1024, "most samples the buffer keeps (oldest evicted first)")
    alpha: float = option(1.0, "draw probability proportional to |A|^alpha")
    max_age: int | None = option(
        50, "drop buffered samples older than this many steps (null: never)"
    )
    target_ratio: float = option(0.6, "replay until this share of the batch has |A| > eps")
    eps: float = option(1e-6, "advantages with |A| <= eps count as zero")


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = option(
        5e-5, "peak learning rate (toy VLM, adapter-only: 5e-5 learned, 3e-4 collapsed)"
    )
    weight_decay: float = option(0.0, "AdamW weight decay")
    betas: list[float] = option([0.9, 0.999], "AdamW betas")
    schedule: Literal["constant", "linear", "cosine"] = option(
        "constant", "learning-rate schedule after warmup"
    )
    warmup_steps: int = option(0, "linear warmup steps")
    max_grad_norm: float = option(1.0, "clip the gradient norm to this (0: no clipping)")


@dataclass
class GRPOConfig:
    """``r1v2 grpo``: GRPO with the hybrid reward and the Selective Sample Buffer."""

    model: str = option("runs/toy/vlm", "policy checkpoint (an assembled VLM or a causal LM)")
    data: str = option("runs/toy/data/train", "prompt pool: Sample JSONL/parquet file or folder")
    output_dir: str = option("runs/grpo", "where checkpoints, metrics.jsonl and logs go")
    max_steps: int = option(60, "optimizer steps to train (each on one batch of rollouts)")
    save_steps: int = option(20, "write a checkpoint every this many steps (and at the end)")
    keep_last: int = option(2, "checkpoints kept (older ones are deleted)")
    resume: str = option(
        "auto",
        "auto: continue from the newest checkpoint in output_dir (only when its config matches "
        "this one; max_steps may grow); never: start fresh; or a checkpoint path",
    )
    overwrite: bool = option(
        False,
        "start fresh in an output_dir that holds an earlier run (removed once everything is "
        "validated, before anything is written); without it such a folder is refused",
    )
    seed: int = option(0, "seed of the prompt order, the rollouts and the buffer")
    device: str = option("auto", "auto (CUDA when available), cpu or cuda")
    dtype: str = option("float32", "model dtype: float32, bfloat16 or float16")

    prompts_per_step: int = option(8, "prompts per step (over all processes)")
    group_size: int = option(8, "G: completions sampled per prompt")
    prompts_per_generate: int | None = option(
        None,
        "prompts per generate call (null: the whole shard); rollouts are seeded per call, "
        "so equal values give equal rollouts whatever the number of processes",
    )
    generation: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(max_new_tokens=128),
        metadata={"help": "sampling of rollouts"},
    )

    sharding: Literal["replicate", "fsdp"] = option(
        "replicate",
        "with several processes: replicate the model on each and average gradients, or shard "
        "parameters, gradients and optimizer state with torch FSDP2 (r1v2.train.sharding)",
    )
    trainable: Literal["adapter", "llm+adapter", "adapter+vision", "all"] = option(
        "adapter", "parts that train (paper: adapter-only is best)"
    )
    ppo_epochs: int = option(1, "mu: policy-update iterations per batch of rollouts")
    micro_batch_size: int = option(16, "sequences per forward/backward (gradient accumulation)")
    clip_low: float = option(0.2, "epsilon_low of the clipped ratio")
    clip_high: float = option(0.2, "epsilon_high of the clipped ratio")
    kl_coef: float = option(0.001, "beta: weight of KL(pi_theta || pi_ref); 0 skips the reference")
    kl_estimator: Literal["k1", "k2", "k3"] = option("k3", "KL estimator")
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
        "seq-mean-token-mean", "loss aggregation (eq. 8 is seq-mean-token-mean)"
    )
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimizer"})
    reward: HybridRewardConfig = field(
        default_factory=HybridRewardConfig, metadata={"help": "hybrid reward"}
    )
    ssb: SSBConfig = field(default_factory=SSBConfig, metadata={"help": "Selective Sample Buffer"})

    probe_data: str | None = option(
        None, "samples with a scene in metadata for the hallucination probe (null: none)"
    )
    probe_every: int = option(10, "run the probe every this many steps (and at the end)")
    probe_size: int = option(64, "probe samples (greedy decoding)")
    nan_patience: int = option(3, "abort after this many non-finite losses in a row")
    tensorboard: bool = option(True, "also log to output_dir/tensorboard when installed")
    wandb_project: str | None = option(None, "also log to this W&B project")
    progress: bool = option(True, "show a live progress display")

    def validate(self) -> None:
        self.generation.validate()
        if self.group_size < 2:
            raise R1V2Error("config field 'group_size' must be >= 2 (advantages compare a group)")
        for name in (
            "max_steps",
            "save_steps",
            "prompts_per_step",
            "micro_batch_size",
            "ppo_epochs",
        ):
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


def generate_shard(policy, items, cfg: GRPOConfig, step: int, offset: int):
    """G completions for each item: (texts, unpadded completion ids), group-major."""
    chunk = cfg.prompts_per_generate or len(items)
    texts, ids = [], []
    for start in range(0, len(items), chunk):
        torch.manual_seed(rollout_seed(cfg.seed, step, offset + start))
        out = policy.generate(
            items[start : start + chunk], cfg.generation, group_size=cfg.group_size
        )
        texts += out.texts
        ids += [row[m] for row, m in zip(out.completion_ids, out.completion_mask)]
    return texts, ids


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


def step_counts(mask: torch.Tensor, aggregation: str, world_size: int, device) -> tuple[float, float]:
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
    ref_model=None,
    run: Runner = direct,
    run_ref: Runner = direct,
):
    """mu iterations of the clipped surrogate over the batch; returns metrics and whether it stepped.

    ``old_logps`` are the current policy's log-probs before the first iteration, for fresh and
    replayed samples alike (so a replayed sample's ratio starts at 1). With one iteration
    they are the training forward's own log-probs, detached, which saves a forward pass.
    Every log-prob is taken at the sampling temperature (:func:`scoring_temperature`).
    ``run``/``run_ref`` run each use of the policy / reference model (see
    :mod:`r1v2.train.sharding`); with FSDP the gradients come back already averaged.

    Metrics: ``pg_loss``, ``kl`` and ``loss`` are the step's values (micro-batch shares
    summed); the token means (``ratio_mean``, ``clip_frac*``, ``approx_kl``) are weighted by
    tokens. Each is this process's share scaled so that the mean over processes is the
    whole step's value; all are averaged over the mu iterations.
    """
    prompts, index, ids, mask = batch
    n = ids.shape[0]
    reuse_old = cfg.ppo_epochs == 1
    temperature = scoring_temperature(cfg.generation)

    def whole_batch(runner: Runner, **kwargs) -> torch.Tensor:  # [N, T], no gradients
        with torch.no_grad():
            return runner(policy.logprobs, prompts, ids, mask, prompt_index=index,
                          micro_batch_size=cfg.micro_batch_size, temperature=temperature,
                          **kwargs)  # fmt: skip

    old = None if reuse_old else whole_batch(run)
    ref = None if ref_model is None else whole_batch(run_ref, model=ref_model)
    normalizer, tokens = step_counts(mask, cfg.aggregation, world_size, policy.device)
    sums: dict[str, float] = {}
    stepped = True
    for _ in range(cfg.ppo_epochs):
        optimizer.zero_grad(set_to_none=True)
        loss_total = 0.0
        for start in range(0, n, cfg.micro_batch_size):
            sl = slice(start, min(start + cfg.micro_batch_size, n))
            logps = run(policy.logprobs, prompts, ids[sl], mask[sl], prompt_index=index[sl],
                        temperature=temperature)  # fmt: skip
            loss, m = policy_loss(
                logps,
                logps.detach() if reuse_old else old[sl].to(logps.device),
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
        if run is direct:  # FSDP averaged the gradients in the backward pass
            average_gradients(params, world_size)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm or math.inf)
        grad_norm = full_tensor(grad_norm)
        if not (math.isfinite(loss_total) and torch.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            stepped = False
            sums["loss"] = loss_total
            break
        optimizer.step()
        sums["loss"] = sums.get("loss", 0.0) + loss_total / cfg.ppo_epochs
        sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm) / cfg.ppo_epochs
    if stepped:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return sums, stepped


def probe(policy, probe_items, cfg: GRPOConfig) -> dict[str, float]:
    """Greedy answers on the probe set: accuracy and hallucination rate (synthetic checker)."""
    from r1v2.data.synthetic import hallucination_rate
    from r1v2.rewards import accuracy_reward

    greedy = dataclasses.replace(cfg.generation, do_sample=False)
    texts = []
    for start in range(0, len(probe_items), 32):
        texts += policy.generate(probe_items[start : start + 32], greedy).texts
    scores = [accuracy_reward(t, s.answer, choices=s.choices) for t, s in zip(texts, probe_items)]
    scored = [x for x in scores if x is not None]  # None: the reference cannot be graded
    scenes = [s.metadata["scene"] for s in probe_items]
    return {
        "probe_accuracy": sum(scored) / len(scored) if scored else math.nan,
        "probe_unscored": float(len(scores) - len(scored)),
        "hallucination_rate": hallucination_rate(texts, scenes),
    }


@dataclass
class StepContext:
    """What one GRPO step uses; built once by :func:`train`."""

    cfg: GRPOConfig
    policy: Any
    pool: list[Any]
    sampler: PromptSampler
    reward_fn: Any
    buffer: SelectiveSampleBuffer
    optimizer: Any
    scheduler: Any
    params: list[torch.nn.Parameter]
    ref_model: Any
    run: Runner
    run_ref: Runner
    rank: int
    world: int


def one_step(ctx: StepContext, step: int) -> tuple[dict[str, float], bool]:
    """Steps 1-7 of one GRPO step on this process; returns its metrics and whether the
    optimizer stepped."""
    cfg, policy, rank, world, buffer = ctx.cfg, ctx.policy, ctx.rank, ctx.world, ctx.buffer
    shard = cfg.prompts_per_step // world
    # 1. prompts: this process's contiguous shard of the step's prompts
    indices = ctx.sampler.next(cfg.prompts_per_step)[rank * shard : (rank + 1) * shard]
    items = [ctx.pool[i] for i in indices]
    # 2. G rollouts per prompt
    policy.model.eval()
    texts, completions = ctx.run(generate_shard, policy, items, cfg, step, rank * shard)
    per_sample = [items[i // cfg.group_size] for i in range(len(texts))]
    # 3. hybrid reward (each process scores its own rollouts)
    rewards = ctx.reward_fn(texts, per_sample)
    # 4. group advantages and 5. Selective Sample Buffer over the whole step's batch
    # (gathered from every process, in process order), so K processes decide as one
    trajectories = _gather([Trajectory(s, c) for s, c in zip(per_sample, completions)], world)
    total = _gather(list(rewards.total), world)
    rule = rewards.components.get("accuracy")
    advantages = group_advantages(total, cfg.group_size, eps=cfg.ssb.eps,
                                  std_floor=cfg.std_floor)  # fmt: skip
    stats = group_stats(total, cfg.group_size, eps=cfg.ssb.eps, std_floor=cfg.std_floor)
    rule_ratio = (
        math.nan
        if rule is None
        else group_stats(_gather(list(rule), world), cfg.group_size, eps=cfg.ssb.eps,
                         std_floor=cfg.std_floor)["effective_ratio"]
    )  # fmt: skip
    replay_stats = {
        "effective_ratio_before": stats["effective_ratio"],
        "effective_ratio_after": stats["effective_ratio"],
        "replayed": 0.0,
    }
    if cfg.ssb.enabled:
        rb = replay(trajectories, advantages, buffer, cfg.ssb.target_ratio, step=step)
        trajectories, advantages, replay_stats = rb.samples, rb.advantages, rb.stats
    mine = slice(rank * len(completions), (rank + 1) * len(completions))
    trajectories, advantages = trajectories[mine], advantages[mine]
    # 6. mu policy-update iterations
    policy.model.train()
    update, stepped = policy_update(
        policy,
        collate(policy, trajectories),
        advantages,
        cfg=cfg,
        optimizer=ctx.optimizer,
        scheduler=ctx.scheduler,
        params=ctx.params,
        world_size=world,
        ref_model=ctx.ref_model,
        run=ctx.run,
        run_ref=ctx.run_ref,
    )
    # 7. metrics (effective ratios and rewards are already those of the whole step)
    metrics = {
        "reward_mean": stats["reward_mean"],
        **{  # reward/total is reward_mean under another name: logged once
            k.replace("reward/", "reward_"): v
            for k, v in rewards.metrics().items()
            if k != "reward/total"
        },
        "effective_ratio": replay_stats["effective_ratio_after"],
        "effective_ratio_before_replay": replay_stats["effective_ratio_before"],
        "effective_ratio_rule": rule_ratio,
        "zero_std_group_fraction": stats["zero_variance_frac"],
        "kl": update.get("kl", 0.0),
        "approx_kl": update.get("approx_kl", 0.0),
        "clip_fraction": update.get("clip_frac", 0.0),
        "response_length_mean": sum(len(c) for c in completions) / len(completions),
        "ssb_size": float(len(buffer)),
        "replayed": replay_stats["replayed"],
        "loss": update.get("loss", math.nan),
        "grad_norm": update.get("grad_norm", math.nan),
        "lr": ctx.scheduler.get_last_lr()[0],
        "rollouts": float(len(completions) * world),
    }
    return metrics, stepped


# ---- the loop --------------------------------------------------------------------------------


def train(cfg: GRPOConfig) -> Path:
    """Run GRPO as configured; returns the output folder."""
    from accelerate import Accelerator
    from transformers import get_scheduler

    from r1v2.data.loaders import load_samples
    from r1v2.model.freeze import set_trainable
    from r1v2.model.policy import Policy, format_question
    from r1v2.rewards.hybrid import HybridReward
    from r1v2.train.progress import StepProgress

    # Without a GPU, accelerate only joins the processes of a launch (gloo) when told cpu=True.
    accelerator = Accelerator(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    check_distributed_type(accelerator.distributed_type.value)
    rank, world = accelerator.process_index, accelerator.num_processes
    if cfg.prompts_per_step % world:
        raise R1V2Error(f"prompts_per_step={cfg.prompts_per_step} must divide by {world} processes")
    out = Path(cfg.output_dir)
    ckpt, replace_old = _resume_path(cfg, out)
    torch.manual_seed(cfg.seed)

    pool = load_samples(cfg.data).samples
    if not pool:
        raise R1V2Error(f"{cfg.data}: no samples to train on")
    probe_items = load_samples(cfg.probe_data).samples[: cfg.probe_size] if cfg.probe_data else []
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        cfg.dtype
    ]
    policy = Policy.from_pretrained(cfg.model, dtype=dtype, device=accelerator.device)
    report = set_trainable(policy.model, cfg.trainable)
    ref_model = (
        copy.deepcopy(policy.model).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
    )
    state: dict[str, Any] = {}
    if ckpt is not None:
        # weights before sharding: the checkpoint holds whole tensors
        state = load_checkpoint(ckpt, policy.model, rank=rank)[0]
        check_resumable(state.get("config", {}), cfg, ckpt, state["step"])
    run, run_ref = _runners(cfg, policy, ref_model, world, accelerator.device.type)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay
    )
    scheduler = get_scheduler(
        cfg.optim.schedule,
        optimizer,
        num_warmup_steps=cfg.optim.warmup_steps,
        num_training_steps=cfg.max_steps,
    )
    reward_fn = HybridReward.from_config(
        cfg.reward,
        question_fn=lambda s: format_question(s.question, s.choices),
        after_think=policy.opens_think,
    )
    # One buffer, the same on every process: replay decides over the gathered batch.
    buffer = SelectiveSampleBuffer(
        cfg.ssb.capacity, cfg.ssb.alpha, cfg.ssb.max_age, cfg.ssb.eps, seed=cfg.seed
    )
    sampler = PromptSampler(len(pool), seed=cfg.seed)

    nan_streak = 0
    step, nan_total = _restore(state, ckpt, optimizer, scheduler, sampler, buffer, run, cfg)
    if replace_old and rank == 0:  # everything is validated: only now remove the earlier run
        _clear_folder(out)
    accelerator.wait_for_everyone()
    logger = (
        MetricsLogger(
            out,
            resume_step=step,
            tensorboard=cfg.tensorboard and rank == 0,
            wandb_project=cfg.wandb_project if rank == 0 else None,
            run_config=to_dict(cfg),
        )
        if rank == 0
        else None
    )
    if rank == 0:
        print(f"{report}\nstarting at step {step} of {cfg.max_steps}; output: {out}")

    def checkpoint(at: int) -> None:
        state = {
            "optimizer": optimizer_state(optimizer, run),  # whole tensors (collective)
            "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(),
            "buffer": buffer.state_dict(),
            "step": at,
            "nan_total": nan_total,
            "config": to_dict(cfg),
        }
        save_checkpoint(
            out,
            at,
            model=policy.model,
            trainer_state=state,
            keep_last=cfg.keep_last,
            meta={"model": str(cfg.model), "trainable": cfg.trainable},
            rank=rank,
            world_size=world,
            barrier=accelerator.wait_for_everyone,
        )

    if probe_items and step == 0:  # the starting point, for before/after comparisons
        policy.model.eval()
        baseline = _mean_over_processes(run(probe, policy, probe_items, cfg), accelerator)
        if rank == 0:
            logger.log(0, baseline)
    ctx = StepContext(cfg, policy, pool, sampler, reward_fn, buffer, optimizer, scheduler, params,
                      ref_model, run, run_ref, rank, world)  # fmt: skip
    progress = StepProgress(cfg.max_steps, start=step, enabled=cfg.progress and rank == 0)
    while step < cfg.max_steps:
        step += 1
        t0 = time.perf_counter()
        metrics, stepped = one_step(ctx, step)
        nan_streak = 0 if stepped else nan_streak + 1
        nan_total += 0 if stepped else 1
        metrics["skipped_steps"] = float(nan_total)
        metrics["step_seconds"] = time.perf_counter() - t0
        metrics = _mean_over_processes(metrics, accelerator)
        if probe_items and (step % cfg.probe_every == 0 or step == cfg.max_steps):
            policy.model.eval()
            metrics.update(_mean_over_processes(run(probe, policy, probe_items, cfg), accelerator))
        if rank == 0:
            logger.log(step, metrics)
            progress.update(step, metrics)
        if nan_streak >= cfg.nan_patience:
            last = latest_checkpoint(out)
            raise R1V2Error(
                f"{nan_streak} non-finite losses in a row (step {step}); stopping. "
                f"Last good checkpoint: {last or 'none'}. Lower optim.lr or check the data."
            )
        if stepped and (step % cfg.save_steps == 0 or step == cfg.max_steps):
            checkpoint(step)  # never after a skipped step: the last checkpoint stays a good one
    progress.close()
    if logger is not None:
        logger.close()
        from r1v2.train.plot import plot_runs

        plot_runs([out], out / "metrics.png")
    return out


def _restore(state, ckpt, optimizer, scheduler, sampler, buffer, run, cfg) -> tuple[int, int]:
    """Load a checkpoint's trainer state (nothing when ``state`` is empty); returns
    ``(step, nan_total)``."""
    if not state:
        return 0, 0
    load_optimizer_state(optimizer, state["optimizer"], run)
    scheduler.load_state_dict(state["scheduler"])
    try:
        sampler.load_state_dict(state["sampler"])
    except ValueError as e:
        raise R1V2Error(f"{ckpt}: {e}: the prompt pool {cfg.data} changed") from e
    buffer.load_state_dict(state["buffer"])
    return state["step"], state["nan_total"]


def _runners(cfg: GRPOConfig, policy, ref_model, world: int, device_type: str):
    """How the policy and the reference model run: as they are, or sharded with FSDP2."""
    if cfg.sharding != "fsdp":
        return direct, direct
    if world == 1:
        raise R1V2Error(
            "sharding=fsdp needs several processes: accelerate launch --config_file "
            "configs/accelerate/multi_gpu.yaml -m r1v2 grpo ..."
        )
    policy.synced_gpus = True  # every process steps generation until all are done
    run = shard_model(policy.model, device_type)
    return run, direct if ref_model is None else shard_model(ref_model, device_type)


def optimizer_state(optimizer, run: Runner) -> dict[str, Any]:
    """The optimizer's state dict; with FSDP gathered into whole tensors (every process must
    call it), so a checkpoint does not depend on the number of processes."""
    if run is direct:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(run, optimizer, options=options)


def load_optimizer_state(optimizer, state: dict[str, Any], run: Runner) -> None:
    """Inverse of :func:`optimizer_state`."""
    if run is direct:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(run, optimizer, optim_state_dict=state, options=options)


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


# Config fields that may differ when a run is resumed: they do not change what it computes
# (micro_batch_size only the float summation order).
RESUMABLE = {
    "max_steps", "save_steps", "keep_last", "resume", "overwrite", "output_dir", "device",
    "progress", "tensorboard", "wandb_project", "nan_patience", "probe_data", "probe_every",
    "probe_size", "micro_batch_size",
}  # fmt: skip


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "weights":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def check_resumable(saved: dict[str, Any], cfg: GRPOConfig, ckpt: Path, step: int) -> None:
    """Refuse to continue a checkpoint whose run was configured differently (fields outside
    :data:`RESUMABLE`; keys an older checkpoint lacks are not compared), or that is already
    past ``max_steps``."""
    before, now = _flat(saved), _flat(to_dict(cfg))
    changed = [
        f"{k} ({before[k]!r} -> {now[k]!r})"
        for k in sorted(before.keys() & now.keys())
        if k.split(".")[0] not in RESUMABLE and before[k] != now[k]
    ]
    if changed:
        raise R1V2Error(
            f"{ckpt} was trained with another config: {', '.join(changed)}. To start a new run "
            "use another output_dir, or resume=never overwrite=true to replace this one"
        )
    if step > cfg.max_steps:
        raise R1V2Error(
            f"{ckpt} is at step {step}, past max_steps={cfg.max_steps}: raise max_steps to "
            "continue it, or use another output_dir"
        )


def _resume_path(cfg: GRPOConfig, out: Path) -> tuple[Path | None, bool]:
    """``(checkpoint to resume or None, whether output_dir holds an earlier run to remove)``;
    checked before anything loads. A folder with files but no checkpoint to continue is
    refused unless ``overwrite=true``."""
    if out.exists() and not out.is_dir():
        raise R1V2Error(f"output_dir={out} is a file, not a folder")
    if cfg.resume not in ("auto", "never"):
        path = Path(cfg.resume)
        if not (path / "meta.json").is_file():
            raise R1V2Error(f"resume={cfg.resume}: not a checkpoint folder (no meta.json)")
        return path, False
    latest = latest_checkpoint(out) if cfg.resume == "auto" else None
    if latest is not None:
        return latest, False
    occupied = out.is_dir() and any(out.iterdir())
    if occupied and not cfg.overwrite:
        what = "an earlier run" if cfg.resume == "never" else "files but no checkpoint to resume"
        raise R1V2Error(
            f"output_dir={out} holds {what}: use another output_dir, or overwrite=true to "
            "replace it" + (" (resume=auto continues it)" if cfg.resume == "never" else "")
        )
    return None, occupied


def _clear_folder(out: Path) -> None:
    import shutil

    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _gather(values: list[Any], world: int) -> list[Any]:
    """Every process's list, concatenated in process order (the same on every process)."""
    if world == 1:
        return list(values)
    return [v for part in _gather_objects(values, world) for v in part]


def _gather_objects(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _mean_over_processes(metrics: dict[str, float], accelerator) -> dict[str, float]:
    if accelerator.num_processes == 1:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    values = accelerator.reduce(values.to(accelerator.device), reduction="mean").cpu()
    return dict(zip(keys, values.tolist()))


def run_summary(rows: list[dict[str, Any]], seconds: float) -> str:
    """One paragraph on a finished run from its metrics rows: steps, time, mean reward of the
    first and last 20 steps, probe accuracy and hallucination rate first -> last, and the
    lowest effective ratio (after replay)."""
    steps = [r for r in rows if "reward_mean" in r]
    parts = [f"{steps[-1]['step'] if steps else 0} steps in {seconds:.0f} s"]
    if steps:
        head, tail = steps[:20], steps[-20:]
        first = sum(r["reward_mean"] for r in head) / len(head)
        last = sum(r["reward_mean"] for r in tail) / len(tail)
        parts.append(f"reward {first:.3g} -> {last:.3g} (mean of the first and last 20 steps)")
        low = min(r["effective_ratio"] for r in steps)
        parts.append(f"lowest effective ratio {low:.2f}")
    probes = [r for r in rows if "probe_accuracy" in r]
    if probes:
        a, b = probes[0], probes[-1]
        parts.append(
            f"probe accuracy {a['probe_accuracy']:.1%} -> {b['probe_accuracy']:.1%} "
            f"(steps {a['step']} -> {b['step']}), hallucination rate "
            f"{a['hallucination_rate']:.1%} -> {b['hallucination_rate']:.1%}"
        )
    return "; ".join(parts)


def run(cfg: GRPOConfig) -> int:
    start = time.perf_counter()
    out = train(cfg)
    from accelerate import PartialState

    if PartialState().is_main_process:
        rows = read_metrics(out)
        print(f"done: {run_summary(rows, time.perf_counter() - start)}")
        print(f"curves: {out / 'metrics.png'}; checkpoints: {out}/checkpoint-*")
    return 0
