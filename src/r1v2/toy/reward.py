r"""The toy reward model: the toy VLM with a scalar value head, trained to prefer faithful responses.

Pairs (:func:`make_pairs`) are built from synthetic samples; every response is in the policy's
completion form (the reference trace after the prompt's ``<think>``):

- chosen: the reference trace, whose every ``G : N`` count claim holds for the scene;
- rejected, hallucinated (three kinds, equally likely): the reference trace of a *false scene*
  that differs from the true one where the question looks, so the per-kind counts, their sums,
  the arithmetic and the answer all agree with the false counts and only the image can tell:

      count    one counted kind gains or loses 1-2 objects (never to or from 0)
      absent   a counted kind with no object in the scene gets 1-2 (claims an absent object)
      cell     one occupied cell is misread as another kind or as empty (a wrong cell)

  each checked with :func:`r1v2.data.synthetic.hallucinations` (at least one false claim);
  a multiple-choice trace must land on one of the options, so there the change may reach 4;
- rejected, repetitive: the reference trace with one section (one or two consecutive sentences
  of the reasoning) repeated 3 to 5 times in a row; its claims all hold.

Training (:func:`train_reward_model`): the assembled VLM at ``vlm_dir`` is loaded, wrapped in
:class:`r1v2.model.reward_model.ValueHeadModel` and trained with the Bradley-Terry loss
``-log sigmoid(s_chosen - s_rejected)``, plus ``nll_weight`` times the chosen responses' mean
token NLL (a ``"logprob"`` head only), for a fixed number of steps (AdamW, linear warm-up then
linear decay, gradient norm clipped at 1); :class:`RewardModelConfig` holds every setting. By
default the adapter, the whole LLM and the head train and the vision encoder stays frozen (its
per-cell features are pretrained). Pairs come from
``iter_samples(pairs, seed=TRAIN_SEED_OFFSET + seed)``; held-out pairs from
``iter_samples(eval_pairs, seed=EVAL_SEED_OFFSET + seed)``, so they are other scenes. Two
training aids are off by default: ``cross_weight`` (:func:`bt_loss_all_pairs` across the prompts of a
batch) and ``prefix_fraction`` (pairs cut right after the first false claim).

The NLL term (``nll_weight``, default 1) is what makes the reward model robust across seeds.
The Bradley-Terry loss alone only nudges the few tokens where a pair differs, and the score
can be no better at reading the scene than the assembled VLM it starts from: 300 steps gave
88.1%, 77.1% and 77.9% against hallucinated responses for the toy builds of seeds 0, 1 and 2
(one-cell misreadings near chance, 60% on seed 1; 600 steps, a 3x learning rate or training
the vision encoder too did not help: 79.4%, 69.4%, 76.1% on seed 1). Teaching the scoring
model the faithful traces themselves (the NLL term) gave 99.6%, 96.7% and 97.9% on the same
builds (cells 100%, 91.4%, 96.5%; 300 steps, weight 1).

The head (``pooling``) is the choice that matters. Default ``"logprob"``: the score is a scale
and an offset on the mean log-probability of the completion's tokens under the VLM's own LM
head, so every stated count is judged right where it is written, by the circuit that learned
to count in pretraining. ``"last"``: a Linear head on the last token's final hidden state,
which must learn to compare every claim with the image and carry the verdict to the end.
Measured on the default toy build's VLM (LM 2 layers hidden 96, adapter warm-up 35 steps; 2
CPU cores), 400 held-out pairs, 300 steps of 8 pairs (about 30 s): ``"logprob"`` 96.5%
pairwise accuracy against hallucinated responses (count 97.2%, absent 98.7%, cell 94.1%) and
100% against repetitive ones; ``"last"`` 69.5% (cell pairs, all off by one, 41.6%: chance)
and 100%. Earlier, with ``"last"``: 900 steps, a 3x learning rate, training the vision
encoder, ``cross_weight=1`` or ``prefix_fraction=0.5`` all stayed at 66-75%.

Output in ``out_dir``: the value-head checkpoint (:func:`save_value_head`; loads through
``TransformersRewardModel.from_pretrained``), ``rm_calibration.json`` and ``rm_metrics.json``.

Score scale: scores are unbounded. A ``"logprob"`` head starts as the mean log-probability
itself (scale 1, offset 0: scores <= 0, about -1 for the toy RM's faithful responses); a
``"last"`` head starts at unit scale (weight ~ N(0, 1/H)). The BT loss only fixes score
*differences*, so where the scores sit is a property of each run: it is measured on the
held-out pairs and written to ``rm_calibration.json``::

    {"rm_center": (mean faithful + mean hallucinated) / 2,
     "rm_scale":  sqrt((std faithful^2 + std hallucinated^2) / 2),   # floored at 1e-3
     "faithful": {"mean", "std"}, "hallucinated": {...}, "repetitive": {...}}

With these as ``HybridReward``'s ``rm_center``/``rm_scale``, a typical faithful response maps
to ``sigmoid(gap / (2 * scale))`` and a hallucinated one to its complement (gap = the
difference of the two means).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import get_scheduler, set_seed

from r1v2.config import option
from r1v2.data.synthetic import (
    COLOURS,
    SHAPES,
    Scene,
    SynthSample,
    hallucinations,
    iter_samples,
    reference_trace,
    render,
)
from r1v2.data.synthetic.traces import kinds
from r1v2.errors import R1V2Error
from r1v2.model.freeze import MODES, Trainable, set_trainable
from r1v2.model.policy import format_question
from r1v2.model.reward_model import (
    POOLINGS,
    Pooling,
    RMInput,
    ValueHeadModel,
    encode,
    save_value_head,
)
from r1v2.rewards.hybrid import CALIBRATION_FILE
from r1v2.toy.common import check_at_least_one
from r1v2.train.progress import StepProgress

HALLUCINATION_KINDS = ("count", "absent", "cell")
PAIR_KINDS = (*HALLUCINATION_KINDS, "repetitive")
TRAIN_SEED_OFFSET = 10_000  # RM pairs use their own sample streams, apart from the RL data
EVAL_SEED_OFFSET = 20_000
METRICS_FILE = "rm_metrics.json"
MIN_SCALE = 1e-3


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (question text + scene image) with a preferred and a dispreferred completion.

    ``kind`` is how ``rejected`` was made: one of :data:`PAIR_KINDS`.
    """

    question: str
    scene: Scene
    chosen: str
    rejected: str
    kind: str

    def inputs(self) -> tuple[RMInput, RMInput]:
        """The chosen and rejected samples as reward-model inputs (the scene drawn as its image)."""
        image = render(self.scene)
        return (
            RMInput(self.question, self.chosen, (image,)),
            RMInput(self.question, self.rejected, (image,)),
        )


def completion(scene: Scene, sample: SynthSample) -> str:
    """The reference trace of ``scene`` for ``sample``'s question, in completion form (no ``<think>``)."""
    return reference_trace(scene, sample.question).removeprefix("<think> ")


def _question_kinds(sample: SynthSample) -> list[tuple[str, str]]:
    """The (colour, shape) kinds the question's groups count, in the trace's order."""
    return [(k.colour, k.shape) for g in sample.question.groups for k in kinds(g)]


def _with_count(
    scene: Scene, kind: tuple[str, str], target: int, rng: random.Random
) -> Scene | None:
    """``scene`` with exactly ``target`` objects of ``kind``: random cells emptied or filled.

    None when there are not enough empty cells to fill.
    """
    cells = list(scene.cells)
    have = [i for i, c in enumerate(cells) if c == kind]
    empty = [i for i, c in enumerate(cells) if c is None]
    if target < len(have):
        for i in rng.sample(have, len(have) - target):
            cells[i] = None
    elif target > len(have):
        if target - len(have) > len(empty):
            return None
        for i in rng.sample(empty, target - len(have)):
            cells[i] = kind
    return Scene(tuple(cells), scene.grid)


def false_scene(
    sample: SynthSample, kind: str, rng: random.Random, max_delta: int = 2
) -> Scene | None:
    """A scene that differs from ``sample.scene`` in what the question counts (see the module doc).

    ``count`` moves a count by 1..``max_delta`` and ``absent`` adds 1..``max_delta`` objects.
    None when ``kind`` cannot apply to this sample (e.g. ``absent`` with every counted kind present).
    """
    scene = sample.scene
    counted = _question_kinds(sample)
    counts = {k: sum(c == k for c in scene.cells) for k in counted}
    if kind == "count":
        present = [k for k in counted if counts[k] > 0]
        if not present:
            return None
        k = rng.choice(present)
        deltas = [d for m in range(1, max_delta + 1) for d in (-m, m)]
        options = [counts[k] + d for d in deltas if counts[k] + d >= 1]
        return _with_count(scene, k, rng.choice(options), rng)
    if kind == "absent":
        absent = [k for k in counted if counts[k] == 0]
        if not absent:
            return None
        return _with_count(scene, rng.choice(absent), rng.randint(1, max_delta), rng)
    if kind == "cell":
        occupied = [i for i, c in enumerate(scene.cells) if c in counts]
        if not occupied:
            return None
        i = rng.choice(occupied)
        others = [(c, s) for c in COLOURS for s in SHAPES if (c, s) != scene.cells[i]]
        cells = list(scene.cells)
        cells[i] = rng.choice([None, *others])
        return Scene(tuple(cells), scene.grid)
    raise ValueError(f"unknown hallucination kind {kind!r}; use one of {HALLUCINATION_KINDS}")


def hallucinated_response(sample: SynthSample, rng: random.Random) -> tuple[str, str]:
    """``(completion, kind)``: a trace with at least one false claim, consistent with itself.

    Kinds are drawn at random until one yields a false claim (checked by the hallucination
    checker) and a value the question can take: not negative and, for multiple choice, among
    the options. Counts move by at most 2 for the first 20 tries, by at most 4 after (the
    options of a multiple-choice question may all lie further from the true value than 2).
    """
    question = sample.question
    for attempt in range(60):
        kind = rng.choice(HALLUCINATION_KINDS)
        scene = false_scene(sample, kind, rng, max_delta=2 if attempt < 20 else 4)
        if scene is None:
            continue
        value = question.value(scene)
        if value.lstrip("-").isdigit() and int(value) < 0:
            continue
        if question.options and value not in question.options:
            continue
        text = completion(scene, sample)
        if hallucinations(text, sample.scene):
            return text, kind
    raise R1V2Error(f"sample {sample.id}: no hallucinated trace found in 60 tries")


def repetitive_response(text: str, rng: random.Random) -> str:
    """``text`` with one or two consecutive reasoning sentences repeated 3-5 times in a row.

    Sentences are the `` . ``-terminated parts before ``</think>``.
    """
    reasoning, sep, tail = text.partition("</think>")
    sentences = [s.strip() + " ." for s in reasoning.split(" .") if s.strip()]
    width = min(len(sentences), rng.randint(1, 2))
    start = rng.randrange(len(sentences) - width + 1)
    section = sentences[start : start + width]
    repeated = sentences[:start] + section * rng.randint(3, 5) + sentences[start + width :]
    return " ".join(repeated) + " " + sep + tail


def cut_at_first_difference(chosen: str, rejected: str) -> tuple[str, str]:
    """Both responses cut after the sentence (`` .``-ended) in which their words first differ."""
    a, b = chosen.split(" "), rejected.split(" ")
    i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))

    def cut(words: list[str]) -> str:
        ends = [j for j in range(i, len(words)) if words[j] == "."]
        return " ".join(words[: ends[0] + 1] if ends else words)

    return cut(a), cut(b)


def make_pairs(
    n: int, seed: int, *, repetitive_fraction: float = 0.25, prefix_fraction: float = 0.0
) -> list[PreferencePair]:
    """One pair per sample of ``iter_samples(n, seed)``: repetitive with probability
    ``repetitive_fraction``, hallucinated otherwise. Deterministic in ``(n, seed)``.

    With probability ``prefix_fraction`` a hallucinated pair is cut after the first sentence
    where the two responses differ (:func:`cut_at_first_difference`): its last tokens then sit
    right after the false claim (a training aid; held-out pairs are never cut).
    """
    rng = random.Random(f"rm-pairs:{seed}")
    cut_rng = random.Random(f"rm-cut:{seed}")
    pairs = []
    for sample in iter_samples(n, seed=seed):
        question = format_question(sample.question.text, sample.question.options)
        chosen = completion(sample.scene, sample)
        if rng.random() < repetitive_fraction:
            rejected, kind = repetitive_response(chosen, rng), "repetitive"
        else:
            rejected, kind = hallucinated_response(sample, rng)
            if cut_rng.random() < prefix_fraction:
                chosen, rejected = cut_at_first_difference(chosen, rejected)
        pairs.append(PreferencePair(question, sample.scene, chosen, rejected, kind))
    return pairs


def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss, mean over pairs: ``mean(-log sigmoid(s_c - s_r))``.

    chosen, rejected: [B] scores -> scalar. E.g. s_c - s_r = 0 gives log 2 = 0.6931.
    """
    return -F.logsigmoid(chosen - rejected).mean()


def bt_loss_all_pairs(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss over every (chosen i, rejected j) of a batch, prompts mixed.

    chosen, rejected: [B] scores -> scalar ``mean_ij(-log sigmoid(s_c[i] - s_r[j]))``.
    Matched pairs fix score differences within a prompt only; these cross-prompt terms
    also ask every faithful response to outscore every unfaithful one, which gives the
    scores one threshold across prompts (what ``rm_center`` assumes).
    """
    return -F.logsigmoid(chosen[:, None] - rejected[None, :]).mean()  # [B, B] -> scalar


def _batch(
    model: ValueHeadModel, processor: Any, pairs: Sequence[PreferencePair]
) -> dict[str, torch.Tensor]:
    """Encoded inputs for ``model``, chosen rows first then rejected rows: [2B, T]
    (+ pixel_values [2B, 3, S, S], + completion_mask [2B, T] for a ``logprob`` head)."""
    items = [p.inputs() for p in pairs]
    return encode(
        processor,
        [c for c, _ in items] + [r for _, r in items],
        completion_mask=model.pooling == "logprob",
    )


def score_pairs(
    model: ValueHeadModel, processor: Any, pairs: Sequence[PreferencePair], batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the chosen and of the rejected responses, each [N], without gradients."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            scores = model(**_batch(model, processor, chunk), use_cache=False)  # [2b]
            chosen.append(scores[: len(chunk)])
            rejected.append(scores[len(chunk) :])
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def _stats(values: torch.Tensor) -> dict[str, float]:
    if values.numel() == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    std = values.std(unbiased=False).item()
    return {"mean": values.mean().item(), "std": std, "n": values.numel()}


def evaluate(
    model: ValueHeadModel, processor: Any, pairs: Sequence[PreferencePair], batch_size: int = 16
) -> dict[str, Any]:
    """Held-out pairwise accuracy (``s_chosen > s_rejected``) per kind, BT loss and score scale.

    Keys: ``accuracy_hallucinated`` (all hallucination kinds), ``accuracy_repetitive``,
    ``accuracy_<kind>``, ``eval_loss``, and ``scores`` with mean/std/n of the ``faithful``,
    ``hallucinated`` and ``repetitive`` responses.
    """
    chosen, rejected = score_pairs(model, processor, pairs, batch_size)
    kind = [p.kind for p in pairs]
    right = (chosen > rejected).float()

    def accuracy(names: Sequence[str]) -> float:
        mask = torch.tensor([k in names for k in kind], dtype=torch.bool)
        return right[mask].mean().item() if mask.any() else math.nan

    halluc = torch.tensor([k in HALLUCINATION_KINDS for k in kind], dtype=torch.bool)
    out: dict[str, Any] = {
        "accuracy_hallucinated": accuracy(HALLUCINATION_KINDS),
        "accuracy_repetitive": accuracy(["repetitive"]),
        **{f"accuracy_{k}": accuracy([k]) for k in HALLUCINATION_KINDS},
        "eval_loss": bt_loss(chosen, rejected).item(),
        "scores": {
            "faithful": _stats(chosen),
            "hallucinated": _stats(rejected[halluc]),
            "repetitive": _stats(rejected[~halluc]),
        },
    }
    return out


def calibration(scores: dict[str, dict[str, float]]) -> dict[str, Any]:
    """``rm_center``/``rm_scale`` for ``HybridReward`` from the held-out score statistics.

    center = midpoint of the faithful and hallucinated means; scale = root mean square of
    their standard deviations (floored at :data:`MIN_SCALE`). E.g. means 4 and -2, stds 1 and
    3: center 1, scale sqrt((1 + 9) / 2) = 2.2361.
    """
    f, h = scores["faithful"], scores["hallucinated"]
    scale = max(math.sqrt((f["std"] ** 2 + h["std"] ** 2) / 2), MIN_SCALE)
    return {"rm_center": (f["mean"] + h["mean"]) / 2, "rm_scale": scale, **scores}


def load_base(vlm_dir: str | Path) -> tuple[torch.nn.Module, Any]:
    """The assembled VLM (float32) and its processor, read from ``vlm_dir``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = Path(vlm_dir)
    if not (path / "config.json").is_file():
        raise R1V2Error(f"{path / 'config.json'}: file not found (not an assembled VLM checkpoint)")
    base = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(path)
    return base, processor


@dataclass
class RewardModelConfig:
    """Stage 4 (``rm.*`` of ``r1v2 toy build``): the reward model's pairs and training."""

    pooling: Pooling = option(
        "logprob",
        "reward model head: on the mean completion log-probability (logprob) or on the last "
        "token's hidden state (last)",
    )
    steps: int = option(300, "reward model training steps")
    batch_size: int = option(8, "preference pairs per reward model step")
    pairs: int = option(2400, "reward model training pairs")
    eval_pairs: int = option(400, "held-out reward model pairs for its accuracy")
    lr: float = option(3e-4, "peak learning rate of the base model's trainable parts")
    head_lr: float = option(3e-3, "peak learning rate of the value head")
    warmup: int = option(20, "linear warm-up steps, then linear decay to 0 at the last step")
    trainable: Trainable = option(
        "llm+adapter", "parts of the base model that train (the head always trains)"
    )
    repetitive_fraction: float = option(
        0.25, "share of pairs whose rejected response is repetitive (hallucinated otherwise)"
    )
    cross_weight: float = option(
        0.0, "weight of the Bradley-Terry loss across the prompts of a batch (0: off)"
    )
    prefix_fraction: float = option(
        0.0, "share of hallucinated training pairs cut right after the first false claim"
    )
    nll_weight: float = option(
        1.0,
        "weight of the chosen responses' mean token NLL added to the loss (a 'logprob' head "
        "only: it teaches the scoring model to read the scene, 0: off)",
    )

    def validate(self, prefix: str = "") -> None:
        check_at_least_one(self, ("steps", "batch_size", "pairs", "eval_pairs"), prefix)
        for name, value, valid in (
            ("pooling", self.pooling, POOLINGS),
            ("trainable", self.trainable, tuple(MODES)),
        ):
            if value not in valid:
                raise R1V2Error(
                    f"config field {prefix}{name}: {value!r} is not one of {', '.join(valid)}"
                )
        for name in ("repetitive_fraction", "prefix_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise R1V2Error(
                    f"config field {prefix}{name} must be in [0, 1], got {getattr(self, name)}"
                )
        if self.warmup < 0 or self.cross_weight < 0 or self.nll_weight < 0:
            raise R1V2Error(
                f"config fields {prefix}warmup, {prefix}cross_weight and {prefix}nll_weight "
                "must be >= 0"
            )
        if self.nll_weight and self.pooling != "logprob":
            raise R1V2Error(
                f"config field {prefix}nll_weight needs {prefix}pooling=logprob "
                f"(set {prefix}nll_weight=0 for a {self.pooling!r} head)"
            )


def fit(
    model: ValueHeadModel,
    processor: Any,
    pairs: Sequence[PreferencePair],
    cfg: RewardModelConfig,
    *,
    seed: int,
    progress: bool,
) -> list[float]:
    """Train ``model``'s parameters that require grad with the BT loss; returns the loss per step.

    The loss of a batch is ``bt_loss(matched pairs) + cfg.cross_weight * bt_loss_all_pairs
    + cfg.nll_weight * mean NLL of the chosen completions`` (a ``"logprob"`` head's pooled
    value is the mean token log-probability, so the NLL is its negative).

    ``cfg.steps`` AdamW steps (no weight decay) of ``cfg.batch_size`` pairs, cycling through
    ``pairs`` in a shuffled order drawn from ``seed``; the head learns at ``cfg.head_lr``, the
    base at ``cfg.lr``, both with transformers' ``linear`` schedule (warm-up from 0 over
    ``cfg.warmup`` steps, then linear decay to 0); gradient norm clipped at 1.
    """
    if cfg.nll_weight and model.pooling != "logprob":
        raise ValueError(f"nll_weight needs a 'logprob' head, not {model.pooling!r}")
    head_params = list(model.head.parameters())
    head_ids = {id(p) for p in head_params}
    base_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    optimizer = torch.optim.AdamW(
        [{"params": base_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.head_lr}],
        weight_decay=0.0,
    )
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=cfg.warmup, num_training_steps=cfg.steps
    )
    order_rng = random.Random(f"rm-order:{seed}")
    order: list[int] = []
    losses: list[float] = []
    batch_size = cfg.batch_size
    model.train()
    with StepProgress(cfg.steps, label="reward model", enabled=progress, keys=None) as bar:
        for step in range(cfg.steps):
            while len(order) < batch_size:
                epoch = list(range(len(pairs)))
                order_rng.shuffle(epoch)
                order += epoch
            batch = [pairs[i] for i in order[:batch_size]]
            del order[:batch_size]
            pooled = model.pooled(**_batch(model, processor, batch), use_cache=False)  # [2B, F]
            scores = model.head(pooled).squeeze(-1)  # [2B]
            chosen, rejected = scores[:batch_size], scores[batch_size:]  # [B], [B]
            loss = bt_loss(chosen, rejected)
            if cfg.nll_weight:  # "logprob" only (validated): pooled = mean log p(completion)
                loss = loss - cfg.nll_weight * pooled[:batch_size, 0].mean()
            if cfg.cross_weight:
                loss = loss + cfg.cross_weight * bt_loss_all_pairs(chosen, rejected)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*base_params, *head_params], 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            recent = losses[-20:]
            bar.update(step + 1, {"loss": sum(recent) / len(recent)})
    model.eval()
    return losses


def train_reward_model(
    vlm_dir: str | Path,
    out_dir: str | Path,
    cfg: RewardModelConfig,
    *,
    seed: int,
    progress: bool,
    log: Callable[[str], None] | None,
) -> dict[str, Any]:
    """Train the toy reward model from the VLM at ``vlm_dir``; save it to ``out_dir``; return metrics.

    ``cfg.trainable`` names the base model's parts that train (see :mod:`r1v2.model.freeze`;
    the head always trains); ``cfg.pooling`` is the head's input (``"logprob"`` or ``"last"``,
    see the module docstring); the optimisation is :func:`fit` on ``cfg.pairs`` training pairs.
    Deterministic in ``seed`` (same machine, same thread count). The metrics (also written
    to ``rm_metrics.json``) hold the held-out evaluation (:func:`evaluate`) on
    ``cfg.eval_pairs`` pairs, the calibration, the mean training loss over the first and the
    last tenth of the steps, and the wall time. ``log`` (when not None) gets a one-line summary.
    """
    cfg.validate()
    start_time = time.perf_counter()
    set_seed(seed)
    base, processor = load_base(vlm_dir)
    set_trainable(base, cfg.trainable)
    # a "last" head is drawn from the seeded global generator; a "logprob" head starts at (1, 0)
    model = ValueHeadModel(base, pooling=cfg.pooling)
    train_pairs = make_pairs(
        cfg.pairs,
        TRAIN_SEED_OFFSET + seed,
        repetitive_fraction=cfg.repetitive_fraction,
        prefix_fraction=cfg.prefix_fraction,
    )
    eval_pairs = make_pairs(
        cfg.eval_pairs, EVAL_SEED_OFFSET + seed, repetitive_fraction=cfg.repetitive_fraction
    )
    losses = fit(model, processor, train_pairs, cfg, seed=seed, progress=progress)
    train_seconds = time.perf_counter() - start_time

    metrics = evaluate(model, processor, eval_pairs)
    calib = calibration(metrics["scores"])
    window = max(1, cfg.steps // 10)
    metrics.update(
        {
            "train_loss_first": sum(losses[:window]) / window,
            "train_loss_last": sum(losses[-window:]) / window,
            "steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "n_pairs": cfg.pairs,
            "n_eval": cfg.eval_pairs,
            "trainable": cfg.trainable,
            "pooling": cfg.pooling,
            "cross_weight": cfg.cross_weight,
            "prefix_fraction": cfg.prefix_fraction,
            "seed": seed,
            "train_seconds": train_seconds,
            "rm_center": calib["rm_center"],
            "rm_scale": calib["rm_scale"],
        }
    )
    out = Path(out_dir)
    save_value_head(out, model, processor)
    (out / CALIBRATION_FILE).write_text(json.dumps(calib, indent=2) + "\n")
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    if log is not None:
        log(
            f"reward model: held-out accuracy {metrics['accuracy_hallucinated']:.1%} "
            f"(faithful vs hallucinated), {metrics['accuracy_repetitive']:.1%} (vs repetitive); "
            f"center {calib['rm_center']:.3g}, scale {calib['rm_scale']:.3g}; "
            f"{train_seconds:.0f} s -> {out}"
        )
    return metrics
