"""Peak memory of one GRPO-like step with the KL reference as ``copy.deepcopy`` vs ``Reference``.

Model: a randomly initialised Qwen2.5-0.5B-shaped LLM (hidden 896, 24 layers, 14 heads, 2 KV
heads, MLP 4864, vocabulary 151936, tied embeddings) joined with a small InternViT (the
InternViT-300M widths, ``--vision-layers`` layers) by InternVL's MLP adapter, built from
config (no downloads), float32 on the CPU, adapter-only trainable.

One step, as in ``r1v2.train.grpo.policy_update`` with one policy iteration: the reference's
per-token log-probs of G completions under ``torch.no_grad``, then the policy's with
gradients, the clipped loss with the k3 KL term (``r1v2.algos.grpo.policy_loss``), backward
and an AdamW step on the adapter. Scoring goes through ``Policy.logprobs`` (vision features
once per prompt, LM head only over the completion).

Each variant runs in its own subprocess; the figures are that process's peak resident set
(``ru_maxrss`` from ``os.wait4`` on the child: model build included) and the parameter bytes
it tracks (model and reference).

Run: ``python bench/ref_memory.py`` (about 2 minutes on 2 busy cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

VARIANTS = ("deepcopy", "Reference")
IMAGE_SIZE, PATCH = 112, 14  # 8 x 8 patches -> 16 image tokens after pixel shuffle (0.5)
IMAGE_TOKENS = (IMAGE_SIZE // PATCH // 2) ** 2
IMAGE_TOKEN_ID = 151655  # a free id below the vocabulary size; any id works for random weights


def build_model(vision_layers: int):
    """The random InternVL model, float32, weights uniform with std 0.02 (norms 1, biases 0)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import (
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLVisionConfig,
        Qwen2Config,
    )

    text = Qwen2Config(
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
    )
    vision = InternVLVisionConfig(
        hidden_size=1024,
        num_hidden_layers=vision_layers,
        num_attention_heads=16,
        intermediate_size=4096,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE_TOKEN_ID,
        image_seq_length=IMAGE_TOKENS,
        downsample_ratio=0.5,
        tie_word_embeddings=True,
    )
    # Parameters on the meta device, then given storage here and a quick seeded init (not
    # transformers'); buffers (rotary frequencies) are made as usual.
    with init_empty_weights(include_buffers=False):
        model = InternVLForConditionalGeneration(config)
    made: dict[int, torch.nn.Parameter] = {}  # by the meta parameter: shared stays shared
    for module in model.modules():
        for key, p in list(module._parameters.items()):
            if p is not None and p.is_meta:
                if id(p) not in made:
                    made[id(p)] = torch.nn.Parameter(torch.empty(p.shape), p.requires_grad)
                module._parameters[key] = made[id(p)]
    model.tie_weights()  # the LM head becomes the input embeddings (before anything is written)
    model = model.float().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied weight is listed (and drawn) once
            if p.dim() >= 2:  # uniform with std 0.02 (quicker to draw than a normal)
                p.uniform_(-0.02 * 3**0.5, 0.02 * 3**0.5, generator=gen)
            elif name.endswith("weight"):  # norms
                p.fill_(1.0)
            else:  # biases, layer-scale factors
                p.fill_(0.1 if "lambda" in name else 0.0)
    return model


def param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())  # tied: counted once


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not in /proc/self/status")


def child(variant: str, args: argparse.Namespace) -> dict:
    """Build, then one GRPO-like step; returns the tracked bytes and times."""
    import copy
    from types import SimpleNamespace

    import torch

    from r1v2.algos.grpo import policy_loss
    from r1v2.model.freeze import set_trainable
    from r1v2.model.policy import Policy, PromptBatch
    from r1v2.train.reference import Reference

    t0 = time.perf_counter()
    model = build_model(args.vision_layers)
    set_trainable(model, "adapter")
    tokenizer = SimpleNamespace(eos_token_id=151645, pad_token_id=151643)
    processor = SimpleNamespace(
        image_processor=None, tokenizer=tokenizer, image_seq_length=IMAGE_TOKENS
    )
    policy = Policy(model, processor)
    if variant == "deepcopy":  # today's trainer
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        ref_bytes = param_bytes(ref_model)
    else:
        reference = Reference(model)
        ref_bytes = reference.nbytes
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    build_s = time.perf_counter() - t0

    gen = torch.Generator().manual_seed(0)
    p, g, tc, text = args.prompts, args.group_size, args.completion_tokens, args.prompt_text_tokens
    words = torch.randint(0, 151000, (p, 2 * text), generator=gen)
    image = torch.full((p, IMAGE_TOKENS), IMAGE_TOKEN_ID)
    input_ids = torch.cat([words[:, :text], image, words[:, text:]], dim=1)  # [P, Tp]
    prompts = PromptBatch(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids, dtype=torch.bool),
        pixel_values=torch.randn(p, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen),
        tiles=[1] * p,
        texts=[""] * p,
    )
    ids = torch.randint(0, 151000, (p * g, tc), generator=gen)  # [N, Tc]
    mask = torch.ones(p * g, tc, dtype=torch.bool)  # [N, Tc]
    index = torch.arange(p).repeat_interleave(g)  # [N]
    advantages = torch.randn(p * g, generator=gen)  # [N]
    rss_before = rss_bytes()

    t0 = time.perf_counter()
    with torch.no_grad():
        if variant == "deepcopy":
            ref = policy.logprobs(prompts, ids, mask, prompt_index=index, model=ref_model)
        else:
            with reference.active():
                ref = policy.logprobs(prompts, ids, mask, prompt_index=index)
    model.train()
    logps = policy.logprobs(prompts, ids, mask, prompt_index=index)  # [N, Tc]
    loss, _ = policy_loss(logps, logps.detach(), advantages, mask, ref_logps=ref, kl_coef=0.001)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    step_s = time.perf_counter() - t0
    return {
        "model_bytes": param_bytes(model),
        "trainable_bytes": sum(q.numel() * q.element_size() for q in trainable),
        "ref_bytes": ref_bytes,
        "rss_before_step": rss_before,
        "build_s": build_s,
        "step_s": step_s,
        "loss": float(loss),
    }


def run_child(variant: str, argv: list[str]) -> dict:
    """Run one variant in a fresh process; its peak RSS from the kernel's rusage of it."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", variant, *argv], stdout=out, stderr=err
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{variant} failed ({proc.returncode}):\n{err.read()[-4000:]}")
        result = json.loads(out.read().strip().splitlines()[-1])
    result["peak_rss"] = usage.ru_maxrss * 1024  # KiB on Linux
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1, help="P: prompts in the step")
    parser.add_argument("--group-size", type=int, default=4, help="G: completions per prompt")
    parser.add_argument("--completion-tokens", type=int, default=24)
    parser.add_argument("--prompt-text-tokens", type=int, default=4, help="each side of the image")
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--child", metavar="VARIANT", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args)))
        return 0

    forwarded = [
        f"--prompts={args.prompts}",
        f"--group-size={args.group_size}",
        f"--completion-tokens={args.completion_tokens}",
        f"--prompt-text-tokens={args.prompt_text_tokens}",
        f"--vision-layers={args.vision_layers}",
    ]
    results = {v: run_child(v, forwarded) for v in VARIANTS}
    first = results[VARIANTS[0]]
    tp = 2 * args.prompt_text_tokens + IMAGE_TOKENS
    print(
        f"Qwen2.5-0.5B-shaped LLM + InternViT ({args.vision_layers} layers, {IMAGE_SIZE} px) + "
        f"adapter, float32, CPU; adapter-only trainable ({first['trainable_bytes'] / 2**20:.1f} "
        f"MiB); P={args.prompts} G={args.group_size} prompt {tp} tokens, completion "
        f"{args.completion_tokens} tokens"
    )
    mib = 2**20
    print(
        f"{'reference':<11}{'model MiB':>10}{'ref MiB':>10}{'tracked MiB':>13}"
        f"{'RSS pre-step':>14}{'peak RSS MiB':>14}{'build s':>9}{'step s':>8}"
    )
    for v, r in results.items():
        tracked = r["model_bytes"] + r["ref_bytes"]
        print(
            f"{v:<11}{r['model_bytes'] / mib:>10.0f}{r['ref_bytes'] / mib:>10.1f}"
            f"{tracked / mib:>13.0f}{r['rss_before_step'] / mib:>14.0f}"
            f"{r['peak_rss'] / mib:>14.0f}{r['build_s']:>9.1f}{r['step_s']:>8.1f}"
        )
    before, after = results["deepcopy"], results["Reference"]
    tracked = [r["model_bytes"] + r["ref_bytes"] for r in (before, after)]
    print(
        f"after/before: reference bytes {after['ref_bytes'] / before['ref_bytes']:.4f}, "
        f"tracked parameter bytes {tracked[1] / tracked[0]:.3f}, "
        f"peak RSS {after['peak_rss'] / before['peak_rss']:.3f}"
    )
    same = before["loss"] == after["loss"]
    print(f"same loss in both variants: {same} ({before['loss']:.6g} vs {after['loss']:.6g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
