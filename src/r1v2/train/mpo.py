"""Iterative Mixed Preference Optimization (RECIPE section 2): ``r1v2 mpo`` and ``r1v2 mpo pairs``.

:func:`train` reads top to bottom: :func:`setup` (policy, pi_0, reward model, optimizer,
sampler, guard, resume), the step-0 probe, then the loop of :func:`one_step`:

    a new round when the last one has had its ``epochs`` steps:
        1. prompts -> 2. n responses each from the current policy -> 3. reward-model scores
        -> 4. rule constraints -> 5. at most one (chosen, rejected) pair per prompt
    6. one optimizer step over the round's pairs (eq. 2, gradients accumulated over
       micro-batches, normalised by the round's pair count) -> 7. metrics
    (then the probe and the hallucination guard, the log and a checkpoint; at the end
    OUTPUT_DIR/final)

A step is one optimizer step; a round is ``epochs`` steps over the same pairs (with the
default ``epochs=1`` a step is a round). ``data=`` may instead be an offline pairs file
(:mod:`r1v2.data.pairs`): rounds then take the next ``prompts_per_round`` pairs of the file,
and nothing is generated or scored.

The BCO shift ``delta`` (a :class:`r1v2.algos.mpo.RunningMean`) is updated once per optimizer
step, with every pair of the step (all processes): all micro-batches of a step use the delta
of the previous steps (our choice; :class:`r1v2.algos.mpo.MPOLoss` updates it per call), so
the split into micro-batches and processes does not change the loss.

Several processes (``torchrun --nproc_per_node K -m r1v2 mpo ...`` on a CPU, ``accelerate
launch`` on GPUs): each process builds the pairs of its contiguous shard of the round's
prompts; the pairs are gathered in process order, so every process holds the round's whole
list; the list's micro-batches are dealt out in contiguous runs, gradients are averaged and
the shift's sums all-reduced: K processes take the step one process takes with the same
micro-batches.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from r1v2.algos.mpo import DEFAULT_WEIGHTS, RunningMean, mpo_loss, sequence_logratio
from r1v2.config import check_range, option, to_dict
from r1v2.data.pairs import is_pairs_data, load_pairs, write_pairs
from r1v2.errors import R1V2Error
from r1v2.eval.greedy import probe as greedy_probe
from r1v2.model.dtypes import Dtype
from r1v2.train.checkpoint import load_checkpoint
from r1v2.train.grpo import (
    OptimConfig,
    average_gradients,
    check_distributed_type,
    load_optimizer_state,
    make_optimizer,
    optimizer_state,
    rollout_seed,
)
from r1v2.train.guard import HallucinationGuard
from r1v2.train.metrics import read_metrics
from r1v2.train.pairs import RULES, RepeatConfig, Rule, rule_checks, select_pair
from r1v2.train.sampler import PromptSampler
from r1v2.train.sharding import direct
from r1v2.train.stage import RESUMABLE as STAGE_RESUMABLE
from r1v2.train.stage import (
    PolicySetup,
    RunSettings,
    StageRun,
    check_resumable,
    check_same_data,
    clear_folder,
    end_processes,
    gather_lists,
    gather_objects,
    load_policy,
    load_pool,
    load_probe,
    mean_over_processes,
    prepare_output,
    probe_summary,
    resolve_device,
    save_final,
    watch,
)

LOSS_NAMES = tuple(DEFAULT_WEIGHTS)


@dataclass
class MPOLossConfig:
    """Eq. (2): the weighted sum of the named losses."""

    weights: dict[str, float] = option(
        dict(DEFAULT_WEIGHTS),
        "weight of each loss: dpo (eq. 3), bco (eq. 4), nll on the chosen response (eq. 5); a "
        "name left out or weighted 0 is not computed. {nll: 1} is SFT on the chosen responses, "
        "{dpo: 1} plain DPO (RECIPE: InternVL's MPO 0.8/0.2/1.0)",
    )
    beta: float = option(0.1, "b of eqs. 3-4: scale of the log-ratio rewards (TRL: beta)")

    def validate(self) -> None:
        unknown = sorted(set(self.weights) - set(LOSS_NAMES))
        if unknown:
            raise R1V2Error(
                f"loss.weights: unknown loss(es) {', '.join(unknown)}; valid: "
                f"{', '.join(LOSS_NAMES)}"
            )
        if any(w < 0 for w in self.weights.values()) or not any(self.weights.values()):
            raise R1V2Error("loss.weights must be >= 0 with at least one above 0")
        if self.beta <= 0:
            raise R1V2Error("config field 'loss.beta' must be > 0")


@dataclass
class PairSettings(PolicySetup):
    """How one round's pairs are built: sampling (PolicySetup), reward model, rules, threshold.
    Shared by ``r1v2 mpo`` and ``r1v2 mpo pairs``, so both build the same pairs."""

    rm_path: str = option("runs/toy/rm", "reward model checkpoint (value head or classifier)")
    rm_device: Literal["auto", "cpu", "cuda"] = option(
        "auto", "device of the reward model (auto: the policy's)"
    )
    rm_dtype: Dtype = option("float32", "dtype of the reward model")
    rm_batch_size: int = option(16, "responses per reward-model forward pass")
    prompts_per_round: int = option(
        16,
        "prompts per round over all processes (offline pairs: pairs per round); toy VLM: a "
        "round of 16 x 8 responses and its step take about 2 s on 2 CPU cores",
    )
    n: int = option(
        8,
        "responses sampled per prompt (toy VLM: with 8, 62% of prompts had a correct response "
        "to choose; other values to be measured)",
    )
    prompts_per_generate: int | None = option(
        None,
        "prompts per generate call (null: the whole shard); responses are seeded per call, "
        "so equal values give equal responses whatever the number of processes",
    )
    threshold: float = option(
        0.5,
        "MPO threshold: least reward-model score gap score(chosen) - score(rejected) for a "
        "pair, on the reward model's own scale (paper: 7/10/15 on its RM, higher more stable). "
        "Toy RM (faithful and hallucinated means 1.2 apart, std ~1), demo seed 0, 30 steps, 500 "
        "held-out samples: 0 kept 298 pairs -> 41.2% accuracy / 70.8% hallucination, 0.5 kept "
        "93 -> 44.6% / 67.2%, 1.0 kept 59 -> 41.8% / 68.4% (from 34.0% / 77.4%; all stable)",
    )
    rules: list[Rule] = option(
        list(RULES),
        "rule constraints the chosen response must pass: accuracy (correct answer), format "
        "(reasoning, </think>, one boxed answer), repetition (no repeated reasoning); [] = the "
        "reward model alone",
    )
    repeat: RepeatConfig = field(
        default_factory=RepeatConfig, metadata={"help": "the repetition rule"}
    )

    def validate(self) -> None:
        """Every value checked before anything loads; errors name the dotted field."""
        self.generation.validate("generation.")
        self.repeat.validate()
        if self.n < 2:
            raise R1V2Error("config field 'n' must be >= 2 (a pair needs two responses)")
        check_range("prompts_per_round", self.prompts_per_round, 1)
        check_range("prompts_per_generate", self.prompts_per_generate, 1)
        check_range("rm_batch_size", self.rm_batch_size, 1)
        check_range("threshold", self.threshold, 0)


@dataclass
class MPOConfig(RunSettings, PairSettings):
    """``r1v2 mpo``: iterative MPO (online pairs) or MPO on an offline pairs file."""

    output_dir: str = option("runs/mpo", "where checkpoints, metrics.jsonl and final/ go")
    max_steps: int = option(
        30,
        "optimizer steps to train; a round is `epochs` steps over its pairs. Toy VLM (seed 0, "
        "200 probe samples): probe accuracy 30.5% -> 39.0% at 20 steps, 43.0% at 40, then "
        "40.0% at 60 and 38.5% at 80 (hallucination 78.5% -> 69.0% at 40, 70.0% at 80)",
    )
    save_steps: int = option(5, "write a checkpoint every this many steps (and at the end)")
    probe_every: int = option(5, "run the probe every this many steps (and at step 0 and the end)")

    epochs: int = option(1, "optimizer steps (passes) over each round's pairs")
    micro_batch_size: int = option(
        8, "pairs per forward/backward on each process (2 sequences each), accumulated"
    )
    loss: MPOLossConfig = field(default_factory=MPOLossConfig, metadata={"help": "MPO loss"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimizer"})
    on_bad: Literal["error", "skip"] = option(
        "error", "bad rows of an offline pairs file: error, or skip them (counts printed)"
    )

    def validate(self) -> None:
        super().validate()
        self.validate_run()
        self.loss.validate()
        self.optim.validate()
        for name in ("epochs", "micro_batch_size"):
            check_range(name, getattr(self, name), 1)


@dataclass
class MPOPairsConfig(PairSettings):
    """``r1v2 mpo pairs``: write the pairs one iterative round builds (the first round of
    ``r1v2 mpo`` with the same settings), in the offline pairs layout."""

    out: str = option("runs/mpo/pairs.jsonl", "pairs file to write (JSONL)")
    overwrite: bool = option(False, "replace an existing output file")


# ---- pairs of one round ------------------------------------------------------------------------


@dataclass
class TrainPair:
    """One preference pair as the update needs it."""

    item: Any  # the prompt: a Sample, or a PreferenceRecord (offline)
    chosen: torch.Tensor  # [Tc] token ids, unpadded (EOS included when the response ended)
    rejected: torch.Tensor  # [Tr]
    chosen_text: str
    rejected_text: str
    chosen_score: float = math.nan  # reward-model scores (NaN offline)
    rejected_score: float = math.nan


@dataclass
class RoundState:
    """The round in progress: its pairs (the whole round's, in process order), its build
    statistics, and how many of its ``epochs`` steps are done. Saved in checkpoints."""

    index: int
    pairs: list[TrainPair]
    stats: dict[str, float]
    epochs_done: int = 0


def generate_candidates(engine, items, cfg: PairSettings, round_index: int, offset: int):
    """``n`` responses per item (group-major): (texts, unpadded ids). Each generate call is
    seeded by its global position (grpo's :func:`rollout_seed`)."""
    chunk = cfg.prompts_per_generate or len(items)
    texts, ids = [], []
    for start in range(0, len(items), chunk):
        torch.manual_seed(rollout_seed(cfg.seed, round_index, offset + start))
        out = engine.generate(items[start : start + chunk], cfg.generation, group_size=cfg.n)
        texts += out.texts
        ids += [row[m] for row, m in zip(out.completion_ids, out.completion_mask)]
    return texts, ids


def score_candidates(reward_model, items, texts: list[str], n: int) -> list[float]:
    """Raw reward-model scores of ``texts`` (``n`` per item, group-major); the model sees the
    prompt as the policy renders its question, and the images."""
    from r1v2.model.policy import format_question
    from r1v2.rewards import RMInput

    inputs = [
        RMInput(
            format_question(items[i // n].question, items[i // n].choices),
            text,
            tuple(items[i // n].images),
        )
        for i, text in enumerate(texts)
    ]
    return reward_model.score(inputs)


COUNTS = (
    "prompts",
    "candidates",
    "pairs_built",
    "pairs_kept",
    "no_valid_chosen",
    "gap_kept",
    "score_sum",
    "score_count",
    "length_sum",
    *(f"pass_{r}" for r in RULES),
)


def round_pairs(
    engine,
    reward_model,
    items,
    cfg: PairSettings,
    *,
    round_index: int,
    offset: int,
    after_think: bool,
) -> tuple[list[TrainPair], dict[str, float]]:
    """Steps 2-5 for ``items``: the kept pairs (in item order) and the counts behind the
    round's statistics (:data:`COUNTS`, summed over processes by the caller)."""
    n = cfg.n
    texts, ids = generate_candidates(engine, items, cfg, round_index, offset)
    scores = score_candidates(reward_model, items, texts, n)
    counts = dict.fromkeys(COUNTS, 0.0)
    counts.update(prompts=len(items), candidates=len(texts))
    counts["length_sum"] = float(sum(len(x) for x in ids))
    pairs = []
    for j, item in enumerate(items):
        rows = list(range(j * n, (j + 1) * n))
        checks = [
            rule_checks(
                texts[i],
                item.answer,
                item.choices,
                after_think=after_think,
                rules=cfg.rules,
                repeat=cfg.repeat,
            )
            for i in rows
        ]
        for check in checks:
            for rule, ok in check.items():
                counts[f"pass_{rule}"] += float(ok)
        finite = [s for s in (scores[i] for i in rows) if math.isfinite(s)]
        counts["score_sum"] += sum(finite)
        counts["score_count"] += len(finite)
        decision = select_pair(
            [scores[i] for i in rows], [all(c.values()) for c in checks], cfg.threshold
        )
        counts["no_valid_chosen"] += decision.reason == "no_valid_chosen"
        counts["pairs_built"] += decision.built
        if decision.kept:
            c, r = rows[decision.chosen], rows[decision.rejected]
            counts["pairs_kept"] += 1
            counts["gap_kept"] += decision.gap
            pairs.append(TrainPair(item, ids[c], ids[r], texts[c], texts[r], scores[c], scores[r]))
    return pairs, counts


def round_stats(counts: dict[str, float], rules) -> dict[str, float]:
    """The logged statistics of a round from its summed counts."""

    def ratio(a: float, b: float) -> float:
        return a / b if b else math.nan

    stats = {
        "prompts": counts["prompts"],
        "pairs_built": counts["pairs_built"],
        "pairs_kept": counts["pairs_kept"],
        "no_valid_chosen": counts["no_valid_chosen"],
        "score_gap_mean": ratio(counts["gap_kept"], counts["pairs_kept"]),
        "rm_score_mean": ratio(counts["score_sum"], counts["score_count"]),
        "response_length_mean": ratio(counts["length_sum"], counts["candidates"]),
    }
    for rule in rules:
        stats[f"rule_pass_{rule}"] = ratio(counts[f"pass_{rule}"], counts["candidates"])
    return stats


def encode_response(policy, text: str) -> torch.Tensor:
    """``[T]`` token ids of an offline response, with the policy's EOS appended (the policy's
    own responses end with it)."""
    ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor([*ids, policy.eos_ids[0]], dtype=torch.long)


# ---- the update ---------------------------------------------------------------------------------


def micro_batches(n: int, size: int, world: int = 1, rank: int = 0) -> list[slice]:
    """This process's micro-batches of a list of ``n`` pairs: the list is cut into
    ``M = ceil(n / size)`` micro-batches (the last may be shorter) and process ``rank`` takes
    those from ``M * rank // world`` to ``M * (rank + 1) // world``: a contiguous slice made of
    the very micro-batches one process would use (a process may get none)."""
    count = math.ceil(n / size)
    first, last = count * rank // world, count * (rank + 1) // world
    return [slice(i * size, min((i + 1) * size, n)) for i in range(first, last)]


def collate_pairs(policy, pairs: list[TrainPair]):
    """Prompt batch ``[B]``, ``prompt_index [2B]`` and padded ids / bool mask ``[2B, T]``: the B
    chosen responses, then the B rejected ones (row i and row B + i answer prompt i)."""
    b = len(pairs)
    seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((2 * b, width), policy.pad_id, dtype=torch.long)  # [2B, T]
    mask = torch.zeros((2 * b, width), dtype=torch.bool)  # [2B, T]
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = True
    index = torch.arange(b).repeat(2)  # [2B]
    prompts = policy.encode([p.item for p in pairs])
    limit = policy.context_length
    if limit is not None:
        prompt_lengths = prompts.attention_mask.sum(dim=1).tolist()  # [B]
        for p, n in zip(pairs, prompt_lengths):
            longest = int(n) + max(len(p.chosen), len(p.rejected))
            policy.check_length(
                "", longest, f"pair {getattr(p.item, 'id', '?')!r} (prompt and response)"
            )
    return prompts, index, ids, mask


def pair_loss(policy, reference, batch, *, weights, beta: float, delta: float, normalizer: float):
    """Eq. (2) on one micro-batch: ``(loss, metrics, logratios [2B])``.

    Log-probs at temperature 1 (the policy's own distribution), pi_0's in eval mode inside
    ``reference.active()``; log-ratios are sums over response tokens
    (:func:`r1v2.algos.mpo.sequence_logratio`); ``loss`` is this micro-batch's share of the
    step's loss (sum over its pairs / ``normalizer``).
    """
    prompts, index, ids, mask = batch
    b = ids.shape[0] // 2
    was_training = policy.model.training
    policy.model.eval()
    with reference.active():
        ref = policy.logprobs(prompts, ids, mask, prompt_index=index)  # [2B, T]
    policy.model.train(was_training)
    logps = policy.logprobs(prompts, ids, mask, prompt_index=index)  # [2B, T]
    mask = mask.to(logps.device)
    logratio = sequence_logratio(logps, ref.to(logps.device), mask)  # [2B]
    loss, metrics = mpo_loss(
        logratio[:b],
        logratio[b:],
        logps[:b],
        mask[:b],
        beta=beta,
        delta=delta,
        weights=weights,
        normalizer=normalizer,
    )
    return loss, metrics, logratio.detach()


SUMS = (
    "pairs",
    "chosen_logratio",
    "rejected_logratio",
    "reward_accuracy",
    *(f"loss_{k}" for k in LOSS_NAMES),
)


def mpo_update(
    policy,
    pairs: list[TrainPair],
    *,
    cfg: MPOConfig,
    optimizer,
    scheduler,
    params,
    shift: RunningMean,
    reference,
    world: int = 1,
    rank: int = 0,
) -> tuple[dict[str, float], bool]:
    """Step 6: one optimizer step over the round's ``pairs`` (every process holds all of them
    and trains on its micro-batches). Returns the step's metrics (over all pairs) and whether
    it stepped (False: a non-finite loss or gradient; nothing changed).

    Each micro-batch's loss is its pairs' sum divided by ``len(pairs) / world``; averaging
    gradients over processes then gives the gradient of the mean over all pairs. Every
    micro-batch uses ``delta = shift.mean``; after the step the shift takes ``beta * lr`` of
    every chosen and rejected response of the step (sums all-reduced).
    """
    weights = {k: w for k, w in cfg.loss.weights.items() if w != 0}
    beta, delta = cfg.loss.beta, shift.mean
    optimizer.zero_grad(set_to_none=True)
    sums = dict.fromkeys(SUMS, 0.0)
    for sl in micro_batches(len(pairs), cfg.micro_batch_size, world, rank):
        batch = collate_pairs(policy, pairs[sl])
        loss, m, lr = pair_loss(
            policy,
            reference,
            batch,
            weights=weights,
            beta=beta,
            delta=delta,
            normalizer=len(pairs) / world,
        )
        loss.backward()
        b = lr.shape[0] // 2
        lr_c, lr_r = lr[:b].double(), lr[b:].double()  # [B], [B]
        sums["pairs"] += b
        sums["chosen_logratio"] += float(lr_c.sum())
        sums["rejected_logratio"] += float(lr_r.sum())
        sums["reward_accuracy"] += float((lr_c > lr_r).sum())
        for k in weights:
            sums[f"loss_{k}"] += float(m[k]) * b
    average_gradients(params, world)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm or math.inf)
    sums = _all_reduce(sums, world, policy.device)
    stepped = bool(torch.isfinite(grad_norm)) and all(math.isfinite(v) for v in sums.values())
    if stepped:
        optimizer.step()
        scheduler.step()
        total = beta * (sums["chosen_logratio"] + sums["rejected_logratio"])
        shift.update_from_sums(total, 2 * int(sums["pairs"]))  # sums already all-reduced
    optimizer.zero_grad(set_to_none=True)
    return _update_metrics(sums, weights, beta, delta, float(grad_norm)), stepped


def _update_metrics(sums, weights, beta: float, delta: float, grad_norm: float) -> dict[str, float]:
    p = max(sums["pairs"], 1.0)
    lr_c, lr_r = sums["chosen_logratio"] / p, sums["rejected_logratio"] / p
    out = {f"loss_{k}": sums[f"loss_{k}"] / p for k in weights}
    out.update(
        loss=sum(w * out[f"loss_{k}"] for k, w in weights.items()),
        delta=delta,
        chosen_logratio=lr_c,
        rejected_logratio=lr_r,
        chosen_reward=beta * lr_c,
        rejected_reward=beta * lr_r,
        reward_margin=beta * (lr_c - lr_r),
        reward_accuracy=sums["reward_accuracy"] / p,
        grad_norm=grad_norm,
    )
    return out


def _all_reduce(sums: dict[str, float], world: int, device) -> dict[str, float]:
    if world == 1:
        return sums
    import torch.distributed as dist

    keys = list(sums)
    buf = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(buf)
    return dict(zip(keys, buf.tolist()))


# ---- the run -------------------------------------------------------------------------------------


@dataclass
class MPORun(StageRun):
    """Everything an MPO run holds, built by :func:`setup`."""

    cfg: MPOConfig
    accelerator: Any
    policy: Any
    engine: Any  # r1v2.rollout.RolloutEngine
    reward_model: Any  # None with offline pairs
    reference: Any  # r1v2.train.reference.Reference: pi_0
    params: list[torch.nn.Parameter]
    optimizer: Any
    scheduler: Any
    sampler: PromptSampler
    pool: list[Any]  # Samples, or PreferenceRecords (offline)
    offline: bool
    probe_items: list[Any]
    guard: HallucinationGuard
    trainable_report: str
    shift: RunningMean = field(default_factory=RunningMean)  # the BCO shift delta
    round: RoundState | None = None
    best: dict[str, Any] | None = None  # {"step", "weights"}: rollback target
    step: int = 0
    nan_total: int = 0


def load_reward_model(cfg: PairSettings, device):
    from r1v2.model.reward_model import TransformersRewardModel

    rm_device = device if cfg.rm_device == "auto" else resolve_device(cfg.rm_device)
    return TransformersRewardModel.from_pretrained(
        cfg.rm_path, device=rm_device, dtype=cfg.rm_dtype, batch_size=cfg.rm_batch_size
    )


def load_data(cfg: MPOConfig) -> tuple[list[Any], bool]:
    """``(pool, offline)``: the prompt pool, or the pairs of an offline pairs file (pairs
    whose chosen and rejected are the same text dropped, with a warning: they carry no
    preference)."""
    if not is_pairs_data(cfg.data):
        return load_pool(cfg.data), False
    result = load_pairs(cfg.data, on_bad=cfg.on_bad)
    if result.skipped:
        print(result.summary())
    pairs = [p for p in result.pairs if p.chosen != p.rejected]
    if len(pairs) < len(result.pairs):
        same = [p.id for p in result.pairs if p.chosen == p.rejected]
        if not pairs:
            raise R1V2Error(
                f"{cfg.data}: chosen equals rejected in every pair ({len(same)}, e.g. "
                f"{same[0]}): nothing to prefer"
            )
        print(
            f"warning: {cfg.data}: dropped {len(same)} of {len(result.pairs)} pairs whose "
            f"chosen equals rejected (e.g. {same[0]})",
            file=sys.stderr,
        )
    if not pairs:
        raise R1V2Error(f"{cfg.data}: no pairs")
    return pairs, True


def check_pair_sizes(pairs: list[Any], policy) -> None:
    """Refuse an offline pair far longer than the model's context before tokenising it."""
    for p in pairs:
        text = p.question + max(p.chosen, p.rejected, key=len)
        policy.check_length(text, None, f"pair {p.id!r}")


def setup(cfg: MPOConfig) -> MPORun:
    """Validate, load and restore everything a run needs; an earlier run in ``output_dir`` is
    removed (with ``overwrite=true``) only after all of it succeeded."""
    from accelerate import Accelerator

    from r1v2.model.freeze import set_trainable
    from r1v2.rollout import TransformersEngine
    from r1v2.train.reference import Reference

    accelerator = Accelerator(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    check_distributed_type(accelerator.distributed_type.value)
    out = Path(cfg.output_dir)
    ckpt, replace_old = prepare_output(out, cfg.resume, cfg.overwrite)
    torch.manual_seed(cfg.seed)
    pool, offline = load_data(cfg)
    if not offline and cfg.prompts_per_round % accelerator.num_processes:
        raise R1V2Error(
            f"prompts_per_round={cfg.prompts_per_round} must divide by "
            f"{accelerator.num_processes} processes"
        )
    probe_items = load_probe(cfg.probe_data, cfg.probe_size)  # refused here without scenes
    policy = load_policy(cfg, accelerator.device)
    if offline:
        check_pair_sizes(pool, policy)
    report = set_trainable(policy.model, cfg.trainable)
    reference = Reference(policy.model)  # pi_0: the starting weights, before a checkpoint loads
    reward_model = None if offline else load_reward_model(cfg, policy.device)
    state: dict[str, Any] = {}
    if ckpt is not None:
        state = load_checkpoint(ckpt, policy.model, rank=accelerator.process_index)[0]
        saved = guard_resumable(state.get("config", {}), cfg, ckpt)
        check_resumable(saved, cfg, ckpt, state["step"], RESUMABLE)
        check_same_data(state, pool, cfg.data, ckpt)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(cfg.optim, params, cfg.max_steps)
    run = MPORun(
        cfg=cfg,
        accelerator=accelerator,
        policy=policy,
        engine=TransformersEngine(policy),
        reward_model=reward_model,
        reference=reference,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=PromptSampler(len(pool), seed=cfg.seed),
        pool=pool,
        offline=offline,
        probe_items=probe_items,
        guard=HallucinationGuard.from_config(cfg.guard),
        trainable_report=str(report),
    )
    if state:
        _restore(run, state, ckpt)
    if replace_old and run.rank == 0:  # everything is validated: only now remove the old run
        clear_folder(out)
    accelerator.wait_for_everyone()
    return run


def _restore(run: MPORun, state: dict[str, Any], ckpt: Path) -> None:
    """A checkpoint's trainer state into the run (weights and RNG were loaded already)."""
    load_optimizer_state(run.optimizer, state["optimizer"], root_call=direct)
    run.scheduler.load_state_dict(state["scheduler"])
    try:
        run.sampler.load_state_dict(state["sampler"])
    except ValueError as e:
        raise R1V2Error(f"{ckpt}: {e}: the data {run.cfg.data} changed") from e
    run.shift.load_state_dict(state["shift"])
    run.guard.load_state_dict(state["guard"])
    run.round, run.best = state["round"], state["best"]
    run.step, run.nan_total = state["step"], state["nan_total"]


def guard_resumable(saved: dict[str, Any], cfg: MPOConfig, ckpt: Path) -> dict[str, Any]:
    """The saved config with ``guard.action`` taken from ``cfg`` when a resumed run may change
    it: to ``stop`` or ``off`` (e.g. to continue after the guard fired), not to ``rollback``
    (the best weights were not kept). Other guard fields must match, as every other field."""
    before = saved.get("guard", {}).get("action")
    now = cfg.guard.action
    if before is None or before == now:
        return saved
    if now == "rollback":
        raise R1V2Error(
            f"{ckpt} was trained with guard.action={before}: it kept no best weights to roll "
            "back to, so it cannot continue with guard.action=rollback"
        )
    return {**saved, "guard": {**saved["guard"], "action": now}}


def next_round(run: MPORun) -> RoundState:
    """Steps 1-5: the next round's pairs, the same list on every process."""
    cfg, world, rank = run.cfg, run.world, run.rank
    index = run.round.index + 1 if run.round is not None else 1
    if run.offline:  # the next pairs of the file; every process holds the file
        records = [run.pool[i] for i in run.sampler.next(cfg.prompts_per_round)]
        pairs = [
            TrainPair(
                r,
                encode_response(run.policy, r.chosen),
                encode_response(run.policy, r.rejected),
                r.chosen,
                r.rejected,
            )
            for r in records
        ]
        n = float(len(pairs))
        stats = {
            "prompts": n,
            "pairs_built": n,
            "pairs_kept": n,
            "score_gap_mean": math.nan,
            "offline": 1.0,  # read from the pairs file, not sampled and scored
        }
        return RoundState(index, pairs, stats)
    shard = cfg.prompts_per_round // world
    indices = run.sampler.next(cfg.prompts_per_round)[rank * shard : (rank + 1) * shard]
    items = [run.pool[i] for i in indices]
    pairs, counts = round_pairs(
        run.engine,
        run.reward_model,
        items,
        cfg,
        round_index=index,
        offset=rank * shard,
        after_think=run.policy.opens_think,
    )
    pairs = gather_lists(pairs, world)  # in process order: the round's whole list
    counts = {k: sum(c[k] for c in gather_objects(counts, world)) for k in counts}
    return RoundState(index, pairs, round_stats(counts, cfg.rules))


def one_step(run: MPORun, step: int) -> tuple[dict[str, float], str]:
    """One optimizer step (a new round first when the last one is done); returns the step's
    metrics and ``"stepped"``, ``"no_pairs"`` (the round kept no pair: nothing to train) or
    ``"nonfinite"`` (skipped)."""
    cfg = run.cfg
    if run.round is None or run.round.epochs_done >= cfg.epochs:
        run.round = next_round(run)
    rnd = run.round
    metrics = {"round": float(rnd.index), "epoch": float(rnd.epochs_done + 1), **rnd.stats}
    status = "no_pairs"
    if rnd.pairs:
        run.policy.model.train()
        update, stepped = mpo_update(
            run.policy,
            rnd.pairs,
            cfg=cfg,
            optimizer=run.optimizer,
            scheduler=run.scheduler,
            params=run.params,
            shift=run.shift,
            reference=run.reference,
            world=run.world,
            rank=run.rank,
        )
        metrics.update(update)
        status = "stepped" if stepped else "nonfinite"
    rnd.epochs_done += 1
    metrics["lr"] = run.scheduler.get_last_lr()[0]
    return metrics, status


def probe(run: MPORun) -> dict[str, float]:
    """Greedy accuracy and hallucination rate on the probe set (averaged over processes)."""
    run.policy.model.eval()
    result = greedy_probe(
        run.engine, run.probe_items, max_new_tokens=run.cfg.generation.max_new_tokens
    )
    return mean_over_processes(result, run.accelerator)


def guarded_probe(run: MPORun, step: int) -> dict[str, Any]:
    """The probe, fed to the hallucination guard (:func:`r1v2.train.stage.watch`: keeps the
    best probe's weights with ``guard.action=rollback`` and puts them back when it fires)."""
    result = probe(run)
    row, run.best = watch(run.guard, run.policy.model, run.best, step, result)
    if "guard_event" in row and run.rank == 0:
        print(row["guard_event"])
    return {**result, **row}


def save(run: MPORun, step: int) -> None:
    """Checkpoint ``step`` (collective: every process calls it)."""
    cfg = run.cfg
    state = {
        "optimizer": optimizer_state(run.optimizer, direct),
        "scheduler": run.scheduler.state_dict(),
        "sampler": run.sampler.state_dict(),
        "shift": run.shift.state_dict(),
        "guard": run.guard.state_dict(),
        "round": run.round,
        "best": run.best,
        "step": step,
        "nan_total": run.nan_total,
        "config": to_dict(cfg),
    }
    run.write_checkpoint(step, state, stage="mpo")


# ---- the loop ------------------------------------------------------------------------------------


def train(cfg: MPOConfig) -> Path:
    """Run MPO as configured; returns the output folder."""
    from r1v2.train.progress import StepProgress

    run = setup(cfg)
    main = run.rank == 0
    logger = run.metrics_logger() if main else None
    if main:
        mode = f"offline pairs {cfg.data}" if run.offline else f"online pairs from {cfg.data}"
        print(
            f"{run.trainable_report}\n{mode}; starting at step {run.step} of "
            f"{cfg.max_steps}; output: {run.out}"
        )
        if run.guard_stopped:
            print(f"{run.guard.message}; set guard.action=off to continue this run")
    if run.probe_items and run.step == 0:  # the starting point: the guard's reference rate
        baseline = guarded_probe(run, 0)
        if main:
            logger.log(0, baseline)
    keys = {
        "pairs_kept": "pairs",
        "loss": "loss",
        "reward_accuracy": "racc",
        "probe_accuracy": "acc",
        "hallucination_rate": "halluc",
    }
    progress = StepProgress(cfg.max_steps, start=run.step, enabled=cfg.progress and main, keys=keys)
    nan_streak = 0
    while run.step < cfg.max_steps and not run.guard_stopped:
        step = run.step = run.step + 1
        t0 = time.perf_counter()
        metrics, status = one_step(run, step)
        nan_streak = nan_streak + 1 if status == "nonfinite" else 0
        run.nan_total += status == "nonfinite"
        metrics.update(skipped_steps=float(run.nan_total), step_seconds=time.perf_counter() - t0)
        if run.probe_due(step):
            metrics.update(guarded_probe(run, step))
        if main:
            logger.log(step, metrics)
            progress.update(step, metrics)
        run.check_nonfinite(nan_streak, step)
        if status != "nonfinite" and run.save_due(step):
            save(run, step)  # never after a skipped step: the last checkpoint stays a good one
    progress.close()
    save_final(run.policy, run.out, sharded=False, rank=run.rank)
    if main:
        logger.close()
    return run.out


# MPO's own fields that may differ on resume besides stage.RESUMABLE (rm_batch_size: only the
# float summation order); guard.action may change too (guard_resumable).
RESUMABLE = STAGE_RESUMABLE | {"rm_batch_size", "rm_device", "on_bad"}


def summary(rows: list[dict[str, Any]], seconds: float) -> str:
    """One paragraph on a finished MPO run from its metrics rows: steps and rounds, pairs kept,
    reward accuracy and loss first -> last step, probe first -> last, and a guard event."""
    steps = [r for r in rows if r["step"] > 0 and "pairs_kept" in r]
    parts = [f"{steps[-1]['step'] if steps else 0} steps in {seconds:.0f} s"]
    firsts = [r for r in steps if r.get("epoch") == 1]  # one row per round
    if firsts:
        kept = sum(r["pairs_kept"] or 0 for r in firsts)
        parts.append(f"{len(firsts)} rounds, {kept:.0f} pairs kept")
    trained = [r for r in steps if r.get("reward_accuracy") is not None]
    if trained:
        a, b = trained[0], trained[-1]
        parts.append(
            f"reward accuracy {a['reward_accuracy']:.2f} -> {b['reward_accuracy']:.2f}, "
            f"loss {a['loss']:.3g} -> {b['loss']:.3g}"
        )
    return "; ".join(parts + probe_summary(rows))


def run(cfg: MPOConfig) -> int:
    """``r1v2 mpo``: train, then print the run's summary."""
    start = time.perf_counter()
    out = train(cfg)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"done: {summary(read_metrics(out), time.perf_counter() - start)}")
        print(f"model: {out / 'final'}; checkpoints: {out}/checkpoint-*")
    end_processes()
    return 0


# ---- r1v2 mpo pairs --------------------------------------------------------------------------------


def build_pairs_file(cfg: MPOPairsConfig) -> dict[str, float]:
    """Build the pairs of one round (the first round ``r1v2 mpo`` would build with the same
    settings) and write them to ``cfg.out`` (with ``<out>.stats.json``); returns the stats."""
    import json

    from r1v2.data.pairs import PreferenceRecord
    from r1v2.fsutil import check_output_file, write_atomic
    from r1v2.rollout import TransformersEngine

    out = check_output_file(
        cfg.out,
        "out",
        overwrite=cfg.overwrite,
        inputs={"data": cfg.data},
        sidecars=(".stats.json",),
    )
    if is_pairs_data(cfg.data):
        raise R1V2Error(f"data={cfg.data} holds pairs already: give a Sample prompt pool")
    pool = load_pool(cfg.data)
    policy = load_policy(cfg)
    reward_model = load_reward_model(cfg, policy.device)
    items = [pool[i] for i in PromptSampler(len(pool), seed=cfg.seed).next(cfg.prompts_per_round)]
    pairs, counts = round_pairs(
        TransformersEngine(policy),
        reward_model,
        items,
        cfg,
        round_index=1,
        offset=0,
        after_think=policy.opens_think,
    )
    records = [  # ids made unique by position: a round may draw a prompt twice
        PreferenceRecord(
            id=f"{p.item.id}#{k}",
            question=p.item.question,
            chosen=p.chosen_text,
            rejected=p.rejected_text,
            images=tuple(p.item.images),
            choices=p.item.choices,
            metadata={
                "source_id": p.item.id,
                "answer": p.item.answer,
                "kind": p.item.kind,
                "chosen_score": p.chosen_score,
                "rejected_score": p.rejected_score,
                "score_gap": p.chosen_score - p.rejected_score,
            },
        )
        for k, p in enumerate(pairs)
    ]
    stats = round_stats(counts, cfg.rules)
    plain = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in stats.items()}
    if not records:
        raise R1V2Error(
            f"no pair kept from {len(items)} prompts, nothing written to {out} "
            f"({json.dumps(plain)}): see no_valid_chosen and the threshold"
        )
    write_pairs(records, out)
    write_atomic(Path(str(out) + ".stats.json"), json.dumps(plain, indent=2) + "\n")
    print(f"{len(records)} pairs from {len(items)} prompts -> {out}  ({json.dumps(plain)})")
    return stats


def run_pairs(cfg: MPOPairsConfig) -> int:
    """``r1v2 mpo pairs``."""
    build_pairs_file(cfg)
    return 0
