"""Pieces every training stage uses (GRPO, the prefilter, MPO).

- :class:`PolicySetup`: the settings that decide how a stage's policy is loaded and samples
  (model, data, seed, device, dtype, generation); :class:`ScoredSetup` adds the hybrid reward.
  Stage configs inherit their fields, so ``r1v2 prefilter`` cannot load or score prompts
  differently from ``r1v2 grpo``. :class:`RunSettings`: a training run's folder, checkpoints,
  probe, guard and logs, shared by ``r1v2 grpo`` and ``r1v2 mpo``.
- :class:`StageRun`: what a run's loop decides alike in both (probe, checkpoint, stop, log).
- :func:`load_policy`, :func:`make_reward`: the policy and its hybrid reward from those settings.
- :func:`prepare_output`, :func:`check_resumable`: which checkpoint a run continues, and the
  refusals that keep a new run from touching an earlier one.
- :func:`save_final`: the run's last weights as an ordinary transformers checkpoint;
  :func:`run_summary`: one paragraph on a finished run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from r1v2.config import check_range, option, to_dict
from r1v2.errors import R1V2Error
from r1v2.fsutil import check_writable_folder
from r1v2.model.dtypes import DTYPES, Device, Dtype
from r1v2.model.policy import SamplingConfig
from r1v2.rewards.hybrid import HybridRewardConfig
from r1v2.train.checkpoint import (
    check_checkpoint,
    latest_checkpoint,
    newest_intact_checkpoint,
    save_checkpoint,
)
from r1v2.train.guard import GuardConfig
from r1v2.train.metrics import MetricsLogger

FINAL = "final"  # OUTPUT_DIR/final: the trained model, loadable with the Auto classes


@dataclass
class PolicySetup:
    """How a stage's policy is loaded, samples and is scored."""

    model: str = option("runs/toy/vlm", "policy checkpoint (an assembled VLM or a causal LM)")
    data: str = option("runs/toy/data/train", "prompt pool: Sample JSONL/parquet file or folder")
    seed: int = option(0, "seed of the prompt order, the rollouts and the buffer")
    device: Device = option("auto", "auto (CUDA when available), cpu or cuda")
    dtype: Dtype = option("float32", "model dtype (bfloat16 on GPUs; TRL: torch_dtype)")
    generation: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(max_new_tokens=128),
        metadata={"help": "sampling of rollouts (TRL: temperature, top_p, max_completion_length)"},
    )


@dataclass
class ScoredSetup(PolicySetup):
    """A :class:`PolicySetup` whose rollouts are scored by the hybrid reward (grpo, prefilter)."""

    reward: HybridRewardConfig = field(
        default_factory=HybridRewardConfig, metadata={"help": "hybrid reward"}
    )


@dataclass
class RunSettings:
    """A training run's folder, checkpoints, what trains, its probe and its logs: the fields
    ``r1v2 grpo`` and ``r1v2 mpo`` share. Each stage declares again the four whose defaults
    are its own (``output_dir``, ``max_steps``, ``save_steps``, ``probe_every``)."""

    output_dir: str = option("runs/train", "where checkpoints, metrics.jsonl and final/ go")
    max_steps: int = option(30, "optimizer steps to train")
    save_steps: int = option(10, "write a checkpoint every this many steps (and at the end)")
    keep_last: int = option(2, "checkpoints kept, older ones deleted (TRL: save_total_limit)")
    resume: str = option(
        "auto",
        "auto: continue from the newest intact checkpoint in output_dir (a broken one is skipped "
        "with a warning naming the file; only when its config matches "
        "this one; max_steps may grow); never: start fresh; or a checkpoint path",
    )
    overwrite: bool = option(
        False,
        "start fresh in an output_dir that holds an earlier run (removed once everything is "
        "validated, before anything is written); without it such a folder is refused",
    )
    trainable: Literal["adapter", "llm+adapter", "adapter+vision", "all"] = option(
        "adapter", "parts that train (paper: adapter-only is best)"
    )
    probe_data: str | None = option(
        None, "samples with a scene in metadata for the hallucination probe (null: none)"
    )
    probe_every: int = option(10, "run the probe every this many steps (and at the end)")
    probe_size: int = option(64, "probe samples (greedy decoding)")
    guard: GuardConfig = field(
        default_factory=GuardConfig, metadata={"help": "hallucination guard (needs probe_data)"}
    )
    nan_patience: int = option(3, "abort after this many non-finite losses in a row")
    tensorboard: bool = option(
        True, "also log to output_dir/tensorboard when installed (TRL: report_to='tensorboard')"
    )
    wandb_project: str | None = option(
        None, "also log to this W&B project (TRL: report_to='wandb')"
    )
    progress: bool = option(True, "show a live progress display")

    def validate_run(self) -> None:
        """Check these fields (each stage's ``validate`` calls this); errors name the field."""
        self.guard.validate()
        for name in ("max_steps", "save_steps", "probe_every", "probe_size", "nan_patience"):
            value = getattr(self, name)
            if value < 1:
                raise R1V2Error(f"config field '{name}' must be >= 1, got {value}")
        check_range("keep_last", self.keep_last, 0)


class StageRun:
    """What a GRPO or MPO run's state (a dataclass with these attributes) says of its process
    and its folder, and the decisions its loop shares: when to probe, to checkpoint, to stop."""

    cfg: Any
    accelerator: Any
    step: int
    guard: Any  # r1v2.train.guard.HallucinationGuard
    probe_items: list[Any]
    policy: Any  # r1v2.model.policy.Policy
    pool: list[Any]  # the rows the run trains on

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def out(self) -> Path:
        return Path(self.cfg.output_dir)

    @property
    def guard_stopped(self) -> bool:
        """The hallucination guard fired (in this run or before a resume) and is not off."""
        return self.guard.fired and self.cfg.guard.action != "off"

    def probe_due(self, step: int) -> bool:
        """A probe set is given and ``step`` is a probe step (every probe_every, and the last)."""
        cfg = self.cfg
        return bool(self.probe_items) and (step % cfg.probe_every == 0 or step == cfg.max_steps)

    def save_due(self, step: int) -> bool:
        """``step`` ends with a checkpoint: every save_steps, the last, or the guard stopped."""
        cfg = self.cfg
        return step % cfg.save_steps == 0 or step == cfg.max_steps or self.guard_stopped

    def check_nonfinite(self, streak: int, step: int) -> None:
        """Stop the run after ``nan_patience`` non-finite losses in a row, naming the last
        good checkpoint."""
        if streak >= self.cfg.nan_patience:
            raise R1V2Error(
                f"{streak} non-finite losses in a row (step {step}); stopping. Last good "
                f"checkpoint: {latest_checkpoint(self.out) or 'none'}. Lower optim.lr or check "
                "the data."
            )

    def write_checkpoint(self, step: int, state: dict[str, Any], **meta: Any) -> None:
        """Checkpoint ``step``: the policy's weights, the trainer ``state`` and ``meta`` beside
        the starting model and what trains (collective: every process calls it)."""
        cfg = self.cfg
        save_checkpoint(
            self.out,
            step,
            model=self.policy.model,
            trainer_state={**state, "data_digest": data_digest(self.pool)},
            keep_last=cfg.keep_last,
            meta={"model": str(cfg.model), "trainable": cfg.trainable, **meta},
            rank=self.rank,
            world_size=self.world,
            barrier=self.accelerator.wait_for_everyone,
        )

    def metrics_logger(self) -> MetricsLogger:
        """The run's metrics log (main process), continuing ``metrics.jsonl`` after the step
        the run resumed from."""
        cfg = self.cfg
        return MetricsLogger(
            self.out,
            resume_step=self.step,
            tensorboard=cfg.tensorboard,
            wandb_project=cfg.wandb_project,
            run_config=to_dict(cfg),
        )


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise R1V2Error("device=cuda but no CUDA device is available (use device=auto or cpu)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def load_policy(setup: PolicySetup, device: torch.device | str | None = None):
    """The policy of ``setup.model`` in ``setup.dtype`` on ``device`` (default: setup.device)."""
    from r1v2.model.policy import Policy

    device = resolve_device(setup.device) if device is None else device
    return Policy.from_pretrained(setup.model, dtype=DTYPES[setup.dtype], device=device)


def make_reward(setup: ScoredSetup, policy):
    """The hybrid reward of ``setup.reward``; only an answer after ``</think>`` counts when
    the policy's chat template opens a think block."""
    from r1v2.model.policy import format_question
    from r1v2.model.reward_model import TransformersRewardModel
    from r1v2.rewards.hybrid import HybridReward

    cfg = setup.reward
    reward_model = None
    if cfg.rm_path is not None and cfg.weights.get("rm", 0) != 0:
        reward_model = TransformersRewardModel.from_pretrained(
            cfg.rm_path, device=cfg.rm_device, dtype=cfg.rm_dtype, batch_size=cfg.rm_batch_size
        )
    return HybridReward.from_config(
        cfg,
        reward_model=reward_model,
        question_fn=lambda s: format_question(s.question, s.choices),
        after_think=policy.opens_think,
    )


def load_pool(path: str) -> list[Any]:
    from r1v2.data.loaders import load_samples

    pool = load_samples(path).samples
    if not pool:
        raise R1V2Error(f"{path}: no samples")
    return pool


# ---- inputs and the output folder, checked at setup before the model loads -------------------


def load_probe(path: str | None, size: int) -> list[Any]:
    """The first ``size`` samples of ``probe_data`` (none without it), each checked to carry the
    scene the hallucination probe checks claims against (``metadata["scene"]``, as the synthetic
    task writes it), so a run without one is refused at setup, not at its first probe."""
    from r1v2.data.loaders import load_samples
    from r1v2.data.synthetic.scene import Scene

    if not path:
        return []
    items = load_samples(path).samples[:size]
    if not items:
        raise R1V2Error(f"probe_data={path}: no samples")
    for s in items:
        if "scene" not in s.metadata:
            raise R1V2Error(
                f"probe_data={path}: sample {s.id!r} has no 'scene' in its metadata (the "
                "hallucination probe needs one: samples of `r1v2 data synth` have it)"
            )
        try:
            Scene.from_any(s.metadata["scene"])
        except R1V2Error as e:
            raise R1V2Error(f"probe_data={path}: sample {s.id!r}: {e}") from None
    return items


# ---- output folder and resume ----------------------------------------------------------------


def prepare_output(out: Path, resume: str, overwrite: bool) -> tuple[Path | None, bool]:
    """``(checkpoint to resume or None, whether out holds an earlier run to remove)``, decided
    before anything loads. ``resume`` is ``auto`` (the newest intact checkpoint in ``out``:
    newer broken ones are skipped with a warning naming the broken file), ``never`` or a
    checkpoint path (refused, naming the file, if it is broken). A folder with files but
    nothing to continue (broken checkpoints included), or, for a checkpoint path outside
    ``out``, any non-empty ``out``, is refused unless ``overwrite``; the caller removes it
    (:func:`clear_folder`) only once everything else has been validated."""
    check_writable_folder(out, "output_dir")
    if resume not in ("auto", "never"):
        path = Path(resume)
        if not (path / "meta.json").is_file():
            raise R1V2Error(f"resume={resume}: not a checkpoint folder (no meta.json)")
        try:
            check_checkpoint(path)
        except R1V2Error as e:
            raise R1V2Error(f"resume={resume}: broken checkpoint: {e}") from e
        # A checkpoint of another folder continues into output_dir: one holding a run of its
        # own (its metrics, checkpoints) would be cut and pruned, so it must be empty.
        ours = out.resolve() in path.resolve().parents
        occupied = out.is_dir() and any(out.iterdir())
        if occupied and not ours and not overwrite:
            raise R1V2Error(
                f"output_dir={out} holds an earlier run and resume={resume} is a checkpoint of "
                "another folder: use an empty output_dir, or overwrite=true to replace it"
            )
        return path, occupied and not ours
    latest, broken = newest_intact_checkpoint(out) if resume == "auto" else (None, [])
    occupied = out.is_dir() and any(out.iterdir())
    if latest is None and occupied and not overwrite:
        what = "an earlier run" if resume == "never" else "files but no checkpoint to resume"
        raise R1V2Error(
            f"output_dir={out} holds {what}"
            + (f" (every checkpoint is broken: {'; '.join(broken)})" if broken else "")
            + ": use another output_dir, or overwrite=true to replace it"
            + (" (resume=auto continues it)" if resume == "never" else "")
        )
    for problem in broken:
        print(f"warning: skipping a broken checkpoint: {problem}", file=sys.stderr)
    if latest is not None:
        return latest, False
    return None, occupied


def clear_folder(out: Path) -> None:
    """Remove everything inside ``out`` (an earlier run the user asked to overwrite)."""
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def flat_config(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config dict with nested sections as dotted keys (``{"optim": {"lr": 1}}`` ->
    ``{"optim.lr": 1}``); loss ``weights`` stay one value."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "weights":
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def data_digest(rows: list[Any]) -> str:
    """A content hash of the rows a run read (every field of every Sample or pair, in order;
    embedded image bytes by their own hash): the same rows give the same digest, a changed,
    swapped, added or removed row another."""

    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return "sha256:" + hashlib.sha256(value).hexdigest()
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)

    digest = hashlib.sha256()
    for row in rows:
        fields = dataclasses.asdict(row) if dataclasses.is_dataclass(row) else vars(row)
        digest.update(json.dumps(plain(fields), sort_keys=True).encode() + b"\n")
    return digest.hexdigest()


def check_same_data(state: dict[str, Any], rows: list[Any], data: Any, ckpt: Path) -> None:
    """Refuse to continue a checkpoint trained on other rows than ``rows`` (read from
    ``data``); a checkpoint written before digests were recorded is not compared."""
    saved = state.get("data_digest")
    if saved is not None and saved != data_digest(rows):
        raise R1V2Error(
            f"{ckpt} was trained on other data: the rows of {data} changed since (their "
            "digest differs). To train on the new data use another output_dir, or "
            "resume=never overwrite=true to replace this run"
        )


def check_resumable(
    saved: dict[str, Any], cfg: Any, ckpt: Path, step: int, resumable: set[str]
) -> None:
    """Refuse to continue a checkpoint whose run was configured differently (top-level fields
    outside ``resumable``; keys an older checkpoint lacks are not compared), or one already
    past ``cfg.max_steps``."""
    before, now = flat_config(saved), flat_config(to_dict(cfg))
    changed = [
        f"{k} ({before[k]!r} -> {now[k]!r})"
        for k in sorted(before.keys() & now.keys())
        if k.split(".")[0] not in resumable and before[k] != now[k]
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


# ---- the end of a run ------------------------------------------------------------------------


def save_final(policy, out: Path, *, sharded: bool, rank: int) -> Path:
    """Write the policy as it is now to ``out/final`` (model + processor), an ordinary
    transformers checkpoint. With FSDP every process must call it (the full weights are
    gathered); rank 0 writes."""
    state = None
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(policy.model, options=options)
    target = out / FINAL
    if rank == 0:
        tmp = out / f".tmp-{FINAL}"
        if tmp.exists():
            shutil.rmtree(tmp)
        policy.model.save_pretrained(tmp, state_dict=state)
        policy.processor.save_pretrained(tmp)
        old = out / f".old-{FINAL}"  # the previous final/ is moved aside, removed last
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    return target


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
    return "; ".join(parts + probe_summary(rows))


def probe_summary(rows: list[dict[str, Any]]) -> list[str]:
    """Probe accuracy and hallucination rate first -> last probe, and any guard event."""
    parts = []
    probes = [r for r in rows if r.get("probe_accuracy") is not None]
    if probes:
        a, b = probes[0], probes[-1]
        parts.append(
            f"probe accuracy {a['probe_accuracy']:.1%} -> {b['probe_accuracy']:.1%} "
            f"(steps {a['step']} -> {b['step']}), hallucination rate "
            f"{a['hallucination_rate']:.1%} -> {b['hallucination_rate']:.1%}"
        )
    return parts + [r["guard_event"] for r in rows if r.get("guard_event")]


def watch(guard, model, best: dict[str, Any] | None, step: int, probe: dict[str, float]):
    """Feed a probe result to the hallucination guard (:mod:`r1v2.train.guard`); with
    ``action=rollback`` keep a CPU copy of the trainable weights of the best probe, and put them
    back when the guard fires. Returns ``(metrics for the row, best)``; ``best`` is
    ``{"step", "weights"}`` or None. With FSDP every process must call it (weights are
    gathered whole)."""
    from r1v2.train.checkpoint import trainable_state

    decision = guard.update(step, probe)
    if decision.is_best and guard.action == "rollback":
        # clone: on the CPU trainable_state's tensors share the live parameters' storage
        best = {"step": step, "weights": {k: v.clone() for k, v in trainable_state(model).items()}}
    if decision.action == "rollback" and best is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in best["weights"].items():
                param = params[name]
                value = value.to(param.device, param.dtype)
                if hasattr(param, "device_mesh"):  # FSDP2: this process's shard of it
                    from torch.distributed.tensor import distribute_tensor

                    value = distribute_tensor(value, param.device_mesh, param.placements)
                param.copy_(value)
    out: dict[str, Any] = {"guard_streak": float(decision.streak)}
    if decision.fired:
        out["guard_event"] = decision.message
    return out, best


# ---- several processes -----------------------------------------------------------------------

# Config fields that may differ when a run is resumed: they do not change what it computes
# (micro_batch_size only the float summation order). Stages add their own.
RESUMABLE = {
    "max_steps",
    "save_steps",
    "keep_last",
    "resume",
    "overwrite",
    "output_dir",
    "device",
    "progress",
    "tensorboard",
    "wandb_project",
    "nan_patience",
    "probe_data",
    "probe_every",
    "probe_size",
    "micro_batch_size",
}


def gather_lists(values: list[Any], world: int) -> list[Any]:
    """Every process's list, concatenated in process order (the same on every process)."""
    return [v for part in gather_objects(values, world) for v in part]


def gather_objects(obj: Any, world: int) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (one all_gather_object)."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def mean_over_processes(metrics: dict[str, float], accelerator) -> dict[str, float]:
    """Each metric averaged over processes (one all-reduce); as it is with one process."""
    if accelerator.num_processes == 1:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    values = accelerator.reduce(values.to(accelerator.device), reduction="mean").cpu()
    return dict(zip(keys, values.tolist()))


def end_processes() -> None:
    """Leave a multi-process run together: a barrier (so no process exits while another
    still writes), then destroy the process group (a process that exits with it alive can
    abort in its communication threads)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
