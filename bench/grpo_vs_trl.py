"""GRPO throughput: r1v2's trainer against TRL's ``GRPOTrainer``, same model, data and settings.

Two paths, each with both trainers, one after the other in this process:

- ``text``: a tiny random ``Qwen2ForCausalLM`` (word-level tokenizer over the synthetic task's
  vocabulary, built by :func:`r1v2.toy.tiny.tiny_llm`, 64 wide, 2 layers); the prompts are
  synthetic samples as text only (the scene in words, then the question).
- ``vlm``: TRL's vision-language path (an ``images`` column, the model's ``AutoProcessor``)
  against ``r1v2 grpo`` on a random-weight InternVL of the toy's sizes (vision 96 wide, 3
  layers, 64 px images, 16 image tokens each; LLM 96 wide, 2 layers; built as in
  ``bench/prefix_sharing.py``), at two prompt shapes: ``toy`` (one image and the question,
  about 30 prompt tokens) and ``long`` (four images and the scene written out before the
  question, about 100). The script checks that both trainers render the same prompt tokens.

On each path both trainers get

- the same model and the same prompts, rendered by the same chat template,
- the same group size G, prompts per step, max new tokens, sampling (temperature 1, no top-p/k),
  KL coefficient (k3 estimator against a frozen reference), clipping, one policy-update
  iteration per batch, AdamW at a constant learning rate, and
- the same reward: accuracy (``r1v2.rewards.accuracy_reward``) + format
  (``r1v2.rewards.format_reward``), weights 1 and 1, as in r1v2's hybrid reward without a
  reward model.

Every weight trains in both (TRL's default; r1v2 ``trainable=all``). r1v2 runs once per
rollout engine of ``--engines`` (default: ``transformers``, its default, and ``compiled``,
the same prefill and a sampling loop whose decode step runs through ``torch.compile``), each
against the same TRL runs (TRL's defaults: transformers ``generate`` with a dynamic cache;
its ``cache_implementation="static"`` lets transformers compile decoding on a GPU, not on a
CPU by default), with r1v2's defaults otherwise (``share_prefix`` on: each prompt runs
through the LLM once per group, in generation and in the update); its Selective Sample
Buffer is switched off (TRL has no counterpart; it would only reorder which samples are
trained on, not how many). The questions have no lettered choices, so both score answers the
same way.

Each trainer runs ``warmup + steps`` optimizer steps per run (``--steps`` on the text path,
``--vlm-steps`` on the vision-language one), ``repeats`` runs each, the order reversed every
other repeat (r1v2 engines, TRL, then TRL, r1v2 engines, ...); the first ``warmup`` steps are
not timed (they hold the compile of ``engine=compiled``, whose cost shows in the run's wall
time, ``run s``). A step's time is the trainer's own step (rollouts, rewards, advantages,
reference and policy log-probs, backward, optimizer step), without logging or checkpoints:
r1v2's ``step_seconds`` metric, and for TRL the time from ``on_step_begin`` to
``on_step_end``. Completions/s is ``prompts_per_step * G`` times the timed steps, over their
summed times; generated tokens/s is that times the mean completion length (random weights
sample different lengths in the two trainers). The ratio is given over all timed steps and
per repeat (mean +- std of each repeat's ratio: the runs of a repeat ran side by side, and a
shared machine's speed drifts by tens of percent between repeats). Torch uses one CPU thread
by default: on a machine shared with other jobs, two threads on two busy cores made every
step tens of times slower for both trainers.

Run: ``python bench/grpo_vs_trl.py`` (about 7 minutes on 2 CPU cores; ``--paths text`` alone
takes two; ``--help`` for options). Needs ``trl`` (``pip install trl==1.16.0``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch

# Every setting both trainers read. The command line overrides the first five.
SETTINGS = {
    "steps": 20,  # timed optimizer steps per run, text path
    "vlm_steps": 10,  # timed optimizer steps per run, vision-language path
    "warmup": 1,  # untimed optimizer steps before them
    "prompts_per_step": 4,
    "group_size": 8,  # G
    "max_new_tokens": 64,
    "kl_coef": 0.001,  # beta; k3 estimator against a frozen copy of the initial model
    "clip": 0.2,  # epsilon_low = epsilon_high
    "ppo_epochs": 1,  # mu
    "lr": 1e-5,
    "max_grad_norm": 1.0,
    "temperature": 1.0,
    "seed": 0,
    "pool": 64,  # distinct prompts in the data set
    # the text path's model (the vision-language one has the toy's sizes)
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 2,
}
SHAPES = ("toy", "long")  # prompt shapes of the vision-language path (bench/prefix_sharing.py)


# ---- shared inputs ---------------------------------------------------------------------------


def build_inputs(root: Path, s: dict) -> tuple[Path, Path, list]:
    """The tiny model and the text-only samples: (model dir, samples JSONL, samples)."""
    from r1v2.data import Sample, write_jsonl
    from r1v2.data.synthetic import iter_samples, scene_text, vocabulary
    from r1v2.toy.tiny import tiny_llm

    model_dir = tiny_llm(
        vocabulary(),
        root / "model",
        hidden_size=s["hidden_size"],
        num_layers=s["num_layers"],
        num_heads=s["num_heads"],
        seed=s["seed"],
    )
    samples = [
        Sample(x.id, scene_text(x.scene) + " " + x.question.text, (), x.answer, kind="math")
        for x in iter_samples(s["pool"], seed=s["seed"], choice_fraction=0.0)
    ]
    data = write_jsonl(samples, root / "data" / "samples.jsonl")
    return model_dir, data, samples


def build_vlm_inputs(root: Path, s: dict) -> tuple[Path, dict[str, Path]]:
    """The toy-sized InternVL and one data folder per prompt shape (no lettered choices)."""
    from prefix_sharing import build_data, build_model  # bench/, the script's own folder

    model_dir = build_model(root / "vlm", s["seed"])
    data = build_data(root / "vlm", s["seed"], n=s["pool"], choice_fraction=0.0)
    return model_dir, data


def check_same_prompts(model_dir: Path, samples: list, vlm: bool) -> float:
    """Both trainers' prompt tokens for the first samples are equal; returns the mean prompt
    length (tokens, image tokens included) over ``samples``."""
    from trl.data_utils import prepare_multimodal_messages

    from r1v2.model.policy import Policy

    policy = Policy.from_pretrained(model_dir)
    batch = policy.encode(samples)
    processor = policy.processor
    for i, x in enumerate(samples[:4]):
        ours = batch.input_ids[i][batch.attention_mask[i]].tolist()
        messages = [{"role": "user", "content": x.question}]
        if vlm:
            messages = prepare_multimodal_messages(messages, x.open_images())
        theirs = processor.apply_chat_template(
            conversation=[messages], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"][0]
        if ours != list(theirs):
            raise SystemExit(f"sample {x.id}: r1v2 and TRL render different prompt tokens")
    return float(batch.attention_mask.sum(dim=1).float().mean())


# ---- r1v2 ------------------------------------------------------------------------------------


def timed_steps(s: dict, vlm: bool) -> int:
    """Timed steps per run on the path."""
    return s["vlm_steps"] if vlm else s["steps"]


def run_r1v2(
    model_dir: Path, data: Path, out: Path, s: dict, vlm: bool = False, engine: str = "transformers"
) -> dict:
    """Train with r1v2 on rollout ``engine``; returns the step times and the run's wall
    time."""
    from r1v2.config import resolve
    from r1v2.train.grpo import GRPOConfig, train

    n = s["prompts_per_step"] * s["group_size"]
    cfg = resolve(
        GRPOConfig,
        None,
        [
            ("model", str(model_dir)),
            ("data", str(data)),
            ("output_dir", str(out)),
            ("max_steps", s["warmup"] + timed_steps(s, vlm)),
            ("save_steps", 10**9),
            ("resume", "never"),
            ("device", "cpu"),
            ("dtype", "float32"),
            ("seed", s["seed"]),
            ("prompts_per_step", s["prompts_per_step"]),
            ("group_size", s["group_size"]),
            ("generation.max_new_tokens", s["max_new_tokens"]),
            ("generation.temperature", s["temperature"]),
            ("trainable", "all"),
            ("ppo_epochs", s["ppo_epochs"]),
            ("micro_batch_size", n),  # TRL runs the whole step's batch in one forward
            ("clip_low", s["clip"]),
            ("clip_high", s["clip"]),
            ("kl_coef", s["kl_coef"]),
            ("kl_estimator", "k3"),
            ("aggregation", "seq-mean-token-mean"),
            ("optim.lr", s["lr"]),
            ("optim.max_grad_norm", s["max_grad_norm"]),
            ("ssb.enabled", False),
            ("engine", engine),
            ("tensorboard", False),
            ("progress", False),
        ],
    )
    cfg.validate()
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "step_seconds" in r]
    return {
        "step_seconds": [r["step_seconds"] for r in steps[s["warmup"] :]],
        "wall": wall,
        "completion_len": sum(r["response_length_mean"] for r in steps) / len(steps),
    }


# ---- TRL -------------------------------------------------------------------------------------


def _text(completion) -> str:
    """A TRL completion as text (conversational datasets give a list of messages)."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if m.get("role") == "assistant")


def accuracy(completions, answer, **_) -> list[float | None]:
    """r1v2's accuracy reward as a TRL reward function (None: unscored, as in r1v2)."""
    from r1v2.rewards import accuracy_reward

    return [accuracy_reward(_text(c), a) for c, a in zip(completions, answer)]


def fmt(completions, **_) -> list[float]:
    """r1v2's format reward as a TRL reward function."""
    from r1v2.rewards import format_reward

    return [format_reward(_text(c)) for c in completions]


def run_trl(model_dir: Path, samples: list, out: Path, s: dict, vlm: bool = False) -> dict:
    """Train with TRL's GRPOTrainer (on its vision-language path with ``vlm``: an ``images``
    column and the model's processor); returns the step times and the run's wall time."""
    from datasets import Dataset
    from transformers import AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1v2.model.tokenizer import load_tokenizer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self._t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._t0)

    rows = [
        {"prompt": [{"role": "user", "content": x.question}], "answer": x.answer} for x in samples
    ]
    if vlm:  # TRL puts the images before the text of the user turn, as r1v2 does
        for row, x in zip(rows, samples):
            row["images"] = x.open_images()
    dataset = Dataset.from_list(rows)
    n = s["prompts_per_step"] * s["group_size"]
    args = GRPOConfig(
        output_dir=str(out),
        max_steps=s["warmup"] + timed_steps(s, vlm),
        per_device_train_batch_size=n,  # completions per step: prompts_per_step * G
        gradient_accumulation_steps=1,
        num_generations=s["group_size"],
        max_completion_length=s["max_new_tokens"],
        temperature=s["temperature"],
        top_p=1.0,
        top_k=0,
        beta=s["kl_coef"],
        epsilon=s["clip"],
        epsilon_high=s["clip"],
        num_iterations=s["ppo_epochs"],
        loss_type="grpo",  # per-sequence token mean, then mean over sequences
        scale_rewards="group",
        reward_weights=[1.0, 1.0],
        learning_rate=s["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=s["max_grad_norm"],
        use_vllm=False,
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        model_init_kwargs={"dtype": torch.float32},
        seed=s["seed"],
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
    )
    timer = StepTimer()
    t0 = time.perf_counter()
    trainer = GRPOTrainer(
        model=str(model_dir),
        reward_funcs=[accuracy, fmt],
        args=args,
        train_dataset=dataset,
        processing_class=AutoProcessor.from_pretrained(model_dir)
        if vlm
        else load_tokenizer(model_dir),
        callbacks=[timer],
    )
    trainer.train()
    wall = time.perf_counter() - t0
    key = "completions/mean_length"
    lengths = [h[key] for h in trainer.state.log_history if key in h]
    return {
        "step_seconds": timer.times[s["warmup"] :],
        "wall": wall,
        "completion_len": sum(lengths) / len(lengths) if lengths else float("nan"),
    }


# ---- report ----------------------------------------------------------------------------------


def merge(results: list[dict]) -> dict:
    """One result from repeated runs: all timed steps, mean wall time and completion length,
    and the runs themselves (``runs``, in repeat order)."""
    return {
        "step_seconds": [x for r in results for x in r["step_seconds"]],
        "wall": sum(r["wall"] for r in results) / len(results),
        "completion_len": sum(r["completion_len"] for r in results) / len(results),
        "runs": results,
    }


def repeat_ratios(ours: dict, theirs: dict, s: dict) -> list[float]:
    """r1v2's completions/s over TRL's, one per repeat (runs of one repeat ran side by
    side, so the machine's drift between repeats cancels in each)."""
    return [throughput(a, s) / throughput(b, s) for a, b in zip(ours["runs"], theirs["runs"])]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def throughput(result: dict, s: dict) -> float:
    """Completions per second over the timed steps."""
    return (
        s["prompts_per_step"]
        * s["group_size"]
        * len(result["step_seconds"])
        / sum(result["step_seconds"])
    )


def compare(root: Path, name: str, model_dir: Path, data: Path, samples: list, s: dict, a):
    """Every trainer on one path (r1v2 on each engine of ``a.engines``, then TRL),
    ``a.repeats`` runs each, the order reversed every other repeat (ABBA: a drift in the
    machine's load hits all alike); returns their merged results by trainer name."""
    vlm = name.startswith("vlm")
    names = [f"r1v2/{e}" for e in a.engines] + ["trl"]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for i in range(a.repeats):
        for trainer in names if i % 2 == 0 else names[::-1]:
            out = root / f"{name}-{trainer.replace('/', '-')}-{i}"
            if trainer == "trl":
                runs[trainer].append(run_trl(model_dir, samples, out, s, vlm=vlm))
            else:
                engine = trainer.split("/")[1]
                runs[trainer].append(run_r1v2(model_dir, data, out, s, vlm=vlm, engine=engine))
    return {n: merge(r) for n, r in runs.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--steps", type=int, default=SETTINGS["steps"], help="timed steps per run, text path"
    )
    p.add_argument(
        "--vlm-steps",
        type=int,
        default=SETTINGS["vlm_steps"],
        help="timed steps per run, vision-language path",
    )
    p.add_argument("--group-size", type=int, default=SETTINGS["group_size"], help="G")
    p.add_argument("--prompts-per-step", type=int, default=SETTINGS["prompts_per_step"])
    p.add_argument("--max-new-tokens", type=int, default=SETTINGS["max_new_tokens"])
    p.add_argument(
        "--paths", nargs="+", default=["text", "vlm"], choices=["text", "vlm"], help="paths to run"
    )
    p.add_argument(
        "--shapes",
        nargs="+",
        default=list(SHAPES),
        choices=list(SHAPES),
        help="prompt shapes of the vision-language path",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for both trainers (1 is steadiest on a shared machine)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=4,
        help="runs per trainer, in ABBA order; the ratio is also given per repeat, as mean +- "
        "std over them (default 4)",
    )
    p.add_argument(
        "--engines",
        nargs="+",
        default=["transformers", "compiled"],
        choices=["transformers", "compiled", "continuous"],
        help="r1v2 rollout engines to run (each against the same TRL runs)",
    )
    p.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: temp)")
    a = p.parse_args(argv)
    s = dict(
        SETTINGS,
        steps=a.steps,
        vlm_steps=a.vlm_steps,
        group_size=a.group_size,
        prompts_per_step=a.prompts_per_step,
        max_new_tokens=a.max_new_tokens,
    )
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import transformers
    import trl

    from r1v2.data import load_samples

    table = []  # (path, mean prompt tokens, results by trainer)
    with tempfile.TemporaryDirectory() as tmp:
        root = a.keep or Path(tmp)
        if "text" in a.paths:
            model_dir, data, samples = build_inputs(root, s)
            tokens = check_same_prompts(model_dir, samples, vlm=False)
            table.append(("text", tokens, compare(root, "text", model_dir, data, samples, s, a)))
        if "vlm" in a.paths:
            model_dir, folders = build_vlm_inputs(root, s)
            for shape in a.shapes:
                samples = load_samples(folders[shape]).samples
                tokens = check_same_prompts(model_dir, samples, vlm=True)
                results = compare(root, f"vlm-{shape}", model_dir, folders[shape], samples, s, a)
                table.append((f"vlm/{shape}", tokens, results))

    n = s["prompts_per_step"] * s["group_size"]
    print()
    print(
        f"GRPO throughput, r1v2 vs TRL GRPOTrainer; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, trl {trl.__version__}, CPU, {torch.get_num_threads()} "
        f"thread(s); {n} completions per step"
    )
    print("settings: " + ", ".join(f"{k}={v}" for k, v in s.items()) + f", repeats={a.repeats}")
    print(
        f"{'path':<9} {'prompt tok':>10} {'trainer':<17} {'completions/s':>13} "
        f"{'gen tok/s':>9} {'s/step':>7} {'run s':>6} {'mean len':>8} {'timed':>5} "
        f"{'ratio r1v2/trl':>16} {'per repeat':>15}"
    )
    for path, tokens, results in table:
        theirs = results["trl"]
        for trainer, r in results.items():
            per_step = sum(r["step_seconds"]) / len(r["step_seconds"])
            note = spread = ""
            if trainer != "trl":
                ratio = throughput(r, s) / throughput(theirs, s)
                token_ratio = (throughput(r, s) * r["completion_len"]) / (
                    throughput(theirs, s) * theirs["completion_len"]
                )
                note = f"{ratio:.2f}x ({token_ratio:.2f}x tok)"
                spread = "{:.2f} +- {:.2f}x".format(*mean_std(repeat_ratios(r, theirs, s)))
            print(
                f"{path:<9} {tokens:>10.1f} {trainer:<17} {throughput(r, s):>13.1f} "
                f"{throughput(r, s) * r['completion_len']:>9.0f} {per_step:>7.3f} "
                f"{r['wall']:>6.1f} {r['completion_len']:>8.1f} {len(r['step_seconds']):>5} "
                f"{note:>16} {spread:>15}"
            )
    print(
        "ratio: completions/s of r1v2 over TRL's over all timed steps (in parentheses: "
        "generated tokens/s); per repeat: the ratio within each repeat, mean +- std; "
        "prompt tok: mean prompt length, image tokens included; run s: a run's wall time "
        "(model loading, compiling and the untimed warm-up step included)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
