"""Prefix sharing: ``r1v2 grpo`` steps with ``share_prefix`` on and off, on the toy VLM.

``share_prefix`` runs each prompt through the LLM once for its G samples: generation prefills
it once and expands its KV cache, the update (and the reference's log-probs) scores the
completions of a micro-batch against one forward of each of its prompts. This script trains
the same model on the same prompts with it on and off and prints where the step's time goes
(the ``generation_seconds`` and ``step_seconds`` every run logs) for two prompt shapes:

- ``toy``: the toy's prompts, one 64 px image (one tile, 16 image tokens) and the question
  (31-57 prompt tokens);
- ``long``: four images (4 tiles, 64 image tokens) and the scene written out before the
  question (about 130-160 prompt tokens), where real VLM prompts (hundreds of image tokens)
  live.

The model: a random-weight InternVL of the toy's sizes (vision 96 wide, 3 layers, 4 heads,
64 px images, patch 8; LLM 96 wide, 2 layers, 4 heads, the synthetic task's word
vocabulary; :func:`r1v2.toy.tiny`), float32, on the CPU. Random weights seldom emit EOS, so
nearly every completion runs to ``max_new_tokens``. GRPO settings: 8 prompts x G = 8, 64 new
tokens, micro-batches of 16, adapter-only training (the default: gradients reach the adapter
through the image tokens, so the update needs the prompt's graph), KL against the reference
(its no-grad log-probs are shared too), the Selective Sample Buffer as by default. Both
settings draw the same rollouts (same seed, same random draws), so they do the same work.

Each run trains ``warmup + steps`` steps (the first ``warmup`` untimed); ``repeats`` runs per
setting in ABBA order (on, off, off, on, ...); the means are over all timed steps. One torch
thread: on a machine shared with other jobs only ratios measured in one run mean anything.

Run: ``python bench/prefix_sharing.py`` (about 3 minutes on 2 CPU cores; ``--help``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch

SETTINGS = {
    "steps": 4,
    "warmup": 1,
    "prompts_per_step": 8,
    "group_size": 8,
    "max_new_tokens": 64,
    "micro_batch_size": 16,
    "seed": 0,
}
SHAPES = {"toy": {"images": 1, "scene_text": False}, "long": {"images": 4, "scene_text": True}}


def build_model(root: Path, seed: int) -> Path:
    """A random InternVL of the toy's sizes (see the module docstring)."""
    from r1v2.data.synthetic import vocabulary
    from r1v2.model.assemble import assemble
    from r1v2.toy.tiny import tiny_llm, tiny_vision

    vision = tiny_vision(
        root / "vision", image_size=64, patch_size=8, hidden_size=96, num_layers=3, num_heads=4
    )
    llm = tiny_llm(vocabulary(), root / "llm", hidden_size=96, num_layers=2, num_heads=4)
    return assemble(vision, llm, root / "vlm", seed=seed, verbose=False)


def build_data(
    root: Path, seed: int, *, n: int = 64, choice_fraction: float | None = None
) -> dict[str, Path]:
    """Folders of ``n`` synthetic samples per shape: the toy's prompts, and the long-prompt
    variant of the same samples (same images, each given ``images`` times, the scene written
    out before the question). ``choice_fraction``: share of multiple-choice questions (None:
    the toy's)."""
    from r1v2.data.synthetic import generate, scene_text

    base = root / "data-toy"
    kw = {} if choice_fraction is None else {"choice_fraction": choice_fraction}
    generate(n, seed, base, **kw)
    out = {"toy": base}
    for name, shape in SHAPES.items():
        if name == "toy":
            continue
        folder = root / f"data-{name}"
        folder.mkdir()
        (folder / "images").symlink_to((base / "images").resolve())
        lines = []
        for line in (base / "samples.jsonl").read_text().splitlines():
            record = json.loads(line)
            record["images"] = record["images"] * shape["images"]
            if shape["scene_text"]:
                scene = scene_text(record["metadata"]["scene"])
                record["question"] = f"{scene} {record['question']}"
            lines.append(json.dumps(record))
        (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")
        out[name] = folder
    return out


def run_grpo(model: Path, data: Path, out: Path, share: bool, s: dict) -> list[dict]:
    """Train; returns the timed steps' metrics rows."""
    from r1v2.config import resolve
    from r1v2.train.grpo import GRPOConfig, train
    from r1v2.train.metrics import read_metrics

    cfg = resolve(
        GRPOConfig,
        None,
        [
            ("model", str(model)),
            ("data", str(data)),
            ("output_dir", str(out)),
            ("max_steps", s["warmup"] + s["steps"]),
            ("save_steps", 10**9),
            ("resume", "never"),
            ("device", "cpu"),
            ("seed", s["seed"]),
            ("prompts_per_step", s["prompts_per_step"]),
            ("group_size", s["group_size"]),
            ("generation.max_new_tokens", s["max_new_tokens"]),
            ("micro_batch_size", s["micro_batch_size"]),
            ("share_prefix", share),
            ("tensorboard", False),
            ("progress", False),
        ],
    )
    train(cfg)
    return read_metrics(out)[s["warmup"] :]


def prompt_tokens(model: Path, data: Path) -> float:
    """Mean prompt length in tokens (image tokens included) over the data set."""
    from r1v2.data import load_samples
    from r1v2.model.policy import Policy

    policy = Policy.from_pretrained(model)
    samples = load_samples(data).samples
    return float(policy.encode(samples).attention_mask.sum(dim=1).float().mean())


def mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=SETTINGS["steps"], help="timed steps per run")
    p.add_argument("--repeats", type=int, default=2, help="runs per setting, ABBA order")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--max-new-tokens", type=int, default=SETTINGS["max_new_tokens"])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    a = p.parse_args(argv)
    s = dict(SETTINGS, steps=a.steps, max_new_tokens=a.max_new_tokens)
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    table = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_model(root, s["seed"])
        data = build_data(root, s["seed"])
        for shape in a.shapes:
            rows: dict[bool, list[dict]] = {True: [], False: []}
            for i in range(a.repeats):
                order = (True, False) if i % 2 == 0 else (False, True)
                for share in order:
                    out = root / f"{shape}-{share}-{i}"
                    rows[share] += run_grpo(model, data[shape], out, share, s)
            table.append((shape, prompt_tokens(model, data[shape]), rows))

    print()
    print(
        f"share_prefix on vs off, r1v2 grpo on a toy-sized random InternVL; torch "
        f"{torch.__version__}, CPU, {torch.get_num_threads()} thread(s)"
    )
    print("settings: " + ", ".join(f"{k}={v}" for k, v in s.items()) + f", repeats={a.repeats}")
    head = (
        f"{'shape':<6} {'prompt tok':>10} {'completion tok':>14} "
        f"{'generation s off/on':>20} {'x':>5} {'rest of step s off/on':>22} {'x':>5} "
        f"{'step s off/on':>14} {'x':>5}"
    )
    print(head)
    for shape, tokens, rows in table:
        off, on = rows[False], rows[True]
        gen = mean(off, "generation_seconds"), mean(on, "generation_seconds")
        step = mean(off, "step_seconds"), mean(on, "step_seconds")
        rest = step[0] - gen[0], step[1] - gen[1]
        print(
            f"{shape:<6} {tokens:>10.1f} {mean(on, 'response_length_mean'):>14.1f} "
            f"{gen[0]:>9.3f} / {gen[1]:>8.3f} {gen[0] / gen[1]:>5.2f} "
            f"{rest[0]:>10.3f} / {rest[1]:>9.3f} {rest[0] / rest[1]:>5.2f} "
            f"{step[0]:>6.3f} / {step[1]:>5.3f} {step[0] / step[1]:>5.2f}"
        )
    print(
        "rest of step: rewards, the reference's log-probs and the update (forward + backward); "
        "x = off / on (speed-up of sharing)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
