"""``r1v2 demo``: the whole R1V2 recipe on the toy world, on a CPU, with a report.

The pipeline, each stage with its progress display and a one-line result::

    toy        r1v2 toy build into TOY, levels 1-4 (stages built with the same settings reused)
    data       OUT/data: the pairs of levels 1-2 (pairs/) and the prompts of levels 3-4 (pool/)
    assembled  greedy accuracy and hallucination rate of TOY/vlm on the held-out set
    mpo        r1v2 mpo from TOY/vlm on OUT/data/pairs (then its eval)
    grpo       r1v2 grpo from mpo/final on OUT/data/pool: hybrid reward (reward model on), SSB,
               LLM + adapter trained (then its eval)
    model      OUT/model, the final model (an ordinary transformers checkpoint)
    report     OUT/report.md, OUT/report.html and OUT/plots/*.png, from the run's own logs

The data is split as real training data comes (:mod:`r1v2.toy.split`): reference traces
exist for the easier questions only, the harder ones have answers alone. The MPO stage
trains on the level 1-2 pairs of ``TOY/data/pairs`` (InternVL's MMPR layout): each prompt's
reference trace chosen over a hallucinated trace of it (:mod:`r1v2.toy.pairs`), the
preference data that teaches the assembled model to read its image tokens. GRPO trains on
the level 3-4 prompts, verifiable by their answers, where the MPO model solves some of its
rollouts but not all (the mixed groups GRPO learns from). The paper's
iterative MPO (pairs the policy samples itself, scored by the reward model and the rules) runs
as an ablation arm, with its thresholds.

``--ablations`` adds arms on the same budget (``ARMS``): SFT on the same offline pairs;
iterative MPO, SFT on its pair builder, two more thresholds and GRPO after it; GRPO without
SSB, with the rule reward over-weighted (ten to one against the reward model), adapter-only
and adapter+vision training, GRPO from the assembled model, and SSB against
no SSB where advantages vanish: the arms continue from the trained model on ``OUT/late_pool``,
the training prompts it already solves in at least 75% of its rollouts
(:func:`build_late_pool`), so most groups are all correct, as late in training; SSB runs
there as the paper draws (by |A|) and with uniform replays. ``--arms NAME`` runs only the
named arms.

The hallucination guard of MPO and GRPO rolls back: when a stage's probe hallucination rate
stays above its start plus the tolerance, the stage ends with the weights of its best probe
(by accuracy), so a stage that goes wrong (a weak reward model, say) hands on what it started
from rather than what it broke.

Every stage writes ``OUT/results/NAME.json`` when it finishes, with its settings and a digest
of each folder it read and wrote (:mod:`r1v2.toy.reuse`); a re-run skips a stage whose result
is there, made from the same inputs, with what it wrote still as it wrote it. A stage made from
other inputs is redone (the toy build, an evaluation, the late pool) or refused in one line
naming what changed and what to remove (a training arm: its run may have taken an hour); a
stage whose output is gone is redone, one whose output changed since is refused. A training
stage that was interrupted resumes from its last checkpoint (``resume=auto``). ``OUT/model``
is always the final stage's weights: recopied when that stage was redone. Layout: ``OUT/toy``
(unless ``toy=`` names a build), ``OUT/runs/NAME`` (each training run: metrics.jsonl,
checkpoints, final/), ``OUT/results``, ``OUT/model``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from r1v2.config import option, resolve, to_dict
from r1v2.errors import R1V2Error
from r1v2.toy.reuse import changes, check_weights, digests, file_input, tree_digest

RESULTS = "results"
RUNS = "runs"
DATA = "data"  # OUT/data/pairs (MPO's pairs) and OUT/data/pool (GRPO's prompts): the split
ALIGNMENT_SCENES = 200  # held-out images whose image tokens each evaluation measures


@dataclasses.dataclass(frozen=True)
class Budget:
    """Sizes of one demo: the toy build, the held-out evaluation and each training stage."""

    toy: dict[str, Any]  # ToyBuildConfig values (dotted keys)
    eval_size: int  # held-out samples of every evaluation (greedy)
    mpo: dict[str, Any]  # MPOConfig values shared by every MPO arm
    offline: dict[str, Any]  # MPOConfig values of the arms on the toy's offline pairs
    sampled: dict[str, Any]  # MPOConfig values of the arms on pairs sampled and scored
    grpo: dict[str, Any]  # GRPOConfig values shared by every GRPO arm
    late: dict[str, Any]  # GRPOConfig values of the vanishing-advantage arms
    late_pool: int  # training prompts scored (group_size rollouts each) for the late pool
    pair_levels: tuple[int, ...] = (1, 2)  # levels whose reference pairs MPO trains on
    pool_levels: tuple[int, ...] = (3, 4)  # levels of the prompts (answers only) GRPO trains on


DEFAULT = Budget(
    toy={"levels": [1, 2, 3, 4]},
    eval_size=500,
    mpo={
        "probe_every": 10,
        "probe_size": 100,
        "save_steps": 10,
        "guard.action": "rollback",
    },
    # Offline pairs cost no generation (about 0.4 s a step here against 2 s for a round of
    # sampling and scoring). From the assembled models (500 held-out samples, one thread):
    # 90 steps at a constant 5e-4 read 65.2% / 49.8% / 49.6% on seeds 0 / 1 / 2 (2e-4: 64.0%
    # on seed 0; 30 steps at 5e-5: 51.0%); 180 constant 48.6% / 62.2% on seeds 1 / 2; 180
    # with warmup and cosine decay 74.0% / 66.6% / 71.8% at loss.beta 0.1, 46.4% / 54.0% at
    # 0.5 (seeds 0 / 1), 79.4% / 69.8% / 76.4% at 0.02 and 79.0% / 72.2% / 76.6% at 0.01
    # (hallucination 2.0% / 18.6% / 8.0%; SFT on the same pairs 78.8% / 73.4% / 74.4%,
    # hallucination 3.0% / 16.6% / 10.0%).
    offline={
        "max_steps": 180,
        "optim.lr": 5e-4,
        "optim.schedule": "cosine",
        "optim.warmup_steps": 10,
        "loss.beta": 0.01,
    },
    # Iterative MPO: a round of 16 prompts x 8 sampled responses, scored, per step.
    sampled={"max_steps": 30},
    grpo={
        # On the level 3-4 pool, from the MPO models of seeds 0-2 (bench/toy_headroom.py, 500
        # held-out samples, 2 threads): 500 steps at 3e-5, LLM + adapter, lift level 4 by 10.4
        # points (61.6 / 65.6 / 76.0 -> 72.0 / 78.4 / 84.0) in about 11 minutes; 250 steps at
        # 6e-5 (seed 0) 61.6 -> 70.4. The adapter alone (the earlier default, on levels 1-3)
        # moved little. 300 steps at 6e-5 keep the demo under 15 minutes.
        "max_steps": 300,
        "trainable": "llm+adapter",
        "optim.lr": 6e-5,
        "optim.schedule": "cosine",
        "optim.warmup_steps": 10,
        "probe_every": 25,
        "probe_size": 100,
        "save_steps": 25,
        "guard.action": "rollback",
    },
    late={"max_steps": 60, "probe_every": 10, "probe_size": 200, "save_steps": 20},
    late_pool=400,
)
FAST = Budget(
    toy={
        "levels": [1, 2, 3, 4],
        "data.train_size": 96,
        "data.test_size": 40,
        "lm.steps": 150,
        "vision.steps": 20,
        "align.steps": 10,
        "rm.steps": 30,
        "rm.pairs": 240,
        "rm.eval_pairs": 40,
    },
    eval_size=40,
    mpo={
        "max_steps": 2,
        "prompts_per_round": 8,
        "probe_every": 1,
        "probe_size": 16,
        "save_steps": 1,
        "guard.action": "rollback",
    },
    offline={},
    sampled={"n": 4},
    grpo={
        "max_steps": 3,
        "prompts_per_step": 4,
        "group_size": 4,
        "probe_every": 3,
        "probe_size": 16,
        "save_steps": 1,
        "ssb.capacity": 64,
        "guard.action": "rollback",
    },
    late={"max_steps": 2, "prompts_per_step": 4, "group_size": 4, "probe_every": 1},
    late_pool=8,
)


@dataclasses.dataclass(frozen=True)
class Arm:
    """One training stage of the demo: its kind, the model it starts from (``assembled``, or
    another arm's name), the config values that set it apart, and what it shows. An MPO arm
    trains on the toy's offline pairs, or with ``sampled`` on pairs it samples from its own
    policy and scores with the reward model and the rules (iterative MPO)."""

    name: str
    kind: str  # "mpo" or "grpo"
    start: str
    values: dict[str, Any]
    label: str
    sampled: bool = False


SFT = {"loss.weights": {"nll": 1.0}}
# The paper's "excessive reinforcement signals": the rule's verdict outweighs the reward model
# (which scores a hallucinated trace below a faithful one) ten to one.
RULE_HEAVY = {"accuracy": 10.0, "rm": 1.0, "format": 1.0}
MAIN = (
    Arm("mpo", "mpo", "assembled", {}, "MPO (DPO + BCO + NLL) on offline pairs"),
    Arm("grpo", "grpo", "mpo", {}, "MPO + GRPO (hybrid reward, SSB)"),
)
ARMS = (
    Arm("sft", "mpo", "assembled", SFT, "SFT (NLL only) on the same offline pairs"),
    Arm(
        "mpo_sampled",
        "mpo",
        "assembled",
        {},
        "iterative MPO (pairs sampled, scored by the reward model)",
        sampled=True,
    ),
    Arm("sft_sampled", "mpo", "assembled", SFT, "SFT (NLL only), same pair builder", sampled=True),
    Arm("mpo_t0", "mpo", "assembled", {"threshold": 0.0}, "iterative MPO, threshold 0", True),
    Arm("mpo_t1", "mpo", "assembled", {"threshold": 1.0}, "iterative MPO, threshold 1.0", True),
    Arm("grpo_sampled", "grpo", "mpo_sampled", {}, "iterative MPO + GRPO"),
    Arm("grpo_nossb", "grpo", "mpo", {"ssb.enabled": False}, "MPO + GRPO without SSB"),
    Arm(
        "grpo_rule",
        "grpo",
        "mpo",
        {"reward.weights": RULE_HEAVY},
        "MPO + GRPO, rule reward over-weighted (accuracy x10 against the reward model)",
    ),
    Arm("grpo_assembled", "grpo", "assembled", {}, "GRPO from the assembled model"),
    Arm("late_ssb", "grpo", "grpo", {}, "late GRPO with SSB"),
    Arm("late_nossb", "grpo", "grpo", {"ssb.enabled": False}, "late GRPO without SSB"),
    Arm(
        "late_uniform",
        "grpo",
        "grpo",
        {"ssb.alpha": 0.0},
        "late GRPO with SSB, uniform replays (ssb.alpha=0)",
    ),
    Arm("grpo_adapter", "grpo", "mpo", {"trainable": "adapter"}, "MPO + GRPO, adapter only"),
    Arm(
        "grpo_vision",
        "grpo",
        "mpo",
        {"trainable": "adapter+vision"},
        "MPO + GRPO, adapter + vision",
    ),
)
LATE = ("late_ssb", "late_nossb", "late_uniform")
LATE_POOL = "late_pool"
LATE_SOLVED = 0.75  # a late-pool prompt: the trained model solves >= this share of its rollouts


@dataclasses.dataclass
class DemoConfig:
    """``r1v2 demo``: assemble -> MPO -> GRPO with SSB -> evaluation on the toy world."""

    out: str = option("runs/demo", "folder of the demo: toy/, runs/, results/, model/, report")
    toy: str | None = option(
        None, "toy build to use or build into (null: OUT/toy); an earlier build is reused"
    )
    seed: int = option(0, "seed of the toy build and of every stage")
    fast: bool = option(
        False, "the same stages on a small toy world and a few steps (about a minute; CI)"
    )
    ablations: bool = option(
        False,
        "add the paper's comparisons in miniature, each arm on the main run's budget: SFT "
        "vs MPO; iterative MPO (pairs sampled and scored by the reward model) with SFT on its "
        "pairs, thresholds 0 / 1.0 and GRPO after it; GRPO without SSB, with an over-weighted "
        "rule reward, adapter-only and adapter+vision training, GRPO from the assembled model, "
        "SSB where advantages vanish "
        "(from the final model, on the training prompts it already solves: SSB as the paper "
        "draws, uniform replays, no SSB); about an hour more on 2 CPU cores",
    )
    arms: list[str] = option(
        [],
        "run only these ablation arms (names as in results/, e.g. mpo_sampled; repeatable) "
        "after the main stages, instead of every one",
    )
    threads: int | None = option(
        None,
        "torch threads (null: torch's default); results depend on it, so runs to compare "
        "should use the same value",
    )
    progress: bool = option(True, "show each stage's progress display")

    def validate(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise R1V2Error(f"config field 'threads' must be >= 1, got {self.threads}")
        names = [a.name for a in ARMS]
        unknown = [a for a in self.arms if a not in names]
        if unknown:
            raise R1V2Error(
                f"config field 'arms': unknown arm(s) {', '.join(unknown)}; known: "
                + ", ".join(names)
            )

    @property
    def budget(self) -> Budget:
        return FAST if self.fast else DEFAULT

    @property
    def toy_dir(self) -> Path:
        return Path(self.toy) if self.toy else Path(self.out) / "toy"


# ---- stages ----------------------------------------------------------------------------------


def result_path(out: Path, name: str) -> Path:
    return out / RESULTS / f"{name}.json"


def read_result(out: Path, name: str) -> dict[str, Any] | None:
    """A stage's result, None when there is none; one that is not a result (a list, a field
    missing) is refused in one line naming the file."""
    from r1v2.toy.report import check_result

    path = result_path(out, name)
    if not path.is_file():
        return None
    try:
        return check_result(path, json.loads(path.read_text()))
    except ValueError:
        return None  # torn by a kill mid-write: the stage runs again


def write_result(out: Path, name: str, result: dict[str, Any]) -> None:
    from r1v2.fsutil import write_atomic

    path = result_path(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(result, indent=2) + "\n")


def stage(
    out: Path,
    name: str,
    work: Callable[[], dict[str, Any]],
    line: Callable[[dict], str],
    inputs: dict[str, Any] | None = None,
    outputs: dict[str, Path] | None = None,
    adopt: bool = False,
) -> dict[str, Any]:
    """Run ``work`` unless ``OUT/results/NAME.json`` holds its result, made from ``inputs``,
    with ``outputs`` (the folders it wrote) as it wrote them; print one line. The result
    records both. ``adopt``: a result written before inputs were recorded is reused (and
    records them now) rather than redone."""
    inputs, outputs = inputs or {}, outputs or {}
    done = read_result(out, name)
    why = None if done is None else redo_reason(out, name, done, inputs, outputs, adopt)
    if done is not None and why is None:
        print(f"[{name}] done earlier: {line(done)}", flush=True)
        return done
    print(f"[{name}] {why}: running it again" if why else f"[{name}] ...", flush=True)
    start = time.perf_counter()
    result = work()
    result["seconds"] = round(time.perf_counter() - start, 1)
    result.update(inputs=inputs, outputs=digests(outputs))
    write_result(out, name, result)
    print(f"[{name}] {line(result)} ({result['seconds']:.0f} s)", flush=True)
    return result


def redo_reason(
    out: Path,
    name: str,
    done: dict[str, Any],
    inputs: dict[str, Any],
    outputs: dict[str, Path],
    adopt: bool,
) -> str | None:
    """Why a finished stage must run again (None: reuse it). An output changed since the
    stage wrote it is refused: what changed it may be the user's."""
    missing = [p for p in outputs.values() if not p.exists()]
    if missing:
        return f"{missing[0]} is missing"
    if "inputs" not in done:
        if not adopt:
            return "its result records no inputs (an earlier version of the demo)"
        done.update(inputs=inputs, outputs=digests(outputs))
        write_result(out, name, done)
        return None
    changed = changes(done["inputs"], inputs)
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        return f"made from other inputs: {'; '.join(changed[:3])}{more}"
    return check_outputs(out, name, done, outputs, adopt)


def check_outputs(
    out: Path, name: str, done: dict[str, Any], outputs: dict[str, Path], adopt: bool
) -> str | None:
    """Compare a stage's folders (keyed by the end of their path, ``toy/vlm``: a demo folder
    moved whole holds the same ones) with those its result records: another folder in their
    place is a reason to redo the stage (``adopt``: it is recorded as it is); a folder changed
    since it was written is refused."""
    recorded = dict(done.get("outputs") or {})
    for key, path in outputs.items():
        if not isinstance(recorded.get(key), dict):
            if not adopt:
                return f"{path} is not a folder its result records"
            recorded[key] = file_input(path)
        before, now = recorded[key].get("digest"), tree_digest(path)
        if before != now:
            raise R1V2Error(
                f"{path} changed since {result_path(out, name)} recorded it (digest {before} "
                f"-> {now}); remove {path} to make it again (stage '{name}'), or give "
                "another --out"
            )
    now = {k: {"path": str(p), "digest": recorded[k]["digest"]} for k, p in outputs.items()}
    if any(done.get("outputs", {}).get(k) != v for k, v in now.items()):
        done["outputs"] = {**recorded, **now}  # moved whole, or adopted: the record follows
        write_result(out, name, done)
    return None


TOY_PARTS = ("lm", "vision", "vlm", "rm", "data/train", "data/test", "data/pairs")


def toy_config(cfg: DemoConfig):
    from r1v2.toy.build import ToyBuildConfig

    values = {"out": str(cfg.toy_dir), "seed": cfg.seed, "progress": cfg.progress}
    return _config(ToyBuildConfig, {**values, **cfg.budget.toy})


def toy_stage(cfg: DemoConfig) -> dict[str, Any]:
    """The toy stage: reused when the seed and the build's settings are those of its result
    and its folders are those it recorded, as the build left them; else built (or refused:
    :func:`build_toy`). Weights that cannot be read are refused before anything loads them."""
    from r1v2.toy.build import stage_hashes

    toy = cfg.toy_dir
    check_weights([toy / part for part in TOY_PARTS[:4]])
    hashes = stage_hashes(toy_config(cfg))
    inputs = {"seed": cfg.seed, **{f"build.{k}": h for k, h in hashes.items()}}
    outputs = {f"{toy.name}/{part}": toy / part for part in TOY_PARTS}
    out = Path(cfg.out)
    line = lambda r: _toy_line({**r, "toy": str(toy)})  # noqa: E731
    result = stage(out, "toy", lambda: build_toy(cfg), line, inputs, outputs)
    if result["toy"] != str(toy):  # the same toy build, moved (with the demo folder)
        result["toy"] = str(toy)
        write_result(out, "toy", result)
    return result


def build_toy(cfg: DemoConfig) -> dict[str, Any]:
    """Build the toy world into ``cfg.toy_dir``, or reuse it. A build there with other
    settings (another seed, or ``--fast`` sizes against full ones) is refused, not rebuilt:
    it may be the user's."""
    from r1v2.toy.build import BUILD_FILE, build, stage_hashes

    toy_cfg = toy_config(cfg)
    record_file = cfg.toy_dir / BUILD_FILE
    if record_file.is_file():
        try:
            built = {
                k: v.get("hash") for k, v in json.loads(record_file.read_text())["stages"].items()
            }
        except (ValueError, KeyError, AttributeError) as e:
            raise R1V2Error(f"{record_file}: not a toy build record ({e})") from e
        differ = [k for k, h in stage_hashes(toy_cfg).items() if built.get(k) not in (None, h)]
        if differ:
            raise R1V2Error(
                f"toy={cfg.toy_dir} holds a toy build with other settings (stages "
                f"{', '.join(differ)} differ: another seed, or --fast against full sizes); "
                "give another toy= folder (or remove that one)"
            )
    record = build(toy_cfg, log=_quiet(cfg))
    rm = record["stages"]["rm"]["metrics"]
    return {
        "toy": str(cfg.toy_dir),
        "seed": cfg.seed,
        "built_seconds": record["seconds_this_call"],
        "rm_accuracy_hallucinated": rm.get("accuracy_hallucinated"),
        "rm_accuracy_repetitive": rm.get("accuracy_repetitive"),
    }


def evaluate_model(cfg: DemoConfig, model: Path) -> dict[str, Any]:
    """Greedy accuracy and hallucination rate of ``model`` on the first ``eval_size``
    held-out samples, through the training probe's code (``r1v2.eval.greedy.probe``), and
    where its image tokens lie against the LM's cell words on the first ``ALIGNMENT_SCENES``
    of those images (:func:`r1v2.toy.align.alignment_error`)."""
    import torch

    from r1v2.data.synthetic import Scene
    from r1v2.eval.greedy import grade, greedy_texts
    from r1v2.model.policy import Policy
    from r1v2.toy.align import alignment_error
    from r1v2.train.stage import load_pool

    samples = load_pool(str(cfg.toy_dir / "data" / "test"))[: cfg.budget.eval_size]
    policy = Policy.from_pretrained(model)
    with torch.inference_mode():
        texts = greedy_texts(policy, samples, max_new_tokens=128)
    graded = grade(texts, [s.answer for s in samples], [s.choices for s in samples],
                   [s.metadata["scene"] for s in samples])  # fmt: skip
    scenes = [Scene.from_any(s.metadata) for s in samples[:ALIGNMENT_SCENES]]
    return {
        "model": str(model),
        "n": len(samples),
        "accuracy": graded["accuracy"],
        "hallucination_rate": graded["hallucination_rate"],
        "groups": group_accuracy(samples, graded["correct"]),
        "alignment": alignment_error(policy.model, policy.processor, scenes),
    }


def group_accuracy(samples: list, correct: list[float | None]) -> dict[str, float]:
    """Accuracy per question kind (``math``: a number, ``choice``: a letter) and per level,
    over the samples of each group that could be graded."""
    from r1v2.toy.report import GROUP_KEYS

    tags = [(s.kind, f"level {s.metadata['level']}") for s in samples]
    out = {}
    for name in GROUP_KEYS:
        scored = [c for t, c in zip(tags, correct) if name in t and c is not None]
        if scored:
            out[name] = sum(scored) / len(scored)
    return out


def stage_config(cfg: DemoConfig, arm: Arm, start_model: Path):
    """The MPOConfig or GRPOConfig of ``arm``: the budget's values, then the arm's own."""
    toy, out = cfg.toy_dir, Path(cfg.out)
    budget = cfg.budget
    shared = {
        "model": str(start_model),
        "data": str(toy / "data" / "train"),
        "output_dir": str(out / RUNS / arm.name),
        "seed": cfg.seed,
        "probe_data": str(toy / "data" / "test"),
        "progress": cfg.progress,
        "tensorboard": False,
        # OUT/runs/NAME is the demo's own: a stage killed before its first checkpoint starts
        # again (with a checkpoint, resume=auto continues it).
        "overwrite": True,
    }
    if arm.kind == "mpo":
        from r1v2.train.mpo import MPOConfig

        pairs = (
            budget.sampled if arm.sampled else {**budget.offline, "data": str(out / DATA / "pairs")}
        )
        values = {**shared, "rm_path": str(toy / "rm"), **budget.mpo, **pairs, **arm.values}
        return _config(MPOConfig, values)
    from r1v2.train.grpo import GRPOConfig

    sizes = budget.late if arm.name in LATE else budget.grpo
    shared["data"] = str(out / (LATE_POOL if arm.name in LATE else f"{DATA}/pool"))
    values = {**shared, "reward.rm_path": str(toy / "rm"), **budget.grpo, **sizes, **arm.values}
    return _config(GRPOConfig, values)


def train_arm(cfg: DemoConfig, arm: Arm, start_model: Path) -> dict[str, Any]:
    """Train ``arm`` (resuming an interrupted run), then evaluate its final model."""
    from r1v2.train import grpo, mpo

    stage_cfg = stage_config(cfg, arm, start_model)
    trainer = mpo.train if arm.kind == "mpo" else grpo.train
    start = time.perf_counter()
    run_dir = trainer(stage_cfg)
    seconds = round(time.perf_counter() - start, 1)
    result = evaluate_model(cfg, run_dir / "final")
    return {
        "arm": arm.name,
        "label": arm.label,
        "run": str(run_dir),
        "train_seconds": seconds,
        **result,
        "config": to_dict(stage_cfg),
    }


def build_late_pool(cfg: DemoConfig, model: Path) -> dict[str, Any]:
    """``OUT/late_pool``: the prompts the trained model already solves, as late in training.

    The first ``late_pool`` training prompts get ``group_size`` rollouts each from ``model``,
    scored by GRPO's own reward (:func:`r1v2.train.prefilter.score_prompts`); the pool keeps
    those whose mean accuracy is at least :data:`LATE_SOLVED`. Most of their groups are then
    all correct (tied: zero advantage), the regime where SSB has something to do. A pool
    smaller than one step's prompts is topped up with the next most-solved prompts.
    """
    from r1v2.data.loaders import write_jsonl
    from r1v2.train.prefilter import PrefilterConfig, score_prompts
    from r1v2.train.stage import load_pool

    late = stage_config(cfg, next(a for a in ARMS if a.name in LATE), model)
    group, per_step = late.group_size, late.prompts_per_step
    toy = cfg.toy_dir
    values = {
        "model": str(model),
        "data": str(toy / "data" / "train"),
        "reward.rm_path": str(toy / "rm"),
        "seed": cfg.seed,
        "k": group,
        "progress": cfg.progress,
        "out": str(Path(cfg.out) / LATE_POOL / "samples.jsonl"),
    }
    pcfg = _config(PrefilterConfig, values)
    pool = load_pool(pcfg.data)[: cfg.budget.late_pool]
    scored = [(item, verdict, acc or 0.0) for item, verdict, acc in score_prompts(pcfg, pool)]
    ranked = sorted(range(len(scored)), key=lambda i: -scored[i][2])  # stable: pool order
    solved = [i for i in ranked if scored[i][2] >= LATE_SOLVED]
    keep = sorted(solved if len(solved) >= per_step else ranked[:per_step])
    write_jsonl([scored[i][0] for i in keep], pcfg.out)
    verdicts = [scored[i][1] for i in keep]
    return {
        "pool": pcfg.out,
        "scored": len(scored),
        "kept": len(keep),
        "solved": len(solved),
        "solved_share": LATE_SOLVED,
        "all_correct": verdicts.count("all_correct"),
        "tied": sum(v != "kept" for v in verdicts),
        "mean_accuracy": sum(scored[i][2] for i in keep) / len(keep),
        "group_size": group,
    }


def _pool_line(result: dict[str, Any]) -> str:
    return (
        f"{result['kept']} of {result['scored']} training prompts solved in >= "
        f"{result['solved_share']:.0%} of {result['group_size']} rollouts "
        f"({result['tied']} of them tied: every rollout scored alike)"
    )


def one_line(result: dict[str, Any]) -> str:
    if "accuracy" not in result:
        return json.dumps({k: v for k, v in result.items() if k != "seconds"})
    return (
        f"accuracy {result['accuracy']:.1%}, hallucination rate "
        f"{result['hallucination_rate']:.1%} (n={result['n']})"
    )


def model_path(cfg: DemoConfig, name: str) -> Path:
    if name == "assembled":
        return cfg.toy_dir / "vlm"
    return Path(cfg.out) / RUNS / name / "final"


def arm_inputs(cfg: DemoConfig, arm: Arm, start: Path) -> dict[str, Any]:
    """What ``arm`` reads: its start model, training data, probe (and evaluation) data and
    reward model, each with a digest, and the evaluation's size."""
    c = stage_config(cfg, arm, start)
    rm = c.rm_path if arm.kind == "mpo" else c.reward.rm_path
    paths = {"model": start, "data": Path(c.data), "probe_data": Path(c.probe_data), "rm": Path(rm)}
    return {**digests(paths), "eval_size": cfg.budget.eval_size}


def split_stage(cfg: DemoConfig) -> dict[str, Any]:
    """``OUT/data``: the toy's pairs of the budget's pair levels (MPO's data) and its training
    prompts of the pool levels (GRPO's), remade when the toy's data or the levels changed."""
    from r1v2.toy.split import split_by_level

    toy, out, budget = cfg.toy_dir, Path(cfg.out), cfg.budget
    data = toy / "data"
    inputs = digests({"pairs": data / "pairs", "train": data / "train"})
    inputs.update(pair_levels=list(budget.pair_levels), pool_levels=list(budget.pool_levels))
    pairs, pool = out / DATA / "pairs", out / DATA / "pool"
    work = lambda: split_by_level(toy, pairs, pool, budget.pair_levels, budget.pool_levels)  # noqa: E731
    return stage(
        out, DATA, work, _split_line(budget), inputs, {f"{DATA}/pairs": pairs, f"{DATA}/pool": pool}
    )


def _split_line(budget: Budget) -> Callable[[dict[str, Any]], str]:
    levels = lambda ls: ", ".join(map(str, ls))  # noqa: E731
    return lambda r: (
        f"{r['pairs']} reference pairs of levels {levels(budget.pair_levels)} for MPO, "
        f"{r['pool']} prompts of levels {levels(budget.pool_levels)} (answers only) for GRPO"
    )


def assembled_stage(cfg: DemoConfig) -> dict[str, Any]:
    """The assembled model's evaluation, redone when the model or the held-out set changed."""
    vlm, test = model_path(cfg, "assembled"), cfg.toy_dir / "data" / "test"
    inputs = {**digests({"model": vlm, "test": test}), "eval_size": cfg.budget.eval_size}
    work = lambda: evaluate_model(cfg, vlm)  # noqa: E731
    return stage(Path(cfg.out), "assembled", work, one_line, inputs)


def late_pool_stage(cfg: DemoConfig) -> dict[str, Any]:
    """``OUT/late_pool``, rebuilt when the model, the prompts or the reward model changed."""
    model, toy = model_path(cfg, "grpo"), cfg.toy_dir
    inputs = digests({"model": model, "data": toy / "data" / "train", "rm": toy / "rm"})
    inputs.update(late_pool=cfg.budget.late_pool, seed=cfg.seed)
    outputs = {LATE_POOL: Path(cfg.out) / LATE_POOL}
    work = lambda: build_late_pool(cfg, model)  # noqa: E731
    return stage(Path(cfg.out), LATE_POOL, work, _pool_line, inputs, outputs)


def arm_stage(cfg: DemoConfig, arm: Arm) -> dict[str, Any]:
    """A training arm: refused when it was trained with other settings or inputs, trained
    again when its final model is gone."""
    start = model_path(cfg, arm.start)
    inputs = arm_inputs(cfg, arm, start)
    check_unchanged(cfg, arm, start, inputs)
    outputs = {f"{RUNS}/{arm.name}/final": model_path(cfg, arm.name)}
    work = lambda: train_arm(cfg, arm, start)  # noqa: E731
    return stage(Path(cfg.out), arm.name, work, one_line, inputs, outputs, adopt=True)


def run_demo(cfg: DemoConfig) -> dict[str, dict[str, Any]]:
    """Every stage of the demo in order; returns the results by stage name."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise R1V2Error(f"out={out} is a file, not a folder")
    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    results: dict[str, dict[str, Any]] = {}
    results["toy"] = toy_stage(cfg)
    results[DATA] = split_stage(cfg)
    results["assembled"] = assembled_stage(cfg)
    for arm in MAIN + selected_arms(cfg):
        if arm.name in LATE and LATE_POOL not in results:
            results[LATE_POOL] = late_pool_stage(cfg)
        results[arm.name] = arm_stage(cfg, arm)
        if arm.name == "grpo":
            copy_model(out, model_path(cfg, "grpo"))
    from r1v2.toy.report import write_report

    paths = write_report(out)
    print(f"[report] {', '.join(str(p) for p in paths)}")
    return results


# Paths of a stage's config, compared by their last parts: a demo folder moved whole holds the
# same runs (``model``: ``toy/vlm`` or ``NAME/final``, the arm it starts from).
PATH_PARTS = {
    "model": 2,
    "data": 1,
    "output_dir": 1,
    "probe_data": 1,
    "rm_path": 1,
    "reward.rm_path": 1,
}


def settings_changed(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The fields where an arm's recorded config and its config now differ, as ``key (before
    -> now)`` (display fields and fields only one of them has are not compared)."""
    from r1v2.train.stage import flat_config

    before, after = flat_config(recorded), flat_config(now)

    def key(name: str, value: Any) -> Any:
        parts = PATH_PARTS.get(name)
        return Path(value).parts[-parts:] if parts and isinstance(value, str) else value

    return [
        f"{k} ({before[k]!r} -> {after[k]!r})"
        for k in sorted(before.keys() & after.keys())
        if k != "progress" and key(k, before[k]) != key(k, after[k])
    ]


def check_unchanged(
    cfg: DemoConfig, arm: Arm, start: Path, inputs: dict[str, Any] | None = None
) -> None:
    """Refuse to reuse a finished arm whose recorded settings are not the demo's now (a
    folder from another version of the demo, say), or whose recorded ``inputs`` (the digests
    of what it read, :func:`arm_inputs`) differ from those now (another seed's toy, a start
    model trained again): its numbers would stand under a label they were not trained for."""
    done = read_result(Path(cfg.out), arm.name)
    if done is None:
        return
    now = to_dict(stage_config(cfg, arm, start))
    settings = settings_changed(done["config"], now) if "config" in done else []
    read = changes(done.get("inputs") or {}, inputs) if inputs is not None else []
    changed = settings + read
    if changed:
        what = "settings" if not read else "inputs" if not settings else "settings and inputs"
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        after = [a.name for a in MAIN + ARMS if arm.name in _starts(a)]
        also = f" (and those of the arms that start from it: {', '.join(after)})" if after else ""
        raise R1V2Error(
            f"{result_path(Path(cfg.out), arm.name)} was trained with other {what}: "
            f"{', '.join(changed[:3])}{more}; give another --out, or remove that file and "
            f"{Path(cfg.out) / RUNS / arm.name}{also} to train '{arm.name}' again"
        )


def _starts(arm: Arm) -> list[str]:
    """The arms ``arm`` continues from, nearest first."""
    by_name = {a.name: a for a in MAIN + ARMS}
    chain = []
    while arm.start in by_name:
        chain.append(arm.start)
        arm = by_name[arm.start]
    return chain


def selected_arms(cfg: DemoConfig) -> tuple[Arm, ...]:
    """The ablation arms to run, in ``ARMS`` order: all of them with ``ablations``, else those
    ``arms`` names and the arms they start from."""
    if cfg.ablations:
        return ARMS
    by_name = {a.name: a for a in ARMS}
    wanted = {n for name in cfg.arms for n in (name, *_starts(by_name[name]))}
    return tuple(a for a in ARMS if a.name in wanted)


def copy_model(out: Path, src: Path) -> None:
    """``OUT/model``: the final model ``src``, copied whole. A copy the demo made earlier
    (``results/model.json`` records its digest) of weights that are no longer the final ones
    is replaced; other weights there are refused, not replaced: they may be the user's."""
    dst = out / "model"
    want, have = tree_digest(src), tree_digest(dst)
    if have != want:
        made = read_result(out, "model") or {}
        if have is not None and made.get("digest") != have:
            raise R1V2Error(
                f"{dst} holds other weights than the final model {src} and "
                f"{result_path(out, 'model')} does not record the demo copying them; remove "
                f"{dst} (or give another --out) to copy the final model there"
            )
        from r1v2.fsutil import replace_dir

        with replace_dir(dst, overwrite=True) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        print(f"[model] {dst}: the final model, copied from {src}", flush=True)
    record = {"model": str(dst), "from": str(src), "digest": want}
    if read_result(out, "model") != record:
        write_result(out, "model", record)


def run(cfg: DemoConfig) -> int:
    """``r1v2 demo``: the stages, then where the report and the model are."""
    start = time.perf_counter()
    run_demo(cfg)
    out = Path(cfg.out)
    print(
        f"demo done in {time.perf_counter() - start:.0f} s: report {out / 'report.md'}, "
        f"model {out / 'model'}"
    )
    return 0


@dataclasses.dataclass
class SummaryConfig:
    """``r1v2 demo summary RUN [RUN ...]``: demo folders of several seeds, side by side."""

    runs: list[str] = option(help="demo folders (each with results/), e.g. one per seed")
    out: str | None = option(None, "also write the table to this markdown file")
    overwrite: bool = option(False, "replace an existing OUT file")

    def validate(self) -> None:
        if self.out:
            from r1v2.fsutil import check_output_file

            check_output_file(self.out, "out", overwrite=self.overwrite)
        if not self.runs:
            raise R1V2Error("name at least one demo folder: r1v2 demo summary runs/demo-s0 ...")
        for folder in self.runs:
            if not (Path(folder) / RESULTS).is_dir():
                raise R1V2Error(f"{folder}: not a demo folder (no {RESULTS}/)")


def run_summary(cfg: SummaryConfig) -> int:
    from r1v2.toy.report import seed_summary

    lines = seed_summary(cfg.runs)
    print("\n".join(lines))
    if cfg.out:
        from r1v2.fsutil import write_atomic

        write_atomic(cfg.out, "\n".join(lines) + "\n")
        print(f"wrote {cfg.out}")
    return 0


# ---- helpers ---------------------------------------------------------------------------------


def _config(cls: type, values: dict[str, Any]):
    """``cls`` from dotted ``values`` (as ``key=value`` overrides would give), validated."""
    return resolve(cls, None, list(values.items()))


def _quiet(cfg: DemoConfig) -> Callable[[str], None]:
    return (lambda line: print(f"  toy {line}", flush=True)) if cfg.progress else (lambda _: None)


def _toy_line(result: dict[str, Any]) -> str:
    acc = result.get("rm_accuracy_hallucinated")
    rm = f"; reward model {acc:.1%} vs hallucinated responses" if acc is not None else ""
    built = result.get("built_seconds")
    took = f" ({built:.0f} s of building)" if isinstance(built, (int, float)) else ""
    return f"toy world in {result['toy']}{took}{rm}"
