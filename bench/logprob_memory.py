"""Peak memory of per-token log-probs: ``token_logprobs`` vs ``log_softmax(logits.float()).gather``.

Shape: B=1, T=2048, V=152064 (Qwen2 vocabulary), bf16 logits. Two modes: ``forward`` (no
grad, as when scoring old/reference log-probs) and ``forward+backward`` (training; includes
the bf16 gradient of the logits, which both variants must produce).

Each (variant, mode) runs in a fresh subprocess so that one cannot inherit the other's
allocator state. The figure is the peak extra memory over what the process held once the
inputs existed: on CUDA ``torch.cuda.max_memory_allocated`` minus the allocated bytes at
that point; on CPU the peak resident set (``VmHWM`` in ``/proc/self/status``, reset through
``/proc/self/clear_refs`` where the kernel allows) minus the resident set at that point.

Run: ``python bench/logprob_memory.py`` (add ``--T 512`` for a quicker, smaller run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

VARIANTS = ("ours", "naive")
MODES = ("forward", "forward+backward")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child(variant: str, mode: str, b: int, t: int, v: int, chunk_size: int) -> dict:
    """Run one measurement in this process; returns the peak extra bytes and the time."""
    import torch

    from r1v2.algos.logprobs import token_logprobs

    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    # Filled from one random 64-position block, rolled per slice: quick, and no float32
    # temporary of full size (setup memory is excluded from the figure anyway).
    block = torch.randn(b, 64, v, device=device)
    logits = torch.empty(b, t, v, dtype=torch.bfloat16, device=device)
    for start in range(0, t, 64):
        logits[:, start : start + 64] = block.roll(start, dims=-1)[:, : t - start]
    del block
    ids = torch.randint(0, v, (b, t), device=device)
    if mode == "forward+backward":
        logits.requires_grad_()

    def run():
        if variant == "ours":
            return token_logprobs(logits, ids, chunk_size=chunk_size or None)
        logp = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
        return logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # [B, T]

    reset = True
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _status_kib("VmRSS") * 1024
        reset = _reset_peak_rss()
        if not reset:  # the peak so far may include setup temporaries: subtract it (a lower bound)
            base = _status_kib("VmHWM") * 1024
    start = time.perf_counter()
    if mode == "forward":
        with torch.no_grad():
            out = run()
    else:
        out = run()
        out.sum().backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status_kib("VmHWM") * 1024
    seconds = time.perf_counter() - start
    return {"peak_extra_bytes": peak - base, "seconds": seconds, "device": device, "reset": reset}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--B", type=int, default=1)
    parser.add_argument("--T", type=int, default=2048)
    parser.add_argument("--V", type=int, default=152064)
    parser.add_argument("--chunk-size", type=int, default=0, help="0: token_logprobs' default")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shape = (args.B, args.T, args.V)

    if args.child:
        print(json.dumps(_child(*args.child, *shape, args.chunk_size)))
        return 0

    logits_gib = args.B * args.T * args.V * 2 / 2**30
    print(
        f"B={args.B} T={args.T} V={args.V} bf16 logits ({logits_gib:.2f} GiB), "
        f"chunk_size={args.chunk_size or 'default'}"
    )
    results: dict[tuple[str, str], dict] = {}
    for mode in MODES:
        for variant in VARIANTS:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                variant,
                mode,
                "--B",
                str(args.B),
                "--T",
                str(args.T),
                "--V",
                str(args.V),
                "--chunk-size",
                str(args.chunk_size),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[variant, mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    device = results["ours", MODES[0]]["device"]
    print(f"peak memory beyond the inputs, {device}:")
    if not all(r["reset"] for r in results.values()):
        print("(VmHWM could not be reset: figures are peak minus setup peak, lower bounds)")
    print(
        f"{'mode':<18}{'ours MiB':>10}{'naive MiB':>11}{'ours/naive':>12}"
        f"{'ours s*':>9}{'naive s*':>10}"
    )
    for mode in MODES:
        ours, naive = results["ours", mode], results["naive", mode]
        o, n = ours["peak_extra_bytes"], naive["peak_extra_bytes"]
        print(
            f"{mode:<18}{o / 2**20:>10.0f}{n / 2**20:>11.0f}{o / max(n, 1):>12.3f}"
            f"{ours['seconds']:>9.2f}{naive['seconds']:>10.2f}"
        )
    print("* one cold run each (first-call overheads included): a rough figure, not a speed test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
