"""``r1v2 toy build``: the toy world's "pretrained" parts, assembled, plus its data, on a CPU.

Layout of ``--out DIR`` (what ``r1v2 grpo``'s defaults expect with ``--out runs/toy``)::

    DIR/lm/          text-only reasoning LM (Qwen2-shaped) + word tokenizer + chat template
    DIR/vision/      InternViT-style encoder pretrained on per-cell recognition
    DIR/vlm/         vision + adapter + LM assembled by r1v2.model.assemble, adapter warmed up
    DIR/rm/          the reward model trained from DIR/vlm (r1v2.toy.reward)
    DIR/data/train/  RL prompt pool: generate(data.train_size, seed)
    DIR/data/test/   held-out samples: generate(data.test_size, seed + 1)
    DIR/data/pairs/  offline MPO pairs of the pool's prompts: reference vs hallucinated trace
    DIR/build.json   per stage: the hash of what it was built from and its metrics

Every stage is deterministic by seed (same machine, same thread count) and cached: a stage is
skipped when ``build.json`` records it with the same hash (its own config section, the shared
settings it uses and the hashes of the stages it reads) and its output folder exists. Stage sizes are step counts, not seconds,
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
from typing import Any

from r1v2.config import option
from r1v2.data.synthetic import generate
from r1v2.data.synthetic.generate import LEVELS
from r1v2.errors import R1V2Error
from r1v2.fsutil import write_atomic
from r1v2.model.assemble import assemble
from r1v2.toy.align import AlignConfig, warm_up_adapter
from r1v2.toy.common import check_at_least_one
from r1v2.toy.lm import LMConfig, train_lm
from r1v2.toy.pairs import write_reference_pairs
from r1v2.toy.reward import RewardModelConfig, train_reward_model
from r1v2.toy.vision import VisionConfig, train_vision

BUILD_FILE = "build.json"
STAGES = ("data", "pairs", "lm", "vision", "vlm", "rm")


@dataclasses.dataclass
class DataConfig:
    """Stage 0 (``data.*`` of ``r1v2 toy build``): the RL prompt pool and the held-out set."""

    train_size: int = option(2000, "samples in the RL prompt pool data/train (seed)")
    test_size: int = option(500, "held-out samples in data/test (seed + 1)")

    def validate(self, prefix: str = "") -> None:
        check_at_least_one(self, ("train_size", "test_size"), prefix)


@dataclasses.dataclass
class ToyBuildConfig:
    """``r1v2 toy build``: sizes are step counts (full size: about 7 minutes on 2 CPU cores).

    Each stage's settings are a section of their own (``lm.steps=2000``), the config its stage
    function takes; ``seed``, ``levels`` and ``progress`` are shared.
    """

    out: str = option("runs/toy", "folder to build into (lm/, vision/, vlm/, rm/, data/)")
    seed: int = option(0, "seed of every stage; the same seed and sizes give the same models")
    levels: list[int] = option(
        [1, 2, 3],
        "question levels of the LM corpus, the RL prompt pool and the test set (1-4: 4 asks "
        "about four groups)",
    )
    data: DataConfig = option(DataConfig(), "the RL prompt pool and the held-out test set")
    lm: LMConfig = option(LMConfig(), "LM pretraining on text traces (stage lm/)")
    vision: VisionConfig = option(
        VisionConfig(), "vision encoder pretraining on per-cell recognition (stage vision/)"
    )
    align: AlignConfig = option(
        AlignConfig(), "adapter warm-up of the assembled VLM, vision and LM frozen (stage vlm/)"
    )
    rm: RewardModelConfig = option(
        RewardModelConfig(), "reward model trained from the VLM (stage rm/)"
    )
    progress: bool = option(True, "show a progress bar per stage")

    def validate(self) -> None:
        for name in ("data", "lm", "vision", "align", "rm"):
            getattr(self, name).validate(prefix=f"{name}.")
        if not self.levels or any(lv not in LEVELS for lv in self.levels):
            raise R1V2Error(
                f"config field 'levels' must be drawn from {list(LEVELS)}, got {self.levels}"
            )


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def stage_hashes(cfg: ToyBuildConfig) -> dict[str, str]:
    """Each stage's hash: its own config, the shared settings it uses and the hashes of the
    stages it reads."""
    c, asdict = cfg, dataclasses.asdict
    data = _hash("data", c.seed, c.levels, asdict(c.data))
    pairs = _hash("pairs", data)
    lm = _hash("lm", c.seed, c.levels, asdict(c.lm))
    vision = _hash("vision", c.seed, asdict(c.vision))
    vlm = _hash("vlm", lm, vision, c.seed, asdict(c.align))
    rm = _hash("rm", vlm, c.seed, asdict(c.rm))
    return {"data": data, "pairs": pairs, "lm": lm, "vision": vision, "vlm": vlm, "rm": rm}


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
    write_atomic(out / BUILD_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")


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
    dirs = {
        "data": [out / "data" / "train", out / "data" / "test"],
        "pairs": [out / "data" / "pairs"],
        "lm": [out / "lm"],
        "vision": [out / "vision"],
        "vlm": [out / "vlm"],
        "rm": [out / "rm"],
    }
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "data": lambda: _build_data(cfg, out),
        "pairs": lambda: write_reference_pairs(
            out / "data" / "train",
            out / "data" / "pairs",
            cfg.data.train_size,
            seed=cfg.seed,
            levels=cfg.levels,
        ),
        "lm": lambda: train_lm(
            out / "lm", cfg.lm, seed=cfg.seed, levels=cfg.levels, progress=cfg.progress
        ),
        "vision": lambda: train_vision(
            out / "vision", cfg.vision, seed=cfg.seed, progress=cfg.progress
        ),
        "vlm": lambda: _build_vlm(cfg, out),
        "rm": lambda: _build_rm(cfg, out),
    }
    for stage in STAGES:
        done = stages.get(stage, {})
        if done.get("hash") == hashes[stage] and all(d.is_dir() for d in dirs[stage]):
            done["built"] = False
            log(f"{stage}: cached ({hashes[stage]})")
            continue
        for d in dirs[stage]:
            if d.exists():
                if stage not in stages:  # not built (nor begun) by a toy build here: keep it
                    raise R1V2Error(
                        f"{d} exists but {out / BUILD_FILE} does not record building it: "
                        "move it away or give another out="
                    )
                shutil.rmtree(d)
        stages[stage] = {"begun": hashes[stage]}  # no "hash" until it is done: never cached
        _write_record(out, record)  # its folders are ours from here, even if this call dies
        start = time.perf_counter()
        metrics = runners[stage]()
        seconds = round(time.perf_counter() - start, 1)
        stages[stage] = {
            "hash": hashes[stage],
            "built": True,
            "seconds": seconds,
            "metrics": metrics,
        }
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
    kw = {"levels": cfg.levels, "progress": cfg.progress}
    train = generate(cfg.data.train_size, cfg.seed, out / "data" / "train", **kw)
    test = generate(cfg.data.test_size, cfg.seed + 1, out / "data" / "test", **kw)
    return {"train": str(train), "test": str(test)}


def _build_vlm(cfg: ToyBuildConfig, out: Path) -> dict[str, Any]:
    assemble(out / "vision", out / "lm", out / "vlm", seed=cfg.seed, verbose=cfg.progress)
    return warm_up_adapter(out / "vlm", cfg.align, seed=cfg.seed, progress=cfg.progress)


def _build_rm(cfg: ToyBuildConfig, out: Path) -> dict[str, Any]:
    metrics = train_reward_model(
        out / "vlm",
        out / "rm",
        cfg.rm,
        seed=cfg.seed,
        progress=cfg.progress,
        log=print if cfg.progress else None,
    )
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
