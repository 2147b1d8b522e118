"""``r1v2 demo``: the whole R1V2 recipe on the toy world, on a CPU, with a report.

The pipeline, each stage with its progress display and a one-line result::

    toy        r1v2 toy build into TOY (stages already built with the same settings reused)
    assembled  greedy accuracy and hallucination rate of TOY/vlm on the held-out set
    mpo        r1v2 mpo from TOY/vlm on the toy's offline pairs (then its eval)
    grpo       r1v2 grpo from mpo/final: hybrid reward (reward model on), SSB (then its eval)
    model      OUT/model, the final model (an ordinary transformers checkpoint)
    report     OUT/report.md, OUT/report.html and OUT/plots/*.png, from the run's own logs

The MPO stage trains on ``TOY/data/pairs`` (InternVL's MMPR layout): each training prompt's
reference trace chosen over a hallucinated trace of it (:mod:`r1v2.toy.pairs`), the
preference data that teaches the assembled model to read its image tokens. The paper's
iterative MPO (pairs the policy samples itself, scored by the reward model and the rules) runs
as an ablation arm, with its thresholds.

``--ablations`` adds arms on the same budget (``ARMS``): SFT on the same offline pairs;
iterative MPO, SFT on its pair builder, two more thresholds and GRPO after it; GRPO without
SSB, LLM+adapter and adapter+vision training, GRPO from the assembled model, and SSB against
no SSB where advantages vanish: the arms continue from the trained model on ``OUT/late_pool``,
the training prompts it already solves in at least 75% of its rollouts
(:func:`build_late_pool`), so most groups are all correct, as late in training; SSB runs
there as the paper draws (by |A|) and with uniform replays. ``--arms NAME`` runs only the
named arms.

The hallucination guard of MPO and GRPO rolls back: when a stage's probe hallucination rate
stays above its start plus the tolerance, the stage ends with the weights of its best probe
(by accuracy), so a stage that goes wrong (a weak reward model, say) hands on what it started
from rather than what it broke.

Every stage writes ``OUT/results/NAME.json`` when it finishes; a re-run skips the stages whose
result is there, and a training stage that was interrupted resumes from its last checkpoint
(``resume=auto``). Layout: ``OUT/toy`` (unless ``toy=`` names a build), ``OUT/runs/NAME``
(each training run: metrics.jsonl, checkpoints, final/), ``OUT/results``, ``OUT/model``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from r1v2.config import option, resolve, to_dict
from r1v2.errors import R1V2Error

RESULTS = "results"
RUNS = "runs"
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


DEFAULT = Budget(
    toy={},
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
        "max_steps": 250,
        # From the MPO models of seeds 0 and 1 (500 held-out samples, one thread), 150 steps:
        # lr 1e-4 with warmup and cosine decay 51.4% / 51.2%; 2e-4 the same way 43.0% / 44.2%;
        # the constant 5e-5 of `r1v2 grpo` 45.8% / 48.0% (two threads); 250 steps at 1e-4:
        # 53.0% / 53.6% (about 115 s more on 2 cores).
        "optim.lr": 1e-4,
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
    Arm("grpo_llm", "grpo", "mpo", {"trainable": "llm+adapter"}, "MPO + GRPO, LLM + adapter"),
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
        "pairs, thresholds 0 / 1.0 and GRPO after it; GRPO without SSB, LLM+adapter and "
        "adapter+vision training, GRPO from the assembled model, SSB where advantages vanish "
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
    path = result_path(out, name)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None  # torn by a kill mid-write: the stage runs again


def write_result(out: Path, name: str, result: dict[str, Any]) -> None:
    from r1v2.fsutil import write_atomic

    path = result_path(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(result, indent=2) + "\n")


def stage(
    out: Path, name: str, work: Callable[[], dict[str, Any]], line: Callable[[dict], str]
) -> dict[str, Any]:
    """Run ``work`` unless ``OUT/results/NAME.json`` holds its result; print one line."""
    done = read_result(out, name)
    if done is not None:
        print(f"[{name}] done earlier: {line(done)}", flush=True)
        return done
    print(f"[{name}] ...", flush=True)
    start = time.perf_counter()
    result = work()
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_result(out, name, result)
    print(f"[{name}] {line(result)} ({result['seconds']:.0f} s)", flush=True)
    return result


def build_toy(cfg: DemoConfig) -> dict[str, Any]:
    """Build the toy world into ``cfg.toy_dir``, or reuse it. A build there with other
    settings (another seed, or ``--fast`` sizes against full ones) is refused, not rebuilt:
    it may be the user's."""
    from r1v2.toy.build import BUILD_FILE, ToyBuildConfig, build, stage_hashes

    values = {"out": str(cfg.toy_dir), "seed": cfg.seed, "progress": cfg.progress}
    toy_cfg = _config(ToyBuildConfig, {**values, **cfg.budget.toy})
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
    from r1v2.eval.greedy import probe
    from r1v2.model.policy import Policy
    from r1v2.toy.align import alignment_error
    from r1v2.train.stage import load_pool

    samples = load_pool(str(cfg.toy_dir / "data" / "test"))[: cfg.budget.eval_size]
    policy = Policy.from_pretrained(model)
    with torch.inference_mode():
        metrics = probe(policy, samples, max_new_tokens=128)
    scenes = [Scene.from_any(s.metadata) for s in samples[:ALIGNMENT_SCENES]]
    return {
        "model": str(model),
        "n": len(samples),
        "accuracy": metrics["probe_accuracy"],
        "hallucination_rate": metrics["hallucination_rate"],
        "alignment": alignment_error(policy.model, policy.processor, scenes),
    }


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
            budget.sampled
            if arm.sampled
            else {**budget.offline, "data": str(toy / "data" / "pairs")}
        )
        values = {**shared, "rm_path": str(toy / "rm"), **budget.mpo, **pairs, **arm.values}
        return _config(MPOConfig, values)
    from r1v2.train.grpo import GRPOConfig

    sizes = budget.late if arm.name in LATE else budget.grpo
    if arm.name in LATE:
        shared["data"] = str(out / LATE_POOL)
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


def run_demo(cfg: DemoConfig) -> dict[str, dict[str, Any]]:
    """Every stage of the demo in order; returns the results by stage name."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise R1V2Error(f"out={out} is a file, not a folder")
    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    results: dict[str, dict[str, Any]] = {}
    results["toy"] = stage(out, "toy", lambda: build_toy(cfg), _toy_line)
    if not (cfg.toy_dir / "data" / "pairs").is_dir():  # built before the toy had its pairs
        build_toy(cfg)
    results["assembled"] = stage(
        out, "assembled", lambda: evaluate_model(cfg, model_path(cfg, "assembled")), one_line
    )
    arms = MAIN + selected_arms(cfg)
    for arm in arms:
        if arm.name in LATE and LATE_POOL not in results:
            results[LATE_POOL] = stage(
                out, LATE_POOL, lambda: build_late_pool(cfg, model_path(cfg, "grpo")), _pool_line
            )
        start = model_path(cfg, arm.start)
        check_unchanged(cfg, arm, start)
        results[arm.name] = stage(
            out, arm.name, lambda arm=arm, start=start: train_arm(cfg, arm, start), one_line
        )
        if arm.name == "grpo":
            copy_model(model_path(cfg, "grpo"), out / "model")
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


def check_unchanged(cfg: DemoConfig, arm: Arm, start: Path) -> None:
    """Refuse to reuse a finished arm whose recorded settings are not the demo's now (a
    folder from another version of the demo, say): its numbers would stand under a label
    they were not trained for."""
    done = read_result(Path(cfg.out), arm.name)
    if done is None or "config" not in done:
        return
    changed = settings_changed(done["config"], to_dict(stage_config(cfg, arm, start)))
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        after = [a.name for a in MAIN + ARMS if arm.name in _starts(a)]
        also = f" (and those of the arms that start from it: {', '.join(after)})" if after else ""
        raise R1V2Error(
            f"{result_path(Path(cfg.out), arm.name)} was trained with other settings: "
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


def copy_model(src: Path, dst: Path) -> None:
    """OUT/model: the final model, copied whole (a re-run leaves a complete copy alone)."""
    if (dst / "config.json").is_file():
        return
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    os.replace(tmp, dst)


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
    return f"toy world in {result['toy']} ({result['built_seconds']:.0f} s of building){rm}"
