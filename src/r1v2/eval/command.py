"""``r1v2 eval`` and ``r1v2 eval compare``: configs and the functions the CLI calls.

Two ways to get responses: generate them with a checkpoint (``--model DIR``; cached per
(model, settings, benchmark), resumable), or read another system's (``--responses FILE``).
Either way they are scored by rules, optionally by an LLM judge, and reported in ``--out``.
Responses without ``\\boxed`` are read by a rule-based fallback (eval only; counted per
benchmark as ``n_fallback``); responses the rules cannot score are counted
(``n_rule_unscored``) and, unless the judge decides them, count as wrong.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from r1v2.config import ConfigError, check_range, option
from r1v2.errors import R1V2Error
from r1v2.eval.benchmarks import ADAPTERS, Benchmark, load_benchmark
from r1v2.eval.harness import (
    GenerateFn,
    ResponseCache,
    cache_path,
    engine_generate,
    generate_responses,
    model_key,
    pending_count,
    read_responses,
    score_benchmark,
    summarize,
)
from r1v2.eval.judge import JudgeClient, load_prompt
from r1v2.eval.livecodebench import OPTIONS as LIVECODEBENCH_OPTIONS
from r1v2.eval.prompts import INSTRUCTIONS
from r1v2.eval.report import (
    check_report_folder,
    headline,
    print_comparison,
    results_document,
    write_reports,
)
from r1v2.fsutil import check_writable_folder
from r1v2.model.dtypes import Device, DtypeOrAuto
from r1v2.train.progress import StepProgress


@dataclass
class EvalConfig:
    bench: list[str] = option(
        [],
        f"benchmarks, each NAME=PATH or LABEL:ADAPTER=PATH; repeat the flag for several. "
        f"Adapters: {', '.join(ADAPTERS)}. Options go in brackets after the name: "
        "'livecodebench[start_date=2024-08-01,end_date=2025-01-31]=PATH' (quoted for the "
        f"shell); livecodebench's options: {', '.join(LIVECODEBENCH_OPTIONS)}",
    )
    model: str | None = option(
        None, "checkpoint folder that generates the responses (or give responses)"
    )
    responses: str | None = option(
        None, 'JSONL of responses from any system, one {"id", "run", "response"} per line'
    )
    out: str = option(
        "eval_results", "output folder: results.json, results.md, results.png, scores.jsonl"
    )
    runs: int = option(
        5,
        "sampled responses per question; Pass@1 is their mean (paper: 5). With responses, "
        "the file's run ids are used instead",
    )
    max_new_tokens: int = option(2048, "generation limit in tokens per response (paper: 64K)")
    temperature: float = option(0.6, "sampling temperature (0: greedy)")
    top_p: float = option(
        0.95, "nucleus sampling: keep the smallest token set with this probability"
    )
    top_k: int | None = option(None, "sample from the k most likely tokens only (None: off)")
    batch_size: int = option(8, "questions per generation batch (each asks for all missing runs)")
    limit: int | None = option(None, "evaluate only the first N questions of each benchmark")
    seed: int = option(0, "random seed for sampling")
    device: Device = option(
        "auto",
        "device for generation: auto (CUDA when available), cpu or cuda (the GPU that "
        "CUDA_VISIBLE_DEVICES puts first)",
    )
    dtype: DtypeOrAuto = option(
        "auto",
        "model dtype for generation: auto (as the checkpoint stores it), float32, "
        "bfloat16 or float16",
    )
    cache_dir: str | None = option(None, "where generated responses are cached (None: OUT/cache)")
    judge_url: str | None = option(
        None, "OpenAI-compatible endpoint of an LLM judge (None: rules only)"
    )
    judge_model: str | None = option(None, "model name sent to the judge endpoint")
    judge_api_key_env: str = option(
        "OPENAI_API_KEY", "environment variable holding the judge's API key"
    )
    judge_when: Literal["undecided", "fallback", "always"] = option(
        "fallback",
        "ask the judge where rules give None (undecided); also where they give 0 to an answer "
        "read by the rule-based fallback or a boxed one they could not compare like with like, "
        "words or units (fallback; a clearly wrong boxed answer, e.g. Z99 for 1, stays wrong); "
        "or about every response, overruling any rule score (always)",
    )
    judge_timeout: float = option(
        60.0,
        "seconds per connect/read/write of a judge request, and in total per request from "
        "sending it to the last byte of its reply",
    )
    judge_retries: int = option(
        3, "judge retries after a timeout, HTTP 429/5xx or a malformed reply"
    )
    judge_backoff: float = option(
        1.0,
        "seconds before retrying a malformed reply or one without a verdict (doubles each time); "
        "HTTP retries follow the openai client (0.5 s doubling to 8 s, Retry-After honoured)",
    )
    judge_concurrency: int = option(8, "judge requests in flight at most")
    judge_max_failures: int = option(
        5,
        "stop asking the judge after this many items in a row left undecided (every retry "
        "failed); the rest is scored by rules, the console and results.json say so, and the "
        "exit code is 2 unless judge_when is undecided (there the judge only scores what the "
        "rules cannot grade, which then counts as wrong as without a judge)",
    )
    judge_prompt: str | None = option(
        None, "judge prompt file (None: the packaged judge_prompt.txt)"
    )
    judge_cache: str | None = option(
        None, "judge verdict cache, JSONL (None: OUT/judge_cache.jsonl)"
    )
    overwrite: bool = option(
        False,
        "replace the reports (results.json, .md, .png, scores.jsonl) of another evaluation in "
        "out; without it such a folder is refused (re-running the same evaluation may rewrite "
        "its own). Caches are append-only and always kept",
    )

    def validate(self) -> None:
        if (self.model is None) == (self.responses is None):
            raise ConfigError(
                "r1v2 eval needs exactly one of model (generate) or responses (score a file)"
            )
        if not self.bench:
            raise ConfigError("r1v2 eval needs at least one --bench NAME=PATH")
        for name in ("runs", "batch_size", "max_new_tokens", "limit"):
            check_range(name, getattr(self, name), 1)
        check_range("judge_concurrency", self.judge_concurrency, 1)
        check_range("judge_max_failures", self.judge_max_failures, 1)
        check_range("temperature", self.temperature, 0)
        check_range("top_p", self.top_p, 0, 1, low_open=True)
        check_range("top_k", self.top_k, 0)
        check_range("judge_timeout", self.judge_timeout, 0, low_open=True)
        check_range("judge_retries", self.judge_retries, 0)
        check_range("judge_backoff", self.judge_backoff, 0)
        if self.judge_url is not None and not self.judge_model:
            raise ConfigError("judge_url needs judge_model (the model name the endpoint serves)")
        if self.judge_url is not None:
            from urllib.parse import urlparse

            url = urlparse(self.judge_url)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ConfigError(
                    f"config field 'judge_url': {self.judge_url!r} is not an http(s) URL "
                    "(e.g. http://127.0.0.1:8000/v1)"
                )

    def generation_settings(self) -> dict:
        """What changes generated text: part of the response cache's key."""
        keys = ("max_new_tokens", "temperature", "top_p", "top_k", "seed")
        return {k: getattr(self, k) for k in keys}


def build_judge(cfg: EvalConfig) -> JudgeClient | None:
    if cfg.judge_url is None:
        return None
    return JudgeClient(
        cfg.judge_url,
        cfg.judge_model or "",
        api_key=os.environ.get(cfg.judge_api_key_env),
        timeout=cfg.judge_timeout,
        retries=cfg.judge_retries,
        backoff=cfg.judge_backoff,
        concurrency=cfg.judge_concurrency,
        cache_path=cfg.judge_cache or Path(cfg.out) / "judge_cache.jsonl",
        prompt_template=load_prompt(cfg.judge_prompt),
        max_failures=cfg.judge_max_failures,
    )


def policy_generate(cfg: EvalConfig) -> GenerateFn:
    """A GenerateFn over a :class:`r1v2.rollout.TransformersEngine` on the checkpoint's policy,
    loading the model at its first call (a fully cached evaluation never loads it)."""
    state: dict = {}

    def generate(prompts: list, n: int) -> list[list[str]]:
        if "generate" not in state:
            import torch

            from r1v2.model.policy import Policy, SamplingConfig
            from r1v2.rollout import TransformersEngine

            torch.manual_seed(cfg.seed)  # once: a resumed run does not replay the same samples
            policy = Policy.from_pretrained(cfg.model or "", dtype=cfg.dtype, device=cfg.device)
            sample = cfg.temperature > 0
            sampling = SamplingConfig(
                max_new_tokens=cfg.max_new_tokens,
                do_sample=sample,
                temperature=cfg.temperature if sample else 1.0,
                top_p=cfg.top_p,
                top_k=cfg.top_k or 0,
            )
            state["generate"] = engine_generate(TransformersEngine(policy), sampling)
        return state["generate"](prompts, n)

    return generate


def collect_generated(
    cfg: EvalConfig, benches: list[Benchmark], generate: GenerateFn | None = None
):
    """Generate (or take from the cache) ``cfg.runs`` responses per question of each benchmark."""
    if not Path(cfg.model or "").is_dir():
        raise R1V2Error(f"model {cfg.model}: no such checkpoint folder")
    generate = generate or policy_generate(cfg)
    # The instructions are part of what was asked: rewording them starts a fresh cache.
    key = model_key(cfg.model or "", {**cfg.generation_settings(), "instructions": INSTRUCTIONS})
    cache_dir = Path(cfg.cache_dir or Path(cfg.out) / "cache")
    caches = {b.name: ResponseCache(cache_path(cache_dir, key, b)) for b in benches}
    tables = {}
    with StepProgress(stderr=True) as progress:
        for b in benches:
            todo = pending_count(b, caches[b.name].responses, cfg.runs)
            task = progress.add(f"generating {b.name}", todo)
            tables[b.name] = generate_responses(
                b,
                generate,
                caches[b.name],
                runs=cfg.runs,
                batch_size=cfg.batch_size,
                on_progress=lambda k, t=task: progress.advance(k, task=t),
            )
    return (
        tables,
        {b.name: list(range(cfg.runs)) for b in benches},
        {b.name: str(caches[b.name].path) for b in benches},
    )


def _score(
    bench: Benchmark, responses: dict, runs: list[int], judge: JudgeClient | None, cfg: EvalConfig
):
    """score_benchmark with a progress display for rules and judge."""
    scoring = f"scoring {bench.name}"
    with StepProgress(len(bench.samples) * len(runs), label=scoring, stderr=True) as progress:
        judging: list[int] = []
        return score_benchmark(
            bench,
            responses,
            runs,
            judge=judge,
            judge_when=cfg.judge_when,
            on_scored=lambda k: progress.advance(k),
            on_judge_start=lambda n: judging.append(progress.add(f"judging {bench.name}", n)),
            on_judged=lambda: progress.advance(1, task=judging[0]),
        )


def collect_responses(cfg: EvalConfig, benches: list[Benchmark]):
    """Read another system's responses; run ids are the ones the file uses."""
    tables = read_responses(cfg.responses or "", benches)
    runs = {}
    for b in benches:
        ids = sorted({r for _, r in tables[b.name]})
        if not ids:
            raise R1V2Error(f"{cfg.responses}: no responses for benchmark {b.name!r}")
        runs[b.name] = ids
    return tables, runs


def run_eval(cfg: EvalConfig, generate: GenerateFn | None = None) -> int:
    """Load the benchmarks, get responses, score, write the reports, print the headline table."""
    from rich.console import Console
    from rich.table import Table

    err = Console(stderr=True)
    check_writable_folder(cfg.out, "out")
    settings = dataclasses.asdict(cfg)
    identity = results_document({}, model=cfg.model, responses=cfg.responses, settings=settings)
    check_report_folder(cfg.out, identity, overwrite=cfg.overwrite)  # before any work
    benches = [load_benchmark(spec, limit=cfg.limit) for spec in cfg.bench]
    names = [b.name for b in benches]
    if len(set(names)) != len(names):
        raise R1V2Error(f"benchmark labels must differ, got {names}; use LABEL:ADAPTER=PATH")
    for b in benches:
        skipped = f", {len(b.skipped)} rows skipped (first: {b.skipped[0]})" if b.skipped else ""
        err.print(f"{b.name}: {len(b.samples)} questions from {b.path} ({b.adapter}){skipped}")
    caches: dict[str, str] = {}
    if cfg.responses is not None:
        tables, runs = collect_responses(cfg, benches)
    else:
        tables, runs, caches = collect_generated(cfg, benches, generate)
    judge = build_judge(cfg)
    results, scores = {}, {}
    for b in benches:
        stopped_before = judge is not None and judge.stopped
        table = _score(b, tables[b.name], runs[b.name], judge, cfg)
        if judge is not None and judge.stopped and not stopped_before:
            err.print(_judge_stopped(judge), style="red", markup=False, soft_wrap=True)
        results[b.name] = summarize(b, table, runs[b.name])
        if b.name in caches:
            results[b.name]["responses_cache"] = caches[b.name]
        scores[b.name] = [x.to_json() for row in table for x in row]
        for line in _warnings(b.name, results[b.name]):
            err.print(f"[yellow]{line}[/yellow]")
    if judge is not None:
        err.print(f"judge: {judge.stats}")
        if judge.failed_items:
            err.print(_judge_failed(judge), style="red", markup=False, soft_wrap=True)
    doc = results_document(results, model=cfg.model, responses=cfg.responses, settings=settings)
    if judge is not None:
        doc["judge"] = judge.summary()
    paths = write_reports(cfg.out, doc, scores)
    table = Table(title=f"r1v2 eval ({Path(cfg.model or cfg.responses or '').name})")
    columns, rows = headline(doc)
    for col in columns:
        table.add_column(col, justify="left" if col == "benchmark" else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    err.print(f"wrote {', '.join(str(p) for p in paths.values())}")
    if judge is not None and judge.stopped and cfg.judge_when != "undecided":
        raise R1V2Error(
            f"the judge stopped after {judge.max_failures} failures in a row; judge_when="
            f"{cfg.judge_when} needs it (results are written, scored by rules where it was "
            "not asked; judge_when=undecided accepts that)"
        )
    summary = judge.summary() if judge is not None else None
    if (
        summary
        and cfg.judge_when == "always"
        and summary["asked"]
        and (summary["failed"] == summary["asked"])
    ):
        raise R1V2Error(
            f"every judge call failed ({summary['failed']} items; last: "
            f"{summary['last_error']}); judge_when=always needs the judge (results are written, "
            "scored by rules)"
        )
    return 0


def _judge_failed(judge: JudgeClient) -> str:
    """The console line for items whose judge call failed after its retries."""
    s = judge.summary()
    shown = ", ".join(s["failed_items"][:5]) + (", ..." if len(s["failed_items"]) > 5 else "")
    return (
        f"judge: {s['failed']} of {s['asked']} items failed after their retries (last: "
        f"{s['last_error']}): {shown}; they are scored by rules (results.json: judge.failed_items)"
    )


def _judge_stopped(judge: JudgeClient) -> str:
    """The console line for a judge that stopped asking."""
    s = judge.summary()
    return (
        f"judge: stopped after {s['disabled_after_failures']} items in a row failed "
        f"(last: {s['last_error']}); the rest of the run is scored by rules only"
    )


def _warnings(name: str, result: dict) -> list[str]:
    """Console lines for responses that were not scored the ordinary way."""
    out = []
    if result["n_missing"]:
        out.append(
            f"{name}: {result['n_missing']} (question, run) pairs have no response; scored 0"
        )
    if result["n_rule_unscored"]:
        out.append(
            f"{name}: {result['n_rule_unscored']} responses the rules could not score "
            f"({result['n_unscored']} left unscored after the judge, counted as wrong)"
        )
    return out


@dataclass
class EvalCompareConfig:
    paths: list[str] = option([], "two results.json files: A then B")

    def validate(self) -> None:
        if len(self.paths) != 2:
            raise ConfigError(
                f"r1v2 eval compare takes two results.json files, got {len(self.paths)}"
            )


def run_compare(cfg: EvalCompareConfig) -> int:
    """Print two evaluation results side by side, with B - A in points."""
    print_comparison(cfg.paths[0], cfg.paths[1])
    return 0
