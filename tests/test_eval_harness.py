"""The harness end to end: resumable generation, responses mode through the CLI, reports."""

import json

import pytest
from fixtures.eval_benchmarks import write_aime, write_jsonl, write_pope

from r1v2.cli import main
from r1v2.config import resolve
from r1v2.errors import R1V2Error
from r1v2.eval.benchmarks import load_benchmark
from r1v2.eval.command import EvalConfig, run_eval
from r1v2.eval.harness import (
    ResponseCache,
    engine_generate,
    generate_responses,
    pending,
    read_responses,
)
from r1v2.eval.report import compare_rows, load_results


def aime_file(tmp_path, n=5):
    rows = [{"ID": f"q{i}", "Problem": f"Compute {i} + 1.", "Answer": i + 1} for i in range(n)]
    return write_jsonl(tmp_path / "aime.jsonl", rows)


class FakeGenerate:
    """Answers run-dependently: correct on even-numbered calls' first completion, etc.

    Completion j of a prompt is correct when j == 0 (so with n runs per call, run 0 of each
    batch is right and the rest wrong). Raises after ``fail_after`` calls when set.
    """

    def __init__(self, fail_after=None):
        self.calls = 0
        self.completions = 0
        self.fail_after = fail_after
        self.prompts = []

    def __call__(self, prompts, n):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("interrupted")
        self.calls += 1
        self.completions += len(prompts) * n
        self.prompts += prompts
        return [
            [f"<think>ok</think> \\boxed{{{p.answer if j == 0 else 0}}}" for j in range(n)]
            for p in prompts
        ]


def cfg_for(tmp_path, *bench, **kw):
    return resolve(
        EvalConfig,
        overrides=[
            ("bench", list(bench)),
            ("model", str(tmp_path / "model")),
            ("out", str(tmp_path / "out")),
            *kw.items(),
        ],
    )


def test_resume_after_interruption(tmp_path):
    """5 questions x 3 runs = 15 completions, batches of 2 questions (3 batches).
    The first attempt dies at its second batch: 2 questions x 3 runs = 6 are cached.
    The second attempt generates only the remaining 3 x 3 = 9, in 2 calls."""
    (tmp_path / "model").mkdir()
    spec = f"aime={aime_file(tmp_path)}"
    cfg = cfg_for(tmp_path, spec, runs=3, batch_size=2)
    first = FakeGenerate(fail_after=1)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_eval(cfg, generate=first)
    cache_files = list((tmp_path / "out" / "cache").rglob("*.jsonl"))
    assert len(cache_files) == 1
    lines = [json.loads(x) for x in cache_files[0].read_text().splitlines()]
    assert sorted((x["id"], x["run"]) for x in lines) == [
        (f"q{i}", r) for i in range(2) for r in range(3)
    ]
    second = FakeGenerate()
    assert run_eval(cfg, generate=second) == 0
    assert (second.calls, second.completions) == (2, 9)
    assert [p.id for p in second.prompts] == ["q2", "q3", "q4"]
    # Run 0 is right for every question, runs 1 and 2 wrong: Pass@1 = (1 + 0 + 0) / 3.
    res = load_results(tmp_path / "out" / "results.json")["benchmarks"]["aime"]
    assert res["pass@1_runs"] == [1.0, 0.0, 0.0]
    assert res["pass@1"] == pytest.approx(1 / 3)
    assert res["pass@k"]["2"] == pytest.approx(1 - 1 / 3)  # n=3, c=1: 1 - C(2,2)/C(3,2)
    # A third run has nothing to generate, and never calls the model.
    third = FakeGenerate(fail_after=0)
    assert run_eval(cfg, generate=third) == 0 and third.calls == 0


def test_cache_key_follows_settings(tmp_path):
    (tmp_path / "model").mkdir()
    spec = f"aime={aime_file(tmp_path, n=2)}"
    run_eval(cfg_for(tmp_path, spec, runs=1), generate=FakeGenerate())
    gen = FakeGenerate()  # another evaluation into the same out: its reports need overwrite
    run_eval(cfg_for(tmp_path, spec, runs=1, temperature=1.0, overwrite=True), generate=gen)
    assert gen.completions == 2  # another temperature: nothing reused
    gen = FakeGenerate()
    run_eval(cfg_for(tmp_path, spec, runs=2, overwrite=True), generate=gen)
    assert gen.completions == 2  # more runs: only run 1 is new


def test_truncated_cache_line_is_regenerated(tmp_path):
    bench = load_benchmark(f"aime={aime_file(tmp_path, n=2)}")
    path = tmp_path / "c.jsonl"
    path.write_text(
        json.dumps({"id": "q0", "run": 0, "response": "\\boxed{1}"}) + '\n{"id": "q1", "ru'
    )
    cache = ResponseCache(path)
    assert list(cache.responses) == [("q0", 0)]
    gen = FakeGenerate()
    out = generate_responses(bench, gen, cache, runs=1, batch_size=4)
    assert gen.completions == 1 and set(out) == {("q0", 0), ("q1", 0)}
    assert ResponseCache(path).responses == out  # the file now holds both


class FakeEngine:
    """A RolloutEngine answering "<prompt id>/<completion j>", group-major; records its calls."""

    def __init__(self, short_by=0):
        self.calls = []
        self.short_by = short_by

    def generate(self, items, sampling=None, *, group_size=1):
        from types import SimpleNamespace

        self.calls.append(([s.id for s in items], sampling, group_size))
        texts = [f"{s.id}/{j}" for s in items for j in range(group_size)]
        return SimpleNamespace(texts=texts[: len(texts) - self.short_by])

    def sync_weights(self):
        pass


def test_engine_generate_splits_group_major(tmp_path):
    """3 questions x 2 runs in batches of 2 questions: two engine calls, each asking for both
    runs of its questions (group_size 2) with the given sampling; text i * n + j is run j of
    question i. An engine returning too few completions is an error."""
    from r1v2.rollout import RolloutEngine

    bench = load_benchmark(f"aime={aime_file(tmp_path, n=3)}")
    engine = FakeEngine()
    assert isinstance(engine, RolloutEngine)
    sampling = object()
    out = generate_responses(
        bench,
        engine_generate(engine, sampling),
        ResponseCache(tmp_path / "c.jsonl"),
        runs=2,
        batch_size=2,
    )
    assert out == {(f"q{i}", r): f"q{i}/{r}" for i in range(3) for r in range(2)}
    assert engine.calls == [(["q0", "q1"], sampling, 2), (["q2"], sampling, 2)]
    short = engine_generate(FakeEngine(short_by=1))
    with pytest.raises(R1V2Error, match="returned 3 completions for 2 prompts x 2"):
        short(bench.samples[:2], 2)


def test_pending_groups_by_missing_runs(tmp_path):
    bench = load_benchmark(f"aime={aime_file(tmp_path, n=3)}")
    done = {("q0", 0): "", ("q0", 1): "", ("q2", 1): ""}
    batches = [([s.id for s in b], m) for b, m in pending(bench.samples, done, 2, 8)]
    assert batches == [(["q1"], (0, 1)), (["q2"], (0,))]


def write_responses(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_responses_mode_through_cli(tmp_path, capsys):
    """POPE, 4 questions (labels yes no yes no), 2 runs:
    run 0 answers yes yes yes no -> 3/4 right; run 1 answers yes no no(unboxed) <nothing> -> 2/4.
    Pass@1 = (0.75 + 0.5) / 2 = 0.625, std = 0.25 / sqrt(2).
    POPE run 0: tp=2 fp=1 fn=0 -> P=2/3 R=1 F1=0.8 yes-ratio 3/4; run 1: tp=1 fp=0 fn=1 ->
    P=1 R=1/2 F1=2/3 yes-ratio 1/4.
    AIME, 2 questions, 1 run (run id 7): q0 right, q1 wrong -> 0.5."""
    pope = write_pope(tmp_path)
    aime = aime_file(tmp_path, n=2)
    answers = {0: ["yes", "yes", "yes", "no"], 1: ["yes", "no", None, None]}
    rows = []
    for run, preds in answers.items():
        for qid, pred in zip(["1", "2", "3", "4"], preds):
            if pred is not None:
                rows.append({"id": qid, "run": run, "response": f"\\boxed{{{pred}}}"})
    rows.append({"id": "3", "run": 1, "response": "No, there is no car."})
    rows.append({"id": "4", "run": 1, "response": "I cannot see well."})
    rows += [
        {"id": "q0", "run": 7, "response": "\\boxed{1}"},
        {"id": "q1", "run": 7, "response": "\\boxed{5}"},
    ]
    resp = write_responses(tmp_path / "responses.jsonl", rows)
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "--responses",
            str(resp),
            "--bench",
            f"pope={pope}",
            "--bench",
            f"aime={aime}",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    doc = json.loads((out / "results.json").read_text())
    p = doc["benchmarks"]["pope"]
    assert (p["n_samples"], p["n_runs"], p["runs"]) == (4, 2, [0, 1])
    assert p["pass@1"] == pytest.approx(0.625) and p["pass@1_std"] == pytest.approx(0.25 / 2**0.5)
    assert p["pope"]["f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert p["pope"]["yes_ratio"] == pytest.approx(0.5)
    assert p["pope"]["precision"] == pytest.approx((2 / 3 + 1) / 2)
    assert set(p["categories"]) == {"adversarial", "random"}
    a = doc["benchmarks"]["aime"]
    assert (a["pass@1"], a["n_runs"], a["runs"], a["pass@1_std"]) == (0.5, 1, [7], 0.0)
    for b in doc["benchmarks"].values():
        assert 0.0 <= b["pass@1"] <= 1.0
    md = (out / "results.md").read_text()
    assert (
        "| Model | pope | aime |" in md and "| responses.jsonl | 62.5 ± 17.7 | 50.0 ± 0.0 |" in md
    )
    assert "## POPE" in md
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 4 * 2 + 2
    assert "pope" in capsys.readouterr().out


def test_responses_unknown_id_names_file_and_line(tmp_path, capsys):
    aime = aime_file(tmp_path, n=2)
    resp = write_responses(
        tmp_path / "r.jsonl",
        [{"id": "q0", "run": 0, "response": "x"}, {"id": "q9", "run": 0, "response": "y"}],
    )
    code = main(
        ["eval", "--responses", str(resp), "--bench", f"aime={aime}", "--out", str(tmp_path / "o")]
    )
    assert code == 2  # a user-facing error (r1v2.errors): exit 2
    err = capsys.readouterr().err
    assert f"{resp}:2: field 'id': unknown id 'q9'" in err


def test_read_responses_errors(tmp_path):
    benches = [
        load_benchmark(f"a:aime={aime_file(tmp_path, n=2)}"),
        load_benchmark(f"b:aime={write_aime(tmp_path)}"),
    ]
    cases = [
        ('{"id": "q0", "run": 0}', "r.jsonl:1: field 'response': missing"),
        ('{"id": "q0", "run": "0", "response": ""}', "r.jsonl:1: field 'run': wrong type str"),
        ("[1]", "r.jsonl:1: expected a JSON object"),
        ("{oops", "r.jsonl:1: malformed JSON"),
        (
            '{"id": "q0", "run": 0, "response": "", "bench": "c"}',
            "r.jsonl:1: field 'bench': unknown benchmark 'c'",
        ),
    ]
    for text, message in cases:
        (tmp_path / "r.jsonl").write_text(text + "\n")
        with pytest.raises(Exception, match=message.replace("(", r"\(")):
            read_responses(tmp_path / "r.jsonl", benches)
    dup = '{"id": "q0", "run": 0, "response": ""}\n{"id": "q0", "run": 0, "response": ""}\n'
    (tmp_path / "r.jsonl").write_text(dup)
    with pytest.raises(Exception, match="r.jsonl:2: duplicate response for id 'q0' run 0"):
        read_responses(tmp_path / "r.jsonl", benches)
    (tmp_path / "r.jsonl").write_text(
        '{"id": "2024-I-1", "run": 0, "response": "", "bench": "b"}\n'
    )
    assert read_responses(tmp_path / "r.jsonl", benches)["b"] == {("2024-I-1", 0): ""}


def test_missing_responses_score_zero_and_are_counted(tmp_path):
    aime = aime_file(tmp_path, n=2)
    resp = write_responses(tmp_path / "r.jsonl", [{"id": "q0", "run": 0, "response": "\\boxed{1}"}])
    assert (
        main(
            [
                "eval",
                "--responses",
                str(resp),
                "--bench",
                f"aime={aime}",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    res = load_results(tmp_path / "o" / "results.json")["benchmarks"]["aime"]
    assert (res["pass@1"], res["n_missing"]) == (0.5, 1)


def test_hallucination_rate_on_synthetic_samples(tmp_path):
    """Run 0 claims "i see 16 red circles" (false in every scene), run 1 makes no claim:
    hallucination rate per run 1.0 and 0.0 -> mean 0.5."""
    from r1v2.data.synthetic import generate

    path = generate(3, 0, tmp_path / "synth")
    bench = load_benchmark(f"toy:synthetic={path}")
    rows = [
        {"id": s.id, "run": 0, "response": "i see 16 red circles . </think> \\boxed{16}"}
        for s in bench.samples
    ]
    rows += [
        {"id": s.id, "run": 1, "response": f"</think> \\boxed{{{s.answer}}}"} for s in bench.samples
    ]
    resp = write_responses(tmp_path / "r.jsonl", rows)
    assert (
        main(
            [
                "eval",
                "--responses",
                str(resp),
                "--bench",
                f"toy:synthetic={path}",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    res = load_results(tmp_path / "o" / "results.json")["benchmarks"]["toy"]
    assert res["hallucination_rate"] == pytest.approx(0.5)
    assert res["pass@1_runs"][1] == 1.0
    assert set(res["categories"]) <= {"level 1", "level 2", "level 3"}
    assert "## Hallucination rate" in (tmp_path / "o" / "results.md").read_text()


def test_compare_two_runs(tmp_path, capsys):
    aime = aime_file(tmp_path, n=2)
    for name, answers in (("a", ["1", "0"]), ("b", ["1", "2"])):
        resp = write_responses(
            tmp_path / f"{name}.jsonl",
            [
                {"id": f"q{i}", "run": 0, "response": f"\\boxed{{{x}}}"}
                for i, x in enumerate(answers)
            ],
        )
        assert (
            main(
                [
                    "eval",
                    "--responses",
                    str(resp),
                    "--bench",
                    f"aime={aime}",
                    "--out",
                    str(tmp_path / name),
                ]
            )
            == 0
        )
    a, b = (load_results(tmp_path / n / "results.json") for n in "ab")
    assert compare_rows(a, b) == [("aime pass@1", "50.0 ± 0.0", "100.0 ± 0.0", "+50.0")]
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "compare",
                str(tmp_path / "a" / "results.json"),
                str(tmp_path / "b" / "results.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "aime pass@1" in out and "+50.0" in out


def test_config_errors(tmp_path, capsys):
    assert main(["eval", "--bench", "aime=x.jsonl"]) == 2
    assert "exactly one of model" in capsys.readouterr().err
    assert main(["eval", "--responses", "r.jsonl"]) == 2
    assert "at least one --bench" in capsys.readouterr().err
    assert main(["eval", "compare", "only.json"]) == 2
    assert "two results.json" in capsys.readouterr().err
    # Repeated --bench flags collect into the list; dashed flags are accepted.
    assert (
        main(
            [
                "eval",
                "--responses",
                "r.jsonl",
                "--bench",
                "a=1",
                "--bench",
                "b=2",
                "--max-new-tokens",
                "7",
                "--print-config",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "bench:\n- a=1\n- b=2\n" in printed and "max_new_tokens: 7" in printed
    # A YAML list value is spliced in.
    assert (
        main(
            [
                "eval",
                "--responses",
                "r.jsonl",
                "--bench",
                "[a=1, b=2]",
                "--bench",
                "c=3",
                "--print-config",
            ]
        )
        == 0
    )
    assert "bench:\n- a=1\n- b=2\n- c=3\n" in capsys.readouterr().out


def test_generation_with_a_tiny_vlm(tmp_path, monkeypatch, capsys):
    """`r1v2 eval --model` on a tiny assembled VLM (random weights), synthetic samples with
    images: 3 questions x 2 runs are generated and cached; a rerun loads no model at all."""
    from r1v2.data.synthetic import generate, vocabulary
    from r1v2.model import policy as policy_module
    from r1v2.model.assemble import assemble
    from r1v2.toy.tiny import tiny_llm, tiny_vision

    model = assemble(
        tiny_vision(tmp_path / "vit"),
        tiny_llm(vocabulary(), tmp_path / "llm"),
        tmp_path / "vlm",
        verbose=False,
    )
    data = generate(3, 0, tmp_path / "synth")
    argv = [
        "eval",
        "--model",
        str(model),
        "--bench",
        f"toy:synthetic={data}",
        "--runs",
        "2",
        "--max-new-tokens",
        "6",
        "--batch-size",
        "2",
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cpu",
    ]
    from r1v2.rollout import TransformersEngine

    calls = []
    engine_generate_orig = TransformersEngine.generate

    def counted(self, items, sampling=None, *, group_size=1):
        calls.append((len(items), group_size))
        return engine_generate_orig(self, items, sampling, group_size=group_size)

    monkeypatch.setattr(TransformersEngine, "generate", counted)
    assert main(argv) == 0
    assert calls == [(2, 2), (1, 2)]  # 3 questions in batches of 2, both runs per call
    res = load_results(tmp_path / "out" / "results.json")["benchmarks"]["toy"]
    assert (res["n_samples"], res["n_runs"], res["n_missing"]) == (3, 2, 0)
    assert 0.0 <= res["pass@1"] <= 1.0 and "hallucination_rate" in res
    cache = [json.loads(x) for x in open(res["responses_cache"])]
    assert len(cache) == 6 and all(isinstance(x["response"], str) for x in cache)

    # The same responses through the rollout engine interface: seed 0 before loading, the
    # CLI's sampling settings, batches of 2 questions x 2 runs.
    import torch

    from r1v2.model.policy import Policy, SamplingConfig
    from r1v2.rollout import TransformersEngine

    torch.manual_seed(0)
    policy = Policy.from_pretrained(str(model), dtype="auto", device="cpu")
    sampling = SamplingConfig(max_new_tokens=6, do_sample=True, temperature=0.6, top_p=0.95)
    again = generate_responses(
        load_benchmark(f"toy:synthetic={data}"),
        engine_generate(TransformersEngine(policy), sampling),
        ResponseCache(tmp_path / "again.jsonl"),
        runs=2,
        batch_size=2,
    )
    assert again == {(x["id"], x["run"]): x["response"] for x in cache}
    assert len(set(again.values())) > 1  # sampled, not one fixed string

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although every response is cached")

    monkeypatch.setattr(policy_module.Policy, "from_pretrained", no_model)
    capsys.readouterr()
    assert main(argv) == 0
    assert (
        load_results(tmp_path / "out" / "results.json")["benchmarks"]["toy"]["pass@1"]
        == res["pass@1"]
    )


def samples_file(tmp_path, rows, name="free.jsonl"):
    rows = [{"images": [], "kind": "choice" if r.get("choices") else "math", **r} for r in rows]
    return write_jsonl(tmp_path / name, rows)


def run_responses(tmp_path, bench_spec, rows, *extra):
    resp = write_responses(tmp_path / "responses.jsonl", rows)
    out = tmp_path / "out"
    argv = ["eval", "--responses", str(resp), "--bench", bench_spec, "--out", str(out), *extra]
    assert main(argv) == 0
    return load_results(out / "results.json")["benchmarks"], out


def test_unboxed_answers_are_read_by_the_fallback(tmp_path, capsys):
    """Free-form responses (no \\boxed), 3 questions x 2 runs:
    run 0: "So the answer is 4." -> 4 right; "...the best fit is\\n(B)" -> final letter B right;
           "I count 12 apples in total." -> last number 12 right                    -> 3/3
    run 1: "\\boxed{5}" -> boxed, wrong; "There are 7 of them." -> 7 = option C, wrong;
           "I cannot tell." -> no answer, wrong                                      -> 0/3
    Pass@1 = (1 + 0) / 2 = 0.5; answers from the fallback: 3 + 1 = 4 (the boxed one and the
    answerless one are not)."""
    bench = samples_file(
        tmp_path,
        [
            {"id": "q1", "question": "2 + 2?", "answer": "4"},
            {"id": "q2", "question": "Which?", "answer": "B", "choices": ["3", "5", "7"]},
            {"id": "q3", "question": "How many apples?", "answer": "12"},
        ],
    )
    rows = [
        {"id": "q1", "run": 0, "response": "So the answer is 4."},
        {"id": "q2", "run": 0, "response": "Looking at it, the best fit is\n(B)"},
        {"id": "q3", "run": 0, "response": "I count 12 apples in total."},
        {"id": "q1", "run": 1, "response": "\\boxed{5}"},
        {"id": "q2", "run": 1, "response": "There are 7 of them."},
        {"id": "q3", "run": 1, "response": "I cannot tell."},
    ]
    res, out = run_responses(tmp_path, f"free:samples={bench}", rows)
    r = res["free"]
    assert r["pass@1_runs"] == [1.0, 0.0] and r["pass@1"] == 0.5
    assert (r["n_fallback"], r["n_rule_unscored"], r["n_unscored"]) == (4, 0, 0)
    scores = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    sources = {(x["id"], x["run"]): x["answer_source"] for x in scores}
    assert sources == {
        ("q1", 0): "fallback",
        ("q2", 0): "fallback",
        ("q3", 0): "fallback",
        ("q1", 1): "boxed",
        ("q2", 1): "fallback",
        ("q3", 1): None,
    }
    md = (out / "results.md").read_text()
    assert "| Runs | Rules unscored | Judged | Unscored | Missing | Fallback |" in md
    assert "| 3 | 2 | 0 | 0 | 0 | 0 | 4 |" in md


def test_unscorable_responses_count_as_wrong(tmp_path, capsys):
    """3 questions, 1 run: q1 right; the references of q2 ("@@", which math-verify cannot
    parse) and q3 (unbalanced braces) cannot be graded. Every item counts: Pass@1 = 1/3
    (leaving the unscorable ones out would report 1/1 = 100%); 2 responses the rules could
    not score, in results.json and on the console."""
    bench = samples_file(
        tmp_path,
        [
            {"id": "q1", "question": "2 + 2?", "answer": "4"},
            {"id": "q2", "question": "?", "answer": "@@"},
            {"id": "q3", "question": "?", "answer": "\\frac{1}{"},
        ],
    )
    rows = [{"id": q, "run": 0, "response": "\\boxed{4}"} for q in ("q1", "q2", "q3")]
    res, _ = run_responses(tmp_path, f"free:samples={bench}", rows)
    r = res["free"]
    assert r["pass@1"] == pytest.approx(1 / 3)
    assert (r["n_rule_unscored"], r["n_unscored"], r["n_fallback"]) == (2, 2, 0)
    err = " ".join(capsys.readouterr().err.split())
    assert "free: 2 responses the rules could not score (2 left unscored after the judge, " in err


class FakeJudge:
    """Says CORRECT to everything; records what it was asked."""

    def __init__(self):
        self.items = []

    def judge_many(self, items, on_done=None):
        self.items += list(items)
        return [True for _ in items]


def test_judge_when_applies_to_fallback_answers(tmp_path):
    """Reference "0.5 m". run 0 "The answer is 50 cm." (fallback answer, rules 0), run 1
    "\\boxed{50 cm}" (boxed, rules 0), run 2 "I do not know." (no answer).
    "fallback": the two answers are judged (both CORRECT), the answerless one is not;
    "undecided": nothing (rules never gave None); "always": all three."""
    from r1v2.data.schema import Sample
    from r1v2.eval.benchmarks import Benchmark
    from r1v2.eval.harness import score_benchmark

    sample = Sample("rod", "How long is the rod?", (), "0.5 m", None, "math", {})
    bench = Benchmark("phys", "samples", tmp_path / "p.jsonl", [sample], "accuracy", True)
    texts = ["The answer is 50 cm.", "\\boxed{50 cm}", "I do not know."]
    responses = {("rod", r): t for r, t in enumerate(texts)}
    judged = {}
    for when in ("fallback", "undecided", "always"):
        judge = FakeJudge()
        row = score_benchmark(bench, responses, [0, 1, 2], judge=judge, judge_when=when)[0]
        judged[when] = [x.judged for x in row]
        if when == "fallback":
            assert [x.source for x in row] == ["fallback", "boxed", None]
            assert [x.rule for x in row] == [0.0, 0.0, 0.0]
            assert [x.score for x in row] == [1.0, 1.0, 0.0]
            assert judge.items[0].response == "The answer is 50 cm."  # the response as given
    assert judged == {
        "fallback": [True, True, False],
        "undecided": [False, False, False],
        "always": [True, True, True],
    }


def test_training_reward_never_uses_the_fallback():
    """The same free-form answer the eval fallback reads scores 0 as a training reward."""
    from r1v2.rewards import accuracy_reward

    assert accuracy_reward("So the answer is 4.", "4") == 0.0
    assert accuracy_reward("r </think> So the answer is 4.", "4", after_think=True) == 0.0
