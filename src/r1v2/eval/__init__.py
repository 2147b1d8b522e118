"""Evaluation: benchmark adapters, rule and judge scoring, Pass@1 / pass@k, reports.

``r1v2 eval`` (see :mod:`r1v2.eval.command`) composes these parts:

- :mod:`r1v2.eval.benchmarks`: local benchmark copies (MathVista, MMMU, MMMU-Pro, MathVision,
  OlympiadBench, AIME 2024, POPE, Sample files) -> Samples and a scorer name;
- :mod:`r1v2.eval.prompts`: the boxed-answer prompts;
- :mod:`r1v2.eval.harness`: cached, resumable generation; responses files; scoring;
- :mod:`r1v2.eval.scoring`: rule scorers; :mod:`r1v2.eval.judge`: the LLM judge client;
- :mod:`r1v2.eval.metrics`: Pass@1 over runs, unbiased pass@k, POPE, hallucination rate;
- :mod:`r1v2.eval.report`: results.json, results.md, results.png, comparisons.
"""

from r1v2.eval.benchmarks import ADAPTERS, Benchmark, BenchmarkError, load_benchmark
from r1v2.eval.judge import JudgeClient, JudgeItem
from r1v2.eval.metrics import pass_at_k, pope_metrics

__all__ = [
    "ADAPTERS",
    "Benchmark",
    "BenchmarkError",
    "JudgeClient",
    "JudgeItem",
    "load_benchmark",
    "pass_at_k",
    "pope_metrics",
]
