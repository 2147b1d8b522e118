"""Throughput and overhead of the sandboxed code reward (``r1v2.rewards.code``).

1. Throughput: ``code_rewards`` on ``--n`` short completions (half correct, half wrong), each
   with ``--tests`` stdin/stdout cases (one sandboxed process per case), with 1 worker and with
   ``--workers``; completions/s and the speed-up.
2. Overhead: one sandboxed run of a short program (the runner, limits, namespaces, uid drop,
   private /tmp, temp dir) against a bare ``subprocess.run([sys.executable, "-c", code])`` of
   the same code with the same stdin; medians of ``--repeats`` interleaved runs, and the same
   sandbox without namespaces (``unshare`` left out) to show what the namespaces cost.

Prints ratios from one script, never a pass/fail. Run: ``python bench/code_reward.py`` (add
``--n 64`` for a quicker run).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import time

from r1v2.rewards import code as code_mod
from r1v2.rewards.code import code_rewards, sandbox_info

RIGHT = "a, b = map(int, input().split())\nprint(a + b)\n"
WRONG = "a, b = map(int, input().split())\nprint(a - b)\n"


def workload(n: int, tests: int) -> tuple[list[str], list[list[dict]], list[float]]:
    """``n`` completions (even: right, odd: wrong) and their tests; the expected rewards."""
    cases = [{"input": f"{k} {k + 2}\n", "output": f"{2 * k + 2}\n"} for k in range(1, tests + 1)]
    completions, expected = [], []
    for i in range(n):
        body = RIGHT if i % 2 == 0 else WRONG
        completions.append(f"<think>sum</think>\n```python\n{body}```")
        expected.append(1.0 if i % 2 == 0 else 0.0)
    return completions, [cases] * n, expected


def throughput(completions, tests, expected, workers: int) -> float:
    start = time.perf_counter()
    got = code_rewards(completions, tests, workers=workers, timeout_s=4.0)
    seconds = time.perf_counter() - start
    if got != expected:
        raise SystemExit(f"wrong rewards with {workers} worker(s): {got[:8]} ...")
    return seconds


def bare_run(stdin: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RIGHT], input=stdin.encode(), capture_output=True, check=False
    )
    seconds = time.perf_counter() - start
    if done.stdout.strip() != b"3":
        raise SystemExit(f"bare run printed {done.stdout!r}")
    return seconds


def sandboxed_run(stdin: str) -> float:
    start = time.perf_counter()
    res = code_mod._run({"mode": "stdio", "code": RIGHT}, stdin, 10.0, 1024)
    seconds = time.perf_counter() - start
    if res.stdout.strip() != b"3" or res.returncode != 0:
        raise SystemExit(f"sandboxed run printed {res.stdout!r} (exit {res.returncode})")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=256, help="completions scored per setting")
    parser.add_argument("--tests", type=int, default=2, help="stdin/stdout cases per completion")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="the parallel setting"
    )
    parser.add_argument("--repeats", type=int, default=30, help="runs per overhead figure")
    args = parser.parse_args()

    info = sandbox_info()  # detected once, before any timing
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, sandbox: {info}")

    completions, tests, expected = workload(args.n, args.tests)
    procs = args.n * args.tests
    print(f"\nthroughput: {args.n} completions x {args.tests} stdin tests ({procs} processes)")
    one = throughput(completions, tests, expected, 1)
    many = throughput(completions, tests, expected, args.workers)
    for label, seconds in ((1, one), (args.workers, many)):
        print(
            f"  {label:>2} worker(s): {seconds:6.1f} s  {args.n / seconds:7.1f} completions/s  "
            f"{procs / seconds:7.1f} processes/s"
        )
    print(f"  speed-up with {args.workers} workers: {one / many:.2f}x")

    stdin = "1 2\n"
    bare, full, plain = [], [], []
    real = code_mod._get_sandbox()
    no_ns = dataclasses.replace(real, prefix=(), private=())
    for _ in range(args.repeats):  # interleaved, so load on the machine hits all three alike
        bare.append(bare_run(stdin))
        full.append(sandboxed_run(stdin))
        code_mod._sandbox_cached = no_ns
        try:
            plain.append(sandboxed_run(stdin))
        finally:
            code_mod._sandbox_cached = real
    b, f, p = (statistics.median(x) for x in (bare, full, plain))
    print(f"\noverhead per run (median of {args.repeats}, the same program and stdin):")
    rows = [
        ("bare subprocess.run([python, -c, code])", b),
        ("sandbox without namespaces", p),
        ("sandbox as used: " + " ".join(a.rsplit("/", 1)[-1] for a in real.prefix[:-1]), f),
    ]
    for label, seconds in rows:
        print(f"  {label:<70} {1000 * seconds:6.1f} ms  {seconds / b:.2f}x")
    print(f"  sandbox overhead per run: +{1000 * (f - b):.1f} ms ({f / b:.2f}x the bare run)")


if __name__ == "__main__":
    main()
