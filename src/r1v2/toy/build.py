"""``r1v2 toy build``: the toy world's "pretrained" parts, assembled, plus its data, on a CPU.

Layout of ``--out DIR`` (what ``r1v2 grpo``'s defaults expect with ``--out runs/toy``)::

    DIR/lm/          text-only reasoning LM (Qwen2-shaped) + word tokenizer + chat template
    DIR/vision/      InternViT-style encoder pretrained on per-cell recognition
    DIR/vlm/         vision + adapter + LM assembled by r1v2.model.assemble, adapter warmed up
    DIR/rm/          the reward model trained from DIR/vlm (r1v2.toy.reward)
    DIR/data/train/  RL prompt pool: generate(train_size, seed)
    DIR/data/test/   held-out samples: generate(test_size, seed + 1)
    DIR/build.json   per stage: the hash of what it was built from and its metrics

Every stage is deterministic by seed (same machine, same thread count) and cached: a stage is
skipped when ``build.json`` records it with the same hash (its own settings and the hashes of
the stages it reads) and its output folder exists. Stage sizes are step counts, not seconds,
so the same config gives the same models on any machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from r1v2.config import option
from r1v2.data.synthetic import generate
from r1v2.errors import R1V2Error
from r1v2.model.assemble import assemble
from r1v2.toy.align import warm_up_adapter
from r1v2.toy.lm import train_lm
from r1v2.toy.vision import train_vision

BUILD_FILE = "build.json"
STAGES = ("data", "lm", "vision", "vlm", "rm")


@dataclasses.dataclass
class ToyBuildConfig:
    """``r1v2 toy build``: sizes are step counts (full size: about 4 minutes on 2 CPU cores)."""

    out: str = option("runs/toy", "folder to build into (lm/, vision/, vlm/, rm/, data/)")
    seed: int = option(0, "seed of every stage; the same seed and sizes give the same models")
    levels: list[int] = option(
        [1, 2, 3], "question levels of the LM corpus, the RL prompt pool and the test set"
    )
    train_size: int = option(2000, "samples in the RL prompt pool data/train (seed)")
    test_size: int = option(500, "held-out samples in data/test (seed + 1)")
    lm_steps: int = option(2000, "LM pretraining steps (fresh samples every step)")
    lm_batch_size: int = option(32, "LM pretraining sequences per step")
    lm_lr: float = option(3e-3, "LM peak learning rate (warm-up, then cosine decay)")
    lm_hidden_size: int = option(96, "LM hidden size")
    lm_layers: int = option(2, "LM decoder layers")
    lm_heads: int = option(4, "LM attention heads")
    vision_steps: int = option(80, "vision pretraining steps (per-cell classification)")
    vision_batch_size: int = option(32, "images per vision pretraining step")
    vision_hidden_size: int = option(96, "vision encoder hidden size")
    vision_layers: int = option(3, "vision encoder layers")
    vision_heads: int = option(4, "vision encoder attention heads")
    align_steps: int = option(
        35, "adapter warm-up steps: the knob that sets how well the VLM perceives"
    )
    align_batch_size: int = option(32, "images per adapter warm-up step")
    align_lr: float = option(1e-3, "adapter warm-up peak learning rate")
    rm_pooling: Literal["logprob", "last"] = option(
        "logprob",
        "reward model head: on the mean completion log-probability (logprob) or on the last "
        "token's hidden state (last)",
    )
    rm_steps: int = option(300, "reward model training steps")
    rm_batch_size: int = option(8, "preference pairs per reward model step")
    rm_pairs: int = option(2400, "reward model training pairs")
    rm_eval_pairs: int = option(400, "held-out reward model pairs for its accuracy")
    progress: bool = option(True, "show a progress bar per stage")

    def validate(self) -> None:
        counts = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k.endswith(("_steps", "_size", "_pairs", "_layers", "_heads"))
        }
        bad = [k for k, v in counts.items() if v < 1]
        if bad:
            raise R1V2Error(f"config field(s) {', '.join(bad)} must be >= 1")
        if not self.levels or any(lv not in (1, 2, 3) for lv in self.levels):
            raise R1V2Error(
                f"config field 'levels' must be drawn from [1, 2, 3], got {self.levels}"
            )


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def stage_hashes(cfg: ToyBuildConfig) -> dict[str, str]:
    """Each stage's hash: its own settings plus the hashes of the stages it reads."""
    c = cfg
    data = _hash("data", c.seed, c.levels, c.train_size, c.test_size)
    lm = _hash("lm", c.seed, c.levels, c.lm_steps, c.lm_batch_size, c.lm_lr,
               c.lm_hidden_size, c.lm_layers, c.lm_heads)  # fmt: skip
    vision = _hash("vision", c.seed, c.vision_steps, c.vision_batch_size,
                   c.vision_hidden_size, c.vision_layers, c.vision_heads)  # fmt: skip
    vlm = _hash("vlm", lm, vision, c.seed, c.align_steps, c.align_batch_size, c.align_lr)
    rm = _hash("rm", vlm, c.seed, c.rm_pooling, c.rm_steps, c.rm_batch_size, c.rm_pairs,
               c.rm_eval_pairs)  # fmt: skip
    return {"data": data, "lm": lm, "vision": vision, "vlm": vlm, "rm": rm}


def _read_record(out: Path) -> dict[str, Any]:
    path = out / BUILD_FILE
    if not path.is_file():
        return {"stages": {}}
    try:
        record = json.loads(path.read_text())
    except ValueError as e:
        raise R1V2Error(f"{path}: not valid JSON ({e}); delete it to rebuild") from e
    record.setdefault("stages", {})
    return record


def _write_record(out: Path, record: dict[str, Any]) -> None:
    tmp = out / (BUILD_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    tmp.replace(out / BUILD_FILE)


def build(cfg: ToyBuildConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build (or reuse) every stage into ``cfg.out``; return the ``build.json`` record.

    The record's ``stages`` map each stage to ``{"hash", "built", "metrics"}``; ``built`` is
    True for the stages this call ran (False for the ones reused from the cache).
    """
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    hashes = stage_hashes(cfg)
    record = _read_record(out)
    record["config"] = dataclasses.asdict(cfg)
    stages: dict[str, Any] = record["stages"]
    dirs = {"data": [out / "data" / "train", out / "data" / "test"], "lm": [out / "lm"],
            "vision": [out / "vision"], "vlm": [out / "vlm"], "rm": [out / "rm"]}  # fmt: skip
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "data": lambda: _build_data(cfg, out),
        "lm": lambda: train_lm(
            out / "lm", seed=cfg.seed, steps=cfg.lm_steps, batch_size=cfg.lm_batch_size,
            lr=cfg.lm_lr, hidden_size=cfg.lm_hidden_size, num_layers=cfg.lm_layers,
            num_heads=cfg.lm_heads, levels=cfg.levels, progress=cfg.progress,
        ),
        "vision": lambda: train_vision(
            out / "vision", seed=cfg.seed, steps=cfg.vision_steps,
            batch_size=cfg.vision_batch_size, hidden_size=cfg.vision_hidden_size,
            num_layers=cfg.vision_layers, num_heads=cfg.vision_heads, progress=cfg.progress,
        ),
        "vlm": lambda: _build_vlm(cfg, out),
        "rm": lambda: _build_rm(cfg, out),
    }  # fmt: skip
    for stage in STAGES:
        done = stages.get(stage, {})
        if done.get("hash") == hashes[stage] and all(d.is_dir() for d in dirs[stage]):
            done["built"] = False
            log(f"{stage}: cached ({hashes[stage]})")
            continue
        for d in dirs[stage]:
            if d.exists():
                shutil.rmtree(d)
        start = time.perf_counter()
        metrics = runners[stage]()
        seconds = round(time.perf_counter() - start, 1)
        stages[stage] = {"hash": hashes[stage], "built": True, "seconds": seconds,
                         "metrics": metrics}  # fmt: skip
        _write_record(out, record)
        log(f"{stage}: built in {seconds} s {_brief(metrics)}")
    record["seconds_this_call"] = round(
        sum(s.get("seconds", 0.0) for s in stages.values() if s.get("built")), 1
    )
    _write_record(out, record)
    return record


def _brief(metrics: dict[str, Any]) -> str:
    keys = ("final_loss", "cell_accuracy", "train", "test")
    shown = {k: metrics[k] for k in keys if k in metrics}
    return json.dumps(shown) if shown else ""


def _build_data(cfg: ToyBuildConfig, out: Path) -> dict[str, Any]:
    train = generate(cfg.train_size, cfg.seed, out / "data" / "train", levels=cfg.levels,
                     progress=cfg.progress)  # fmt: skip
    test = generate(cfg.test_size, cfg.seed + 1, out / "data" / "test", levels=cfg.levels,
                    progress=cfg.progress)  # fmt: skip
    return {"train": str(train), "test": str(test)}


def _build_vlm(cfg: ToyBuildConfig, out: Path) -> dict[str, Any]:
    assemble(out / "vision", out / "lm", out / "vlm", seed=cfg.seed, verbose=cfg.progress)
    return warm_up_adapter(
        out / "vlm", seed=cfg.seed, steps=cfg.align_steps, batch_size=cfg.align_batch_size,
        lr=cfg.align_lr, progress=cfg.progress,
    )  # fmt: skip


def _build_rm(cfg: ToyBuildConfig, out: Path) -> dict[str, Any]:
    from r1v2.toy.reward import train_reward_model

    metrics = train_reward_model(
        out / "vlm", out / "rm", seed=cfg.seed, pooling=cfg.rm_pooling, steps=cfg.rm_steps,
        batch_size=cfg.rm_batch_size, n_pairs=cfg.rm_pairs, n_eval=cfg.rm_eval_pairs,
        progress=cfg.progress, log=print if cfg.progress else None,
    )  # fmt: skip
    return json.loads(json.dumps(metrics, default=str))


def run(cfg: ToyBuildConfig) -> int:
    """Build, then say where everything is and how long it took."""
    record = build(cfg)
    out = Path(cfg.out)
    print(f"toy world in {out} ({record['seconds_this_call']} s of building this call)")
    print(
        f"  policy   : {out / 'vlm'}\n  reward   : {out / 'rm'}\n  prompts  : {out / 'data' / 'train'}"
    )
    print(f"  held out : {out / 'data' / 'test'} (measure with `r1v2 toy eval --out {out}`)")
    return 0
