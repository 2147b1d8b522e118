"""Where GRPO has something to learn on the toy world: MPO on the pairs of some prompts, then
GRPO on a pool of other, verifiable prompts, each model scored per level and question kind.

On a toy build (``r1v2 toy build --out TOY seed=S``):

1. ``pairs``: the toy's offline pairs (``TOY/data/pairs``) of the prompts at ``--pair-levels``
   only (references exist for the easier questions, as in practice);
2. ``mpo``: ``r1v2 mpo`` from ``TOY/vlm`` on those pairs, with the demo's MPO settings;
3. ``solve``: the MPO model's per-prompt solve rate on the GRPO pool (``--k`` rollouts of the
   first 200 prompts, GRPO's own reward): the share of prompts solved in every rollout, in
   none, and in some (the mixed groups GRPO learns from);
4. ``grpo``: ``r1v2 grpo`` from the MPO model on the pool: the training prompts of
   ``--pool-levels`` and ``--pool-kinds`` (answers only), the demo's GRPO settings with
   ``--trainable``, ``--lr`` and any ``--grpo-set KEY=VALUE``;
5. greedy accuracy and hallucination rate of the assembled, MPO and GRPO models on the 500
   held-out samples, per level (those the toy was built with: ``r1v2 toy build
   levels=[1,2,3,4]`` adds level 4) and per kind (numeric / multiple choice).

Run: ``python bench/toy_headroom.py --toy runs/toy --out runs/headroom`` (about 6 minutes on
2 CPU cores after the toy build; ``--help``). It prints one JSON line per measurement and
writes them all to ``OUT/headroom.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def write_pairs(toy: Path, out: Path, levels: list[int]) -> int:
    """The toy's pairs of ``levels`` (references exist for the easier questions)."""
    from r1v2.toy.split import rows_of_levels, write_rows

    keep = rows_of_levels(toy / "data/pairs/pairs.jsonl", levels)
    write_rows(keep, out / "pairs.jsonl")
    return len(keep)


def write_pool(
    toy: Path, out: Path, levels: list[int], kinds: list[str], math_cap: int | None = None
) -> int:
    """The training prompts of ``levels`` and ``kinds`` (at most ``math_cap`` numeric ones)."""
    from r1v2.toy.split import rows_of_levels, write_rows

    keep = [
        r for r in rows_of_levels(toy / "data/train/samples.jsonl", levels) if r["kind"] in kinds
    ]
    if math_cap is not None:
        numeric = [r["id"] for r in keep if r["kind"] == "math"]
        drop = set(numeric[math_cap:])
        keep = [r for r in keep if r["id"] not in drop]
    write_rows(keep, out / "samples.jsonl")
    return len(keep)


def scores(toy: Path, model: Path, n: int = 500) -> dict[str, list]:
    """Greedy [accuracy, hallucination rate, samples] per level, per kind and overall, from
    one generation over the held-out samples."""
    from r1v2.eval.greedy import grade, greedy_texts
    from r1v2.model.policy import Policy
    from r1v2.train.stage import load_pool

    samples = load_pool(str(toy / "data" / "test"))[:n]
    with torch.inference_mode():
        texts = greedy_texts(Policy.from_pretrained(model), samples, max_new_tokens=128)
    tags = [{"all", s.kind, f"level {s.metadata['level']}"} for s in samples]
    out = {}
    for name in ("level 1", "level 2", "level 3", "level 4", "math", "choice", "all"):
        rows = [(t, s) for t, s, tag in zip(texts, samples, tags) if name in tag]
        if not rows:  # a level the toy was not built with
            continue
        g = grade([t for t, _ in rows], [s.answer for _, s in rows],
                  [s.choices for _, s in rows], [s.metadata["scene"] for _, s in rows])  # fmt: skip
        out[name] = [round(g["accuracy"], 3), round(g["hallucination_rate"], 3), len(rows)]
    return out


def solve_rate(toy: Path, model: Path, pool: Path, k: int, seed: int) -> dict[str, float]:
    from r1v2.config import resolve
    from r1v2.train.prefilter import PrefilterConfig, score_prompts
    from r1v2.train.stage import load_pool

    values = [f"model={model}", f"data={pool}", f"reward.rm_path={toy / 'rm'}", f"seed={seed}"]
    values += [f"k={k}", "progress=false", f"out={pool.parent / 'prefilter.jsonl'}"]
    cfg = resolve(PrefilterConfig, None, values)
    accs = [acc or 0.0 for _, _, acc in score_prompts(cfg, load_pool(str(pool))[:200])]
    share = lambda ok: round(sum(map(ok, accs)) / len(accs), 3)  # noqa: E731
    return {
        "mean_accuracy": share(lambda a: a),
        "all": share(lambda a: a == 1),
        "none": share(lambda a: a == 0),
        "mixed": share(lambda a: 0 < a < 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--toy", type=Path, required=True, help="a toy build (r1v2 toy build)")
    p.add_argument("--out", type=Path, required=True, help="folder for the runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pair-levels", default="1,2", help="levels of the MPO pairs")
    p.add_argument("--pool-levels", default="1,2,3", help="levels of the GRPO pool")
    p.add_argument("--pool-kinds", default="choice", help="kinds of the GRPO pool (math,choice)")
    p.add_argument("--math-cap", type=int, default=None, help="at most this many numeric prompts")
    p.add_argument("--trainable", default="llm+adapter", help="GRPO's trainable")
    p.add_argument("--lr", type=float, default=3e-5, help="GRPO's peak learning rate")
    p.add_argument("--steps", type=int, default=250, help="GRPO steps")
    p.add_argument("--kl", type=float, default=None, help="GRPO's kl_coef (default: GRPO's own)")
    p.add_argument(
        "--grpo-set", action="append", default=[], metavar="KEY=VALUE",
        help="another GRPO setting (repeatable), e.g. ssb.enabled=false",
    )  # fmt: skip
    p.add_argument("--k", type=int, default=8, help="rollouts per prompt for the solve rate")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    args = p.parse_args()
    from r1v2.cli import main as r1v2

    if args.threads:
        torch.set_num_threads(args.threads)
    levels = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    toy, out = args.toy, args.out
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}}

    def say(key: str, value) -> None:
        report[key] = value
        print(json.dumps({key: value}), flush=True)

    say("pairs", write_pairs(toy, out / "pairs", levels(args.pair_levels)))
    say(
        "pool",
        write_pool(
            toy, out / "pool", levels(args.pool_levels), args.pool_kinds.split(","), args.math_cap
        ),
    )
    common = [f"seed={args.seed}", f"probe_data={toy / 'data/test'}", "progress=false"]
    common += ["tensorboard=false", "overwrite=true", "guard.action=rollback"]
    common += ["optim.schedule=cosine", "optim.warmup_steps=10", "probe_size=100"]
    start = time.perf_counter()
    mpo = [f"model={toy / 'vlm'}", f"data={out / 'pairs'}", f"output_dir={out / 'mpo'}"]
    mpo += [f"rm_path={toy / 'rm'}", "max_steps=180", "optim.lr=5e-4", "loss.beta=0.01"]
    if r1v2(["mpo", *mpo, "probe_every=10", "save_steps=10", *common]) != 0:
        raise SystemExit("r1v2 mpo failed")
    say("mpo_seconds", round(time.perf_counter() - start, 1))
    say("solve_rate", solve_rate(toy, out / "mpo/final", out / "pool", args.k, args.seed))
    start = time.perf_counter()
    grpo = [f"model={out / 'mpo/final'}", f"data={out / 'pool'}", f"output_dir={out / 'grpo'}"]
    grpo += [f"reward.rm_path={toy / 'rm'}", f"max_steps={args.steps}", f"optim.lr={args.lr}"]
    grpo += [f"trainable={args.trainable}", "probe_every=25", "save_steps=25"]
    grpo += [] if args.kl is None else [f"kl_coef={args.kl}"]
    grpo += args.grpo_set
    if r1v2(["grpo", *grpo, *common]) != 0:
        raise SystemExit("r1v2 grpo failed")
    say("grpo_seconds", round(time.perf_counter() - start, 1))
    for name, model in (("assembled", toy / "vlm"), ("mpo", out / "mpo/final")):
        say(name, scores(toy, model))
    say("grpo", scores(toy, out / "grpo/final"))
    (out / "headroom.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
