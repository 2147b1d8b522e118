"""engine=compiled on its two KV caches, on the CPU: the dynamic cache (its default there)
against the static one (its default on CUDA, where the step replays as CUDA graphs).

The static cache rounds the batch up to a multiple of 8 rows and the cache length up to a
multiple of 64 tokens, so every decode step has one shape per bucket; on a CPU there are no
graphs to replay, so this measures what the static path costs where it cannot pay off (the
extra rows, attention over the whole bucket's length) and checks that it decodes the same
tokens. The transformers engine runs beside them as the field's baseline.

The model: a random-weight InternVL of the toy's sizes (:func:`r1v2.toy.tiny`), float32. The
workload: 9 prompts (0-2 images each) x G = 8 samples, 48 new tokens, EOS held off so every
completion has every token. Each engine is warmed up (compiled) once, then timed ``repeats``
times in turn (ABC, ABC, ...) on one torch thread; a ratio is taken within one round, so a
machine shared with other jobs moves both sides alike.

Run: ``python bench/static_cache.py`` (about a minute on 2 CPU cores; ``--help``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from r1v2.model.assemble import assemble
from r1v2.model.policy import Policy, SamplingConfig
from r1v2.rollout import CompiledEngine, TransformersEngine
from r1v2.toy.tiny import tiny_llm, tiny_vision

WORDS = "how many red blue circles are there ? 0 1 2 3 <think> </think> A B".split()


def items() -> list[tuple[str, list[Image.Image]]]:
    rng = np.random.default_rng(0)

    def image() -> Image.Image:
        return Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8))

    questions = ["how many blue ?", "how many blue circles are there ?", "3 A B"]
    return [(q, [image() for _ in range(n)]) for n in range(3) for q in questions]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=48)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp())
    vision = tiny_vision(root / "vision", seed=1)
    llm = tiny_llm(WORDS, root / "llm", num_layers=2, seed=2)
    policy = Policy.from_pretrained(assemble(vision, llm, root / "vlm", verbose=False))
    prompts = policy.encode(items())
    sampling = SamplingConfig(max_new_tokens=args.new_tokens)
    policy.model.generation_config.min_new_tokens = args.new_tokens  # EOS held off
    engines = {
        "transformers": TransformersEngine(policy, share_prefix=True),
        "dynamic": CompiledEngine(policy, share_prefix=True, ignore_eos=True, static_cache=False),
        "static": CompiledEngine(policy, share_prefix=True, ignore_eos=True, static_cache=True),
    }
    greedy = SamplingConfig(max_new_tokens=args.new_tokens, do_sample=False)
    first = {
        n: e.generate(prompts, greedy, group_size=8).completion_ids for n, e in engines.items()
    }
    same = torch.equal(first["dynamic"], first["static"])
    print(f"warm-up (compiles), greedy: static = dynamic tokens: {same}", flush=True)
    rates: dict[str, list[float]] = {n: [] for n in engines}
    for _ in range(args.repeats):
        for name, engine in engines.items():
            start = time.perf_counter()
            out = engine.generate(prompts, sampling, group_size=8)
            rates[name].append(int(out.completion_mask.sum()) / (time.perf_counter() - start))
    print("\n| engine | completion tokens/s per round | / dynamic cache, per round |")
    print("|---|---|---|")
    for name, values in rates.items():
        ratios = [v / b for v, b in zip(values, rates["dynamic"])]
        print(
            f"| {name} | {', '.join(f'{v:,.0f}' for v in values)} | "
            f"{', '.join(f'{r:.2f}x' for r in ratios)} (mean {np.mean(ratios):.2f}x) |"
        )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
