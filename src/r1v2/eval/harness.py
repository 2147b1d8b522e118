"""The evaluation harness: sample k responses per question (cached, resumable), score, summarise.

Generation goes through a ``GenerateFn(prompts, n) -> n completions per prompt``;
:func:`engine_generate` builds one over any :class:`r1v2.rollout.RolloutEngine` (the CLI's is a
:class:`r1v2.rollout.TransformersEngine` on the checkpoint's policy), tests pass fakes.
Responses are appended to a JSONL cache, one line ``{"id", "run", "response"}`` per (sample,
run), flushed after every batch: an interrupted evaluation resumes with only the missing
(sample, run) pairs. The cache file has the layout ``r1v2 eval --responses`` reads, so it can
be rescored on its own.

Scoring: rules first (a response without ``\\boxed`` gets the rule-based fallback answer of
:func:`r1v2.eval.scoring.rule_input`, counted as ``n_fallback``), then optionally the judge
(:func:`needs_judge` says which responses it may overrule).
A rule score of None means the rules could not score the response (its reference cannot be
graded; counted as ``n_rule_unscored``); a final score still None after the judge counts as
wrong in Pass@1 (every item is in the denominator) and is counted as ``n_unscored``.

Code (``kind: code`` samples, LiveCodeBench): each response's code runs against the sample's
tests in the sandbox (:func:`r1v2.eval.scoring.code_pass_rate`), ``code_workers`` at a time;
it is correct for Pass@1 only when it passes them all, the judge is never asked, and the
summary adds the mean pass rate (``mean_pass_rate``: the fraction of tests passed, averaged
like Pass@1).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from r1v2.data.schema import Sample
from r1v2.errors import R1V2Error
from r1v2.eval import metrics
from r1v2.eval.benchmarks import Benchmark, category
from r1v2.eval.ifeval import Followed
from r1v2.eval.jsonl import complete_lines
from r1v2.eval.judge import NOT_ASKED, JudgeClient, JudgeItem
from r1v2.eval.prompts import judge_question, judge_reference, prompt_sample
from r1v2.eval.scoring import (
    SCORERS,
    AnswerSource,
    Scorer,
    bfcl_item,
    code_correct,
    code_pass_rate,
    ifeval_followed,
    rule_input,
    yes_no,
)
from r1v2.rewards.accuracy import option_index
from r1v2.rewards.answers import as_letter, clean, extract_answer, number_unit

if TYPE_CHECKING:  # the engines import torch; scoring a responses file never needs it
    from r1v2.model.policy import SamplingConfig
    from r1v2.rollout import RolloutEngine

GenerateFn = Callable[[list[Sample], int], list[list[str]]]  # prompts [B], n -> [B][n] texts
Key = tuple[str, int]  # (sample id, run)
JudgeWhen = Literal["undecided", "fallback", "always"]
JUDGE_TAIL_CHARS = 4000  # the judge sees at most this much of a response's end


class ResponseCache:
    """Responses on disk, one JSON line per (sample, run); appended and flushed per batch."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.responses: dict[Key, str] = {}
        for line in complete_lines(self.path):  # a line cut short: that pair is generated again
            try:
                entry = json.loads(line)
                self.responses[(str(entry["id"]), int(entry["run"]))] = str(entry["response"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue

    def add(self, items: Sequence[tuple[str, int, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for sample_id, run, response in items:
                f.write(json.dumps({"id": sample_id, "run": run, "response": response}) + "\n")
                self.responses[(sample_id, run)] = response
            f.flush()
            os.fsync(f.fileno())


def pending(
    samples: Sequence[Sample], done: dict[Key, str], runs: int, batch_size: int
) -> Iterator[tuple[list[Sample], tuple[int, ...]]]:
    """Batches of samples that miss the same runs: (samples, missing run indices)."""
    groups: dict[tuple[int, ...], list[Sample]] = {}  # in order of first appearance
    for s in samples:
        missing = tuple(r for r in range(runs) if (s.id, r) not in done)
        if missing:
            groups.setdefault(missing, []).append(s)
    for missing, items in groups.items():
        for i in range(0, len(items), batch_size):
            yield items[i : i + batch_size], missing


def engine_generate(engine: RolloutEngine, sampling: SamplingConfig | None = None) -> GenerateFn:
    """A GenerateFn over a rollout engine: ``n`` completions per prompt in one
    ``engine.generate(prompts, sampling, group_size=n)`` call, split from its group-major
    order (completion ``j`` of prompt ``i`` is text ``i * n + j``)."""

    def generate(prompts: list[Sample], n: int) -> list[list[str]]:
        texts = engine.generate(prompts, sampling, group_size=n).texts
        if len(texts) != len(prompts) * n:
            raise R1V2Error(
                f"the rollout engine returned {len(texts)} completions for {len(prompts)} "
                f"prompts x {n}"
            )
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]

    return generate


def generate_responses(
    bench: Benchmark,
    generate: GenerateFn,
    cache: ResponseCache,
    *,
    runs: int,
    batch_size: int,
    on_progress: Callable[[int], None] | None = None,
) -> dict[Key, str]:
    """Fill ``cache`` with ``runs`` responses per sample of ``bench``; return them all."""
    for batch, missing in pending(bench.samples, cache.responses, runs, batch_size):
        prompts = [prompt_sample(s, bench.scorer, bench.instruct) for s in batch]
        outs = generate(prompts, len(missing))
        if len(outs) != len(batch) or any(len(o) != len(missing) for o in outs):
            raise R1V2Error(
                f"generation returned {[len(o) for o in outs]} completions for {len(batch)} "
                f"prompts x {len(missing)} runs"
            )
        cache.add([(s.id, r, text) for s, out in zip(batch, outs) for r, text in zip(missing, out)])
        if on_progress is not None:
            on_progress(len(batch) * len(missing))
    return {k: v for k, v in cache.responses.items() if k[1] < runs}


def pending_count(bench: Benchmark, done: dict[Key, str], runs: int) -> int:
    return sum(1 for s in bench.samples for r in range(runs) if (s.id, r) not in done)


def cache_path(cache_dir: str | Path, model_key: str, bench: Benchmark) -> Path:
    """``cache_dir/<model_key>/<label>-<hash of adapter and data path>.jsonl``."""
    ident = json.dumps([bench.adapter, str(bench.path.resolve())])
    digest = hashlib.sha256(ident.encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in bench.name)
    return Path(cache_dir) / model_key / f"{safe}-{digest}.jsonl"


def model_key(model_dir: str | Path, settings: dict) -> str:
    """A name for (checkpoint, generation settings): the folder name and a hash of both.

    The checkpoint is fingerprinted by its top-level files' names, sizes and modification times.
    """
    path = Path(model_dir).resolve()
    files = (
        sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()
        )
        if path.is_dir()
        else []
    )
    ident = json.dumps([str(path), files, settings], sort_keys=True, default=str)
    return f"{path.name}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


# ---- responses from another system ------------------------------------------------------------


def read_responses(path: str | Path, benches: Sequence[Benchmark]) -> dict[str, dict[Key, str]]:
    """Read ``{"id", "run", "response"}`` lines (an optional ``"bench"`` names the benchmark).

    Returns ``{bench name: {(id, run): response}}``. Unknown ids, unknown benchmarks, ids found
    in several benchmarks without a ``bench`` field, duplicate (id, run) pairs and malformed
    lines are errors naming file and line. A response to a row that a benchmark's options left
    out (``Benchmark.left_out``: outside a date window) is ignored.
    """
    path = Path(path)
    owners: dict[str, list[str]] = {}
    for b in benches:
        for s in b.samples:
            owners.setdefault(s.id, []).append(b.name)
    names = {b.name for b in benches}
    ids = {b.name: {s.id for s in b.samples} for b in benches}
    left_out = {b.name: b.left_out for b in benches}
    out: dict[str, dict[Key, str]] = {b.name: {} for b in benches}
    from r1v2.eval.jsonl import read_lines

    lines = read_lines(path)
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        entry = _response_entry(where, line)
        sample_id, run = str(entry["id"]), entry["run"]
        bench = entry.get("bench")
        if bench is not None and bench not in names:
            raise R1V2Error(
                f"{where}: field 'bench': unknown benchmark {bench!r} (given: {', '.join(sorted(names))})"
            )
        candidates = [bench] if bench is not None else owners.get(sample_id, [])
        known = any(sample_id in ids[n] for n in candidates)
        if not known and any(sample_id in left_out[n] for n in ([bench] if bench else names)):
            continue  # a row the benchmark's options left out
        if not candidates or sample_id not in ids[candidates[0]]:
            raise R1V2Error(
                f"{where}: field 'id': unknown id {sample_id!r} (not in benchmark {', '.join(candidates or sorted(names))})"
            )
        if len(candidates) > 1:
            raise R1V2Error(
                f"{where}: field 'id': {sample_id!r} is in several benchmarks ({', '.join(candidates)}); add a 'bench' field"
            )
        table = out[candidates[0]]
        if (sample_id, run) in table:
            raise R1V2Error(f"{where}: duplicate response for id {sample_id!r} run {run}")
        table[(sample_id, run)] = entry["response"]
    return out


def _response_entry(where: str, line: str) -> dict:
    """One responses line as a dict with a str/int ``id``, an int ``run``, a str ``response``."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as e:
        raise R1V2Error(f"{where}: malformed JSON: {e.msg}") from e
    if not isinstance(entry, dict):
        raise R1V2Error(f"{where}: expected a JSON object")
    for name, kind in (("id", (str, int)), ("run", int), ("response", str)):
        if name not in entry:
            raise R1V2Error(f"{where}: field '{name}': missing")
        if not isinstance(entry[name], kind) or isinstance(entry[name], bool):
            raise R1V2Error(f"{where}: field '{name}': wrong type {type(entry[name]).__name__}")
    return entry


# ---- scoring ----------------------------------------------------------------------------------


@dataclass
class Scored:
    """One (sample, run): the response, the rule score, the judge's verdict, the final score.

    ``rule`` and ``score`` are None when they could not be scored (``score`` None counts as
    wrong in Pass@1).
    """

    id: str
    run: int
    response: str | None  # None: no response was given for this pair
    rule: float | None
    verdict: bool | None = None  # the judge's verdict; None when not asked or undecided
    judged: bool = False  # the judge was asked
    judge_stopped: bool = False  # meant for the judge, which had stopped: the rules' score stands
    score: float | None = None
    source: AnswerSource | None = None  # where the rules' answer came from; None: no answer
    pass_rate: float | None = None  # code: the fraction of tests passed; None otherwise
    followed: Followed | None = None  # IFEval: each instruction followed, strictly and loosely
    call_error: str | None = None  # BFCL: the checker's error type of a wrong call

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "run": self.run,
            "score": self.score,
            "rule": self.rule,
            "judged": self.judged,
            "judge_stopped": self.judge_stopped,
            "verdict": self.verdict,
            "missing": self.response is None,
            "answer_source": self.source,
            "pass_rate": self.pass_rate,
            **({"followed": asdict(self.followed)} if self.followed is not None else {}),
            **({"bfcl_error": self.call_error} if self.call_error is not None else {}),
        }


def needs_judge(s: Scored, sample: Sample, scorer: str, when: JudgeWhen) -> bool:
    """Whether the judge is asked about ``s`` (and may overrule the rules' score).

    "undecided": only where rules gave None. "fallback": also where they gave 0 to an answer
    they may have misread: one found by the rule-based fallback (a heuristic reading of free
    text), or a boxed answer they could not compare like with like (:func:`clearly_wrong` is
    False: words, units). A boxed answer that is clearly wrong stays wrong, whatever the judge
    would say. "always": every response, every rule score (1 included) is the judge's.
    POPE's yes/no is never judged (our choice: a yes/no word needs no judge).
    """
    if s.response is None or scorer in ("yesno", "ifeval", "bfcl") or sample.kind == "code":
        return False  # code is decided by its tests, IFEval and BFCL by their checkers
    if when == "always" or s.rule is None:
        return True
    if when == "undecided" or s.rule != 0.0 or s.source is None:
        return False
    return s.source == "fallback" or not clearly_wrong(s.response, sample)


_COMMAND = re.compile(r"\\[A-Za-z]+")  # \frac, \sqrt, \pi: mathematics, not words
_WORD = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2,}(?![A-Za-z0-9])")  # "cm", "two"; not "Z99"


def _plain(text: str) -> bool:
    """Mathematics without words or units: a number without a unit, ``Z99``, ``x = 3``,
    ``\\frac{1}{2}``; not ``50 cm``, ``5 km/h``, ``two``, ``90^\\circ``. A one-letter unit
    (``0.5 m``) reads as a variable, as it does for the rules."""
    parsed = number_unit(text)
    if parsed is not None:
        return parsed[2] == ""
    if "°" in text or "\\circ" in text:
        return False
    return _WORD.search(_COMMAND.sub(" ", text)) is None


def clearly_wrong(response: str, sample: Sample) -> bool:
    """Whether the rules read the boxed answer of ``response`` in full and compared it like
    with like with the reference (call only where they scored it 0).

    Clearly wrong: another option of a multiple-choice question (named by text, letter or
    number); another letter against a letter reference; or, where neither side has words or
    units (:func:`_plain`), different mathematics (``\\boxed{Z99}`` against ``1``, ``4`` against
    ``5``). Not clearly wrong, so the judge may read it under "fallback": an answer naming no
    option, words (``two`` against ``2``, a paraphrase), units (``50 cm`` against ``0.5 m``:
    the rules drop units), a degree mark. Our rule: the paper leaves the judge's reach open.
    """
    raw = extract_answer(response)
    if raw is None:
        return False
    pred = clean(raw)
    refs = [clean(str(a)) for a in (sample.metadata.get("answers") or [sample.answer])]
    if sample.choices:
        options = [clean(c) for c in sample.choices]
        index = option_index(pred, options)
        if index is None:
            return False
        if all(option_index(r, options) is not None for r in refs):
            return True
        pred = options[index]  # the reference is an open answer: the option's text stands
    elif all(as_letter(r, allow_lower=False) is not None for r in refs):
        return as_letter(pred, allow_lower=False) is not None
    return _plain(pred) and all(_plain(r) for r in refs)


def judge_item(sample: Sample, response: str, name: str = "") -> JudgeItem:
    tail = response.rsplit("</think>", 1)[-1].strip() or response
    question, reference = judge_question(sample), judge_reference(sample)
    return JudgeItem(question, reference, tail[-JUDGE_TAIL_CHARS:], id=name or sample.id)


def score_benchmark(
    bench: Benchmark,
    responses: dict[Key, str],
    runs: Sequence[int],
    *,
    judge: JudgeClient | None = None,
    judge_when: JudgeWhen = "fallback",
    on_scored: Callable[[int], None] | None = None,
    on_judge_start: Callable[[int], None] | None = None,
    on_judged: Callable[[], None] | None = None,
    code_workers: int | None = None,
) -> list[list[Scored]]:
    """Scores ``[sample][run]`` of ``bench`` for the run ids ``runs``.

    A missing response scores 0.0 (an answer not given is wrong) and is flagged ``missing``. A
    response without ``\\boxed`` is scored on its fallback answer (``source`` "fallback").
    ``kind: code`` samples run their tests, ``code_workers`` responses at a time (None: one
    per CPU). Progress callbacks: ``on_scored(k)`` after k more (sample, run) pairs are
    scored, ``on_judge_start(n)`` before n judge requests, ``on_judged()`` after each verdict.
    """
    scorer = SCORERS[bench.scorer]
    batched = _score_code(bench, responses, runs, code_workers, on_scored)
    if bench.scorer == "bfcl":
        batched.update(_score_bfcl(bench, responses, runs, on_scored))
    table = []
    for s in bench.samples:
        if s.kind == "code" or bench.scorer == "bfcl":
            table.append([batched[(s.id, r)] for r in runs])
            continue
        row = []
        for r in runs:
            row.append(_score_rules(scorer, bench.scorer, s, r, responses.get((s.id, r))))
        table.append(row)
        if on_scored is not None:
            on_scored(len(row))
    if judge is not None:
        asked = [
            (s, x)
            for s, row in zip(bench.samples, table)
            for x in row
            if needs_judge(x, s, bench.scorer, judge_when)
        ]
        if on_judge_start is not None:
            on_judge_start(len(asked))
        verdicts = judge.judge_many(
            [judge_item(s, x.response or "", f"{x.id} run {x.run}") for s, x in asked],
            on_done=on_judged,
        )
        for (_, x), v in zip(asked, verdicts):
            if v is NOT_ASKED:  # the judge had stopped (too many failures in a row)
                x.judge_stopped = True
                continue
            x.judged, x.verdict = True, v
            if v is not None:
                x.score = float(v)
    return table


def _score_code(
    bench: Benchmark,
    responses: dict[Key, str],
    runs: Sequence[int],
    workers: int | None,
    on_scored: Callable[[int], None] | None,
) -> dict[Key, Scored]:
    """The Scored of every (code sample, run), the tests run ``workers`` responses at a time
    (threads: each waits on its own sandboxed processes)."""
    out: dict[Key, Scored] = {}
    todo: list[tuple[Sample, int, str]] = []
    for s in bench.samples:
        if s.kind != "code":
            continue
        for r in runs:
            text = responses.get((s.id, r))
            if text is None:  # an answer not given is wrong
                out[(s.id, r)] = Scored(s.id, r, None, 0.0, score=0.0, pass_rate=0.0)
                if on_scored is not None:
                    on_scored(1)
            else:
                todo.append((s, r, text))
    if not todo:
        return out
    with ThreadPoolExecutor(max_workers=max(1, workers or os.cpu_count() or 1)) as pool:
        futures = {pool.submit(code_pass_rate, text, s): (s, r, text) for s, r, text in todo}
        for future in as_completed(futures):
            s, r, text = futures[future]
            rate = future.result()
            rule = code_correct(rate)
            out[(s.id, r)] = Scored(s.id, r, text, rule, score=rule, pass_rate=rate)
            if on_scored is not None:
                on_scored(1)
    return out


def _score_bfcl(
    bench: Benchmark,
    responses: dict[Key, str],
    runs: Sequence[int],
    on_scored: Callable[[int], None] | None,
) -> dict[Key, Scored]:
    """The Scored of every (BFCL sample, run): one batch through BFCL's checker."""
    from r1v2.eval.bfcl import check

    given = [(s, r, responses.get((s.id, r))) for s in bench.samples for r in runs]
    asked = [(s, r, text) for s, r, text in given if text is not None]
    results = iter(check([bfcl_item(text, s) for s, r, text in asked]))
    out: dict[Key, Scored] = {}
    for s, r, text in given:
        if text is None:  # an answer not given is wrong
            out[(s.id, r)] = Scored(s.id, r, None, 0.0, score=0.0)
            continue
        verdict = next(results)
        rule = float(verdict["valid"])
        error = None if verdict["valid"] else verdict["error_type"] or "invalid"
        out[(s.id, r)] = Scored(s.id, r, text, rule, score=rule, call_error=error)
    if on_scored is not None:
        on_scored(len(given))
    return out


def _score_rules(
    scorer: Scorer, scorer_name: str, sample: Sample, run: int, text: str | None
) -> Scored:
    """The rules' score of one (sample, run); a missing response is wrong (0.0)."""
    if text is None:
        return Scored(sample.id, run, None, 0.0, score=0.0)
    if scorer_name == "ifeval":  # the whole response is the answer: no boxed reading
        followed = ifeval_followed(text, sample)
        rule = float(all(followed.strict))
        return Scored(sample.id, run, text, rule, score=rule, followed=followed)
    rule_text, source = rule_input(text, sample, scorer_name)
    rule = scorer(rule_text, sample)
    return Scored(sample.id, run, text, rule, score=rule, source=source)


def summarize(bench: Benchmark, table: list[list[Scored]], runs: Sequence[int]) -> dict:
    """Metrics of one benchmark (fractions in [0, 1]; see ``r1v2.eval.metrics``)."""
    n_runs = len(runs)
    scores = [[x.score for x in row] for row in table]
    out = metrics.pass_summary(scores, n_runs)
    out["runs"] = list(runs)
    out["n_missing"] = sum(1 for row in table for x in row if x.response is None)
    out["n_rule_unscored"] = sum(1 for row in table for x in row if x.rule is None)
    out["n_fallback"] = sum(1 for row in table for x in row if x.source == "fallback")
    out["n_judged"] = sum(1 for row in table for x in row if x.judged)
    out["n_judge_undecided"] = sum(
        1 for row in table for x in row if x.judged and x.verdict is None
    )
    out["n_judge_stopped"] = sum(1 for row in table for x in row if x.judge_stopped)
    out["n_skipped_rows"] = len(bench.skipped)
    cats = [category(s) for s in bench.samples]
    if any(c is not None for c in cats):
        out["categories"] = metrics.by_category(scores, cats, n_runs)
    code = [i for i, s in enumerate(bench.samples) if s.kind == "code"]
    if code:
        rates = [[table[i][j].pass_rate for j in range(n_runs)] for i in code]
        out["mean_pass_rate"], out["mean_pass_rate_std"] = metrics.mean_std(
            [r for r in metrics.per_run_accuracy(rates, n_runs) if not math.isnan(r)]
        )
    if bench.scorer == "yesno":
        out["pope"] = _pope(bench, table, runs)
    if bench.scorer == "ifeval":
        out["ifeval"] = _ifeval(bench, table, n_runs)
    if bench.scorer == "bfcl":  # why calls were wrong, over all runs (BFCL's error types)
        errors = Counter(x.call_error for row in table for x in row if x.call_error)
        out["bfcl_errors"] = dict(errors.most_common())
    scenes = [s.metadata.get("scene") for s in bench.samples]
    if any(sc is not None for sc in scenes):
        out.update(_hallucination(table, scenes, n_runs))
    return out


def _pope(bench: Benchmark, table: list[list[Scored]], runs: Sequence[int]) -> dict:
    labels = [s.answer.strip().lower() for s in bench.samples]
    per_run = []
    for j in range(len(runs)):
        preds = [yes_no(row[j].response) if row[j].response is not None else None for row in table]
        per_run.append(metrics.pope_metrics(preds, labels))
    out = metrics.mean_std_dicts(per_run)
    cats = [category(s) for s in bench.samples]
    by_cat = {}
    for cat in sorted({c for c in cats if c is not None}):
        idx = [i for i, c in enumerate(cats) if c == cat]
        runs_cat = []
        for j in range(len(runs)):
            preds = [
                yes_no(table[i][j].response) if table[i][j].response is not None else None
                for i in idx
            ]
            runs_cat.append(metrics.pope_metrics(preds, [labels[i] for i in idx]))
        by_cat[cat] = metrics.mean_std_dicts(runs_cat)
    if by_cat:
        out["categories"] = by_cat
    return out


def _ifeval(bench: Benchmark, table: list[list[Scored]], n_runs: int) -> dict:
    """IFEval's four accuracies per run (a missing response follows nothing): mean, std."""
    per_run: dict[str, list[float]] = {}
    for j in range(n_runs):
        found: dict[str, list[bool]] = {"strict": [], "loose": []}
        prompts: dict[str, list[bool]] = {"strict": [], "loose": []}
        for s, row in zip(bench.samples, table):
            f = row[j].followed
            for mode in ("strict", "loose"):
                got = list(getattr(f, mode)) if f else [False] * len(s.metadata["kwargs"])
                found[mode] += got
                prompts[mode].append(all(got))
        for mode in ("strict", "loose"):
            per_run.setdefault(f"prompt_level_{mode}", []).append(_share(prompts[mode]))
            per_run.setdefault(f"inst_level_{mode}", []).append(_share(found[mode]))
    out = {}
    for name, values in per_run.items():
        out[name], out[f"{name}_std"] = metrics.mean_std(values)
    return out


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def _hallucination(table: list[list[Scored]], scenes: list, n_runs: int) -> dict:
    """Share of responses with at least one false claim about the scene, per run: mean, std."""
    from r1v2.data.synthetic import hallucination_rate

    rates = []
    for j in range(n_runs):
        pairs = [
            (row[j].response, sc)
            for row, sc in zip(table, scenes)
            if sc is not None and row[j].response is not None
        ]
        if pairs:
            rates.append(hallucination_rate([p for p, _ in pairs], [sc for _, sc in pairs]))
    m, s = metrics.mean_std(rates)
    return {"hallucination_rate": m, "hallucination_rate_std": s}
