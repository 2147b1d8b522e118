"""The family table: every supported vision-language family through r1v2, end to end.

For each family a tiny random checkpoint is built offline (:mod:`r1v2.toy.families`), then:

- ``logprob err``: the largest gap between r1v2's per-token log-probs and transformers' own
  forward of each sample alone (3 prompts: one image, text only, two images of different
  sizes; G = 2, left padding, micro-batches of 4; prefix sharing off and on, the larger);
- ``greedy``: whether greedy completions equal ``model.generate``'s (engine=transformers and
  engine=compiled's decode loop, eager, prefix sharing off and on);
- ``grpo``, ``mpo``, ``eval``, ``chat``, ``export``: the commands a user runs, each as a
  subprocess (``r1v2 grpo`` 2 steps of 2 prompts x G = 2 on the synthetic task; ``r1v2 mpo``
  2 steps on offline pairs; ``r1v2 eval`` on 4 synthetic samples; ``r1v2 chat`` one question
  about an image; ``r1v2 export`` of the GRPO run), ``ok`` with its seconds or the error's
  last line.

Run: ``python bench/families.py`` (about 3 minutes on 2 CPU cores; ``--families`` to pick).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from r1v2.model.families import BY_MODEL_TYPE
from r1v2.model.policy import Policy, Prompt, SamplingConfig
from r1v2.rollout.compiled import CompiledEngine
from r1v2.rollout.engine import TransformersEngine
from r1v2.toy.families import BUILDERS, build_family, reference_greedy, reference_logprobs

G = 2


def prompts() -> list[Prompt]:
    rng = np.random.default_rng(0)

    def image(h, w):
        return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))

    return [
        Prompt("how many shapes ?", (image(32, 48),)),
        Prompt("what is the answer ?"),
        Prompt("how many red circles are there ?", (image(40, 32), image(64, 48))),
    ]


def exactness(path: Path) -> tuple[float, bool]:
    """(largest log-prob gap to transformers' forward, greedy equal to model.generate)."""
    policy = Policy.from_pretrained(path)
    policy.model.float()
    items = prompts()
    batch = policy.encode(items)
    words = policy.tokenizer.convert_tokens_to_ids("the answer is red blue one".split())
    gen = torch.Generator().manual_seed(0)
    ids = torch.tensor(words)[torch.randint(0, len(words), (len(items) * G, 7), generator=gen)]
    mask = torch.arange(7)[None] < torch.tensor([7, 5, 6, 7, 3, 7])[:, None]
    with torch.no_grad():
        want = reference_logprobs(policy, items, ids, mask, G)
        err = max(
            float((policy.logprobs(batch, ids, mask, group_size=G, micro_batch_size=4,
                                   share_prefix=share) - want).abs().max())
            for share in (False, True)
        )  # fmt: skip
    greedy = SamplingConfig(max_new_tokens=8, do_sample=False)
    ref = reference_greedy(policy, items, 8)
    same = True
    for share in (False, True):
        compiled = CompiledEngine(policy, share_prefix=share)
        compiled.failed = "eager here"
        for engine in (TransformersEngine(policy, share_prefix=share), compiled):
            out = engine.generate(items, greedy, group_size=1)
            got = [r[m].tolist() for r, m in zip(out.completion_ids, out.completion_mask)]
            same &= all(g == r[: len(g)] for g, r in zip(got, ref))
    return err, same


def run(args: list[str], cwd: Path) -> str:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "r1v2", *args], cwd=cwd, capture_output=True, text=True
    )
    if proc.returncode == 0:
        return f"ok {time.perf_counter() - start:.0f}s"
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return f"exit {proc.returncode}: {lines[-1][:120] if lines else ''}"


def commands(path: Path, work: Path, data: Path, pairs: Path) -> dict[str, str]:
    common = ["progress=false", "tensorboard=false", "generation.max_new_tokens=8"]
    out = {}
    out["grpo"] = run(
        ["grpo", f"model={path}", f"data={data}", f"output_dir={work / 'grpo'}", "max_steps=2",
         "prompts_per_step=2", "group_size=2", *common],
        work,
    )  # fmt: skip
    out["mpo"] = run(
        ["mpo", f"model={path}", f"data={pairs}", f"output_dir={work / 'mpo'}", "max_steps=2",
         "micro_batch_size=2", "progress=false", "tensorboard=false"],
        work,
    )  # fmt: skip
    out["eval"] = run(
        ["eval", "--model", str(path), "--bench", f"samples={data}", "--runs", "1", "--limit",
         "4", "--max-new-tokens", "8", "--out", str(work / "eval"), "--device", "cpu"],
        work,
    )  # fmt: skip
    image = sorted((data / "images").glob("*.png"))[0]
    out["chat"] = run(
        ["chat", "how many shapes ?", "--model", str(path), "--image", str(image),
         "--max-new-tokens", "8", "--device", "cpu"],
        work,
    )  # fmt: skip
    out["export"] = run(
        ["export", "--checkpoint", str(work / "grpo"), "--out", str(work / "export")], work
    )
    return out


def write_pairs(data: Path, out: Path) -> Path:
    """One offline pair per synthetic sample: the right boxed answer over a wrong one."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "pairs.jsonl", "w") as f:
        for line in (data / "samples.jsonl").read_text().splitlines():
            s = json.loads(line)
            image = str((data / s["images"][0]).resolve())
            right, wrong = s["answer"], "0" if s["answer"] != "0" else "1"
            f.write(json.dumps({
                "question": s["question"], "image": image,
                "chosen": f"so the answer is \\boxed{{{right}}}",
                "rejected": f"so the answer is \\boxed{{{wrong}}}",
            }) + "\n")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="*", default=list(BUILDERS), choices=list(BUILDERS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        subprocess.run(
            [sys.executable, "-m", "r1v2", "data", "synth", f"--out={data}", "--n=8"],
            check=True, capture_output=True,
        )  # fmt: skip
        pairs = write_pairs(data, root / "pairs")
        rows = []
        for name in args.families:
            path = build_family(name, root / name)
            err, same = exactness(path)
            work = root / f"work-{name}"
            work.mkdir()
            family = BY_MODEL_TYPE[name].name
            rows.append([family, name, f"{err:.1e}", "equal" if same else "DIFFERS",
                         *commands(path, work, data, pairs).values()])  # fmt: skip
            print(" | ".join(rows[-1]), flush=True)
    head = ["family", "model_type", "logprob err", "greedy", "grpo", "mpo", "eval", "chat",
            "export"]  # fmt: skip
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
