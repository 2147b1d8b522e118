"""The LLM judge client against a real HTTP server on 127.0.0.1 (scripted replies)."""

import json
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from r1v2.data.schema import Sample
from r1v2.errors import R1V2Error
from r1v2.eval.benchmarks import Benchmark
from r1v2.eval.harness import score_benchmark
from r1v2.eval.judge import (
    NOT_ASKED,
    JudgeClient,
    JudgeError,
    JudgeItem,
    load_prompt,
    parse_verdict,
    render_prompt,
)


def reply_json(text):
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


class FakeEndpoint:
    """An OpenAI-compatible /v1/chat/completions endpoint replying from a script.

    Actions, consumed one per request (the last one repeats): ("ok", text), ("slow", seconds,
    text), ("status", code), ("raw", bytes), ("trickle", seconds between bytes, text): a
    verdict reply whose body is sent one byte at a time, ("drip", seconds between bytes, text,
    n): the first n bytes of the whole reply, status line first, one at a time, then the rest,
    ("big", n bytes): a body of n bytes written in 64 KiB blocks (never held in memory whole).
    Header names are recorded in lower case.
    """

    def __init__(self, script):
        self.script = list(script)
        self.requests = []  # (path, headers, body) per request
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with endpoint.lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    endpoint.requests.append((self.path, headers, body))
                    action = (
                        endpoint.script.pop(0) if len(endpoint.script) > 1 else endpoint.script[0]
                    )
                    endpoint.in_flight += 1
                    endpoint.max_in_flight = max(endpoint.max_in_flight, endpoint.in_flight)
                try:
                    self.reply(action)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)
                finally:
                    with endpoint.lock:
                        endpoint.in_flight -= 1

            def reply(self, action):
                kind = action[0]
                if kind == "slow":
                    time.sleep(action[1])
                    action = ("ok", action[2])
                if kind == "drip":
                    body = reply_json(action[2])
                    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n"
                    data = head.encode() + body
                    for i in range(action[3]):
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                        time.sleep(action[1])
                    self.wfile.write(data[action[3] :])
                    return
                if kind == "big":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(action[1]))
                    self.end_headers()
                    block = b" " * (1 << 16)
                    for _ in range(action[1] // len(block)):
                        self.wfile.write(block)
                    return
                if kind == "trickle":
                    data = reply_json(action[2])
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    for i in range(len(data)):
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                        time.sleep(action[1])
                    return
                if action[0] == "status":
                    self.send_response(action[1])
                    self.end_headers()
                    self.wfile.write(b'{"error": "boom"}')
                    return
                data = action[1] if action[0] == "raw" else reply_json(action[1])
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    made = []

    def make(script):
        e = FakeEndpoint(script)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


ITEM = JudgeItem("How long is the rod?", "0.5 m", "The rod is \\boxed{50 cm}.")


def client(e, **kw):
    kw = {"timeout": 2.0, "retries": 2, "backoff": 0.01, **kw}
    return JudgeClient(e.url, "judge-model", **kw)


def test_good_reply_and_request_shape(endpoint):
    e = endpoint([("ok", "The units differ but the length is the same.\nCORRECT")])
    j = client(e, api_key="sk-test")
    assert j.judge(ITEM) is True
    path, headers, body = e.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["authorization"] == "Bearer sk-test"
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    prompt = body["messages"][0]["content"]
    assert "How long is the rod?" in prompt and "0.5 m" in prompt and "\\boxed{50 cm}" in prompt
    assert "{{" not in prompt and not prompt.startswith("#")
    assert j.stats == {
        "requests": 1,
        "cache_hits": 0,
        "retries": 0,
        "asked": 1,
        "undecided": 0,
        "not_asked": 0,
    }


def test_incorrect_and_last_word_wins(endpoint):
    e = endpoint([("ok", "At first CORRECT? No: the values differ. INCORRECT")])
    assert client(e).judge(ITEM) is False


def test_slow_reply_times_out_then_retry_succeeds(endpoint):
    e = endpoint([("slow", 1.0, "CORRECT"), ("ok", "CORRECT")])
    j = client(e, timeout=0.2)
    assert j.judge(ITEM) is True
    assert len(e.requests) == 2 and j.stats["retries"] == 1
    assert "Timeout" in j.last_errors[0] or "timed out" in j.last_errors[0]
    # The retry is the openai client's own (it numbers its tries in a header).
    assert [r[1]["x-stainless-retry-count"] for r in e.requests] == ["0", "1"]


def test_trickling_reply_is_cut_at_the_total_deadline(endpoint):
    """A server sending one byte every 0.1 s never trips the per-read timeout (0.5 s); the
    whole reply (~70 bytes, ~7 s) is cut at the total deadline of 0.5 s and retried."""
    e = endpoint([("trickle", 0.1, "CORRECT"), ("ok", "CORRECT")])
    j = client(e, timeout=0.5)
    start = time.monotonic()
    assert j.judge(ITEM) is True
    assert time.monotonic() - start < 2.5  # 0.5 s deadline + the client's backoff (<= 0.5 s)
    assert len(e.requests) == 2 and j.stats["retries"] == 1
    assert j.last_errors == ["ReadTimeout: request not complete within 0.5 s"]


def test_oversized_reply_is_refused(endpoint):
    """A reply over max_reply_bytes is dropped unread past the cap and retried."""
    big = ("raw", json.dumps({"choices": [{"message": {"content": "x" * 5000}}]}).encode())
    e = endpoint([big, ("ok", "CORRECT")])
    j = client(e, max_reply_bytes=1000)
    assert j.judge(ITEM) is True and len(e.requests) == 2
    assert j.last_errors == ["ReplyTooLarge: reply larger than 1000 bytes"]
    e = endpoint([big])
    j = client(e, max_reply_bytes=1000, retries=0)
    assert j.judge(ITEM) is None and len(e.requests) == 1 and j.stats["undecided"] == 1


def test_server_error_then_success(endpoint):
    e = endpoint([("status", 500), ("status", 503), ("ok", "CORRECT")])
    j = client(e)
    assert j.judge(ITEM) is True
    assert len(e.requests) == 3 and j.stats["retries"] == 2
    assert j.last_errors == ["HTTP 500", "HTTP 503"]


def test_one_retry_budget_for_http_and_reply_failures(endpoint):
    """retries=1 allows 2 requests per item in all: an HTTP 500 (retried by the client), then
    a reply without a verdict, and the budget is spent, so the CORRECT third reply is never
    asked for."""
    e = endpoint([("status", 500), ("ok", "I am not sure."), ("ok", "CORRECT")])
    j = client(e, retries=1)
    assert j.judge(ITEM) is None
    assert len(e.requests) == 2 and j.stats == {
        "requests": 2,
        "cache_hits": 0,
        "retries": 1,
        "asked": 1,
        "undecided": 1,
        "not_asked": 0,
    }
    assert j.last_errors == ["HTTP 500", "no verdict in reply: 'I am not sure.'"]


def test_malformed_json_until_retries_run_out(endpoint):
    e = endpoint([("raw", b"{this is not json")])
    j = client(e, retries=2)
    assert j.judge(ITEM) is None  # undecided, counted; never a silent 0
    assert len(e.requests) == 3  # one try + 2 retries
    assert j.stats["undecided"] == 1 and j.stats["retries"] == 2
    assert j.last_errors == ["malformed reply: b'{this is not json'"] * 3


def test_reply_without_verdict_is_retried(endpoint):
    e = endpoint([("ok", "I am not sure."), ("ok", "INCORRECT")])
    assert client(e).judge(ITEM) is False and len(e.requests) == 2


def test_client_error_stops(endpoint):
    e = endpoint([("status", 401)])
    with pytest.raises(JudgeError) as info:
        client(e).judge(ITEM)
    assert str(info.value) == (
        f'judge endpoint {e.url}/chat/completions answered HTTP 401: {{"error": "boom"}}'
    )
    assert len(e.requests) == 1  # not retried
    assert issubclass(JudgeError, R1V2Error)


def test_credentials_only_from_the_caller(endpoint, monkeypatch):
    """The openai client would read OPENAI_API_KEY / OPENAI_ORG_ID / OPENAI_PROJECT_ID and send
    them to any endpoint; the judge sends only the key it is given, and none without one.
    A full .../chat/completions URL is accepted as well as the base URL."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-this-server")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-x")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-x")
    e = endpoint([("ok", "CORRECT")])
    assert JudgeClient(e.url + "/chat/completions/", "m", retries=0).judge(ITEM) is True
    path, headers, _ = e.requests[0]
    assert path == "/v1/chat/completions"
    assert not {"authorization", "openai-organization", "openai-project"} & set(headers)
    assert client(e, api_key="sk-mine").judge(ITEM) is True
    assert e.requests[1][1]["authorization"] == "Bearer sk-mine"
    assert not {"openai-organization", "openai-project"} & set(e.requests[1][1])


def test_disk_cache(endpoint, tmp_path):
    e = endpoint([("ok", "CORRECT")])
    cache = tmp_path / "judge.jsonl"
    assert client(e, cache_path=cache).judge(ITEM) is True
    again = client(e, cache_path=cache)  # a new process reading the same cache
    assert again.judge(ITEM) is True
    assert len(e.requests) == 1 and again.stats["cache_hits"] == 1
    other = JudgeClient(e.url, "another-model", cache_path=cache, retries=0)
    assert other.judge(ITEM) is True and len(e.requests) == 2  # the key includes the model


def test_concurrency_limit_and_order(endpoint):
    e = endpoint([("slow", 0.15, "CORRECT")])
    items = [JudgeItem(f"q{i}", "1", "1") for i in range(6)]
    done = []
    verdicts = client(e, concurrency=2).judge_many(items, on_done=lambda: done.append(1))
    assert verdicts == [True] * 6 and len(done) == 6
    assert e.max_in_flight == 2


def test_connection_refused_gives_none(endpoint):
    e = endpoint([("ok", "CORRECT")])
    url = e.url
    e.close()
    j = JudgeClient(url, "m", timeout=0.5, retries=1, backoff=0.01)
    assert j.judge(ITEM) is None and j.stats["undecided"] == 1


def test_prompt_file_and_verdict_parsing(tmp_path):
    template = load_prompt()
    assert all("{{" + p + "}}" in template for p in ("question", "reference", "response"))
    text = render_prompt(template, JudgeItem("Q {x}", "R", "S"))
    assert "Q {x}" in text  # braces in LaTeX are left alone
    assert parse_verdict("correct") is True and parse_verdict("Incorrect.") is False
    assert parse_verdict("no idea") is None
    bad = tmp_path / "p.txt"
    bad.write_text("# doc\nOnly {{question}} here\n")
    with pytest.raises(
        R1V2Error, match=r"lacks the placeholder\(s\) \{\{reference\}\}, \{\{response\}\}"
    ):
        load_prompt(bad)


def test_judge_path_in_scoring(endpoint):
    """50 cm vs 0.5 m: rules say 0 (units are dropped, not converted), the judge says CORRECT.
    A response without any answer is not sent to the judge in "fallback" mode."""
    e = endpoint([("ok", "CORRECT")])
    sample = Sample("rod", "How long is the rod?", (), "0.5 m", None, "math", {})
    bench = Benchmark("phys", "samples", Path("phys.jsonl"), [sample], "accuracy", True)
    responses = {("rod", 0): "It is \\boxed{50 cm}.", ("rod", 1): "I do not know."}
    table = score_benchmark(bench, responses, [0, 1], judge=client(e), judge_when="fallback")
    first, second = table[0]
    assert (first.rule, first.judged, first.verdict, first.score) == (0.0, True, True, 1.0)
    assert (second.rule, second.judged, second.score) == (0.0, False, 0.0)
    assert len(e.requests) == 1
    sent = e.requests[0][2]["messages"][0]["content"]
    assert "It is \\boxed{50 cm}." in sent and "0.5 m" in sent
    # "undecided" asks only where rules gave None; "always" asks about every response.
    table = score_benchmark(bench, responses, [0, 1], judge=client(e), judge_when="undecided")
    assert not table[0][0].judged and table[0][0].score == 0.0
    e2 = endpoint([("ok", "INCORRECT")])
    table = score_benchmark(bench, responses, [0, 1], judge=client(e2), judge_when="always")
    assert [x.judged for x in table[0]] == [True, True] and len(e2.requests) == 2


def test_judge_through_the_cli(endpoint, tmp_path, monkeypatch):
    """Responses mode with a judge: the rule-wrong "50 cm" is judged CORRECT (1 of 2 right ->
    Pass@1 0.5), the key comes from the named environment variable, verdicts are cached."""
    from r1v2.cli import main

    e = endpoint([("ok", "CORRECT")])
    bench = tmp_path / "b.jsonl"
    rows = [
        {
            "id": "rod",
            "question": "How long is the rod?",
            "images": [],
            "answer": "0.5 m",
            "kind": "math",
        },
        {
            "id": "bar",
            "question": "How long is the bar?",
            "images": [],
            "answer": "2 m",
            "kind": "math",
        },
    ]
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    resp = tmp_path / "r.jsonl"
    resp.write_text(
        json.dumps({"id": "rod", "run": 0, "response": "\\boxed{50 cm}"})
        + "\n"
        + json.dumps({"id": "bar", "run": 0, "response": "no idea"})
        + "\n"
    )
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-env")
    argv = [
        "eval",
        "--responses",
        str(resp),
        "--bench",
        f"phys:samples={bench}",
        "--out",
        str(tmp_path / "o"),
        "--judge-url",
        e.url,
        "--judge-model",
        "m",
        "--judge-api-key-env",
        "MY_JUDGE_KEY",
    ]
    assert main(argv) == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())["benchmarks"]["phys"]
    assert (res["pass@1"], res["n_judged"], res["n_judge_undecided"]) == (0.5, 1, 0)
    assert len(e.requests) == 1 and e.requests[0][1]["authorization"] == "Bearer sk-env"
    assert main(argv) == 0 and len(e.requests) == 1  # the verdict came from OUT/judge_cache.jsonl


def test_an_unreachable_judge_is_named_and_always_mode_exits_2(tmp_path, capsys):
    """Nothing listening, 3 items, judge_when=always: each failed item is named on the console
    and in results.json, and the command exits 2 (it exited 0 and printed only the counts)."""
    import socket

    from r1v2.cli import main

    with socket.socket() as sock:  # a port with nothing listening on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rows = [
        {"id": f"q{i}", "question": "How long?", "images": [], "answer": "2", "kind": "math"}
        for i in range(3)
    ]
    bench = tmp_path / "b.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    resp = tmp_path / "r.jsonl"
    resp.write_text(
        "".join(
            json.dumps({"id": r["id"], "run": 0, "response": "\\boxed{2}"}) + "\n" for r in rows
        )
    )
    argv = ["eval", "--responses", str(resp), "--bench", f"b:samples={bench}"]
    argv += ["--out", str(tmp_path / "o"), "--judge-url", f"http://127.0.0.1:{port}/v1"]
    argv += ["--judge-model", "m", "--judge-when", "always", "--judge-retries", "1"]
    argv += ["--judge-timeout", "2", "--judge-backoff", "0"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "judge: 3 of 3 items failed after their retries" in err and "q0 run 0" in err
    assert "every judge call failed (3 items" in err
    judge = json.loads((tmp_path / "o" / "results.json").read_text())["judge"]
    assert sorted(judge["failed_items"]) == ["q0 run 0", "q1 run 0", "q2 run 0"]
    assert "Connect" in (judge["last_error"] or "") or "refused" in (judge["last_error"] or "")


# ---- hardening: the judge fails loudly and stays bounded ------------------------------------


def test_judge_stops_after_failures_in_a_row(endpoint):
    """max_failures=2, one request per item, one item at a time: HTTP 500 (1 failure), CORRECT
    (the count starts again), 500, 500 (2 in a row: stopped); the fifth item is not asked.
    A verdict already known is still given from the cache."""
    e = endpoint([("status", 500), ("ok", "CORRECT"), ("status", 500), ("status", 500)])
    j = client(e, retries=0, concurrency=1, max_failures=2)
    items = [JudgeItem(f"q{i}", "1", "1") for i in range(5)]
    assert j.judge_many(items) == [None, True, None, None, NOT_ASKED]
    assert j.stopped and len(e.requests) == 4
    assert j.judge(items[1]) is True and len(e.requests) == 4
    s = j.summary()
    assert (s["disabled_after_failures"], s["asked"], s["failed"], s["not_asked"]) == (2, 4, 3, 1)
    with pytest.raises(R1V2Error, match="max_failures must be >= 1, got 0"):
        client(e, max_failures=0)


def write_eval_inputs(tmp_path, n):
    """n questions whose reference the rules cannot grade ("\\frac{1}{": unbalanced), so every
    judge_when mode sends each response to the judge; one response per question."""
    bench, resp = tmp_path / "b.jsonl", tmp_path / "r.jsonl"
    row = {"question": "?", "images": [], "answer": "\\frac{1}{", "kind": "math"}
    rows = [{"id": f"q{i}", **row} for i in range(n)]
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [{"id": f"q{i}", "run": 0, "response": "\\boxed{4}"} for i in range(n)]
    resp.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return bench, resp


@pytest.mark.parametrize("when, code", [("fallback", 2), ("always", 2), ("undecided", 0)])
def test_judge_that_is_down_stops_the_asking(endpoint, tmp_path, capsys, when, code):
    """An endpoint that refuses every connection, 8 items, --judge-max-failures 3 (one request
    per item, one at a time): items 1-3 fail, the judge stops, items 4-8 are not asked. One
    console line says so, results.json records it; exit code 2, except under "undecided",
    whose judge only scores what the rules cannot grade (rules-only: counted wrong)."""
    from r1v2.cli import main

    e = endpoint([("ok", "CORRECT")])
    e.close()  # nothing listens on its port any more
    bench, resp = write_eval_inputs(tmp_path, 8)
    out = tmp_path / "o"
    argv = ["eval", "--responses", str(resp), "--bench", f"b:samples={bench}", "--out", str(out)]
    argv += ["--judge-url", e.url, "--judge-model", "m", "--judge-when", when]
    argv += ["--judge-retries", "0", "--judge-concurrency", "1", "--judge-max-failures", "3"]
    assert main(argv) == code
    err = capsys.readouterr().err
    stopped = [line for line in err.splitlines() if "judge: stopped" in line]
    assert len(stopped) == 1 and stopped[0].startswith(
        "judge: stopped after 3 items in a row failed (last: ConnectError: "
    )
    assert stopped[0].endswith("); the rest of the run is scored by rules only")
    doc = json.loads((out / "results.json").read_text())
    judge = {k: doc["judge"][k] for k in ("disabled_after_failures", "failed", "asked")}
    assert judge == {"disabled_after_failures": 3, "failed": 3, "asked": 3}
    assert (doc["judge"]["not_asked"], doc["judge"]["requests"]) == (5, 3)
    res = doc["benchmarks"]["b"]
    assert (res["n_judged"], res["n_judge_undecided"], res["n_judge_stopped"]) == (3, 3, 5)
    assert res["pass@1"] == 0.0 and res["n_unscored"] == 8
    error = "r1v2 eval: error: the judge stopped after 3 failures in a row; judge_when="
    assert (error in err) == (code == 2)


def test_dripping_reply_ends_at_the_deadline(endpoint):
    """A server sending its reply one byte every 0.5 s from the status line on (12 bytes over
    6 s, then the rest) never trips the per-read timeout of 1 s; the request ends at its total
    deadline of 1 s (elapsed < 1 s + 0.5 s margin), a failure, although a verdict would follow."""
    e = endpoint([("drip", 0.5, "CORRECT", 12)])
    j = client(e, timeout=1.0, retries=0)
    start = time.monotonic()
    assert j.judge(ITEM) is None
    assert time.monotonic() - start < 1.0 + 0.5
    assert j.last_errors == ["ReadTimeout: request not complete within 1 s"]


def test_reply_over_the_cap_is_a_failure_not_memory(endpoint):
    """A 64 MiB reply against the default 1 MiB cap: the request fails (ReplyTooLarge, the item
    undecided), and Python's allocations while it is read peak below 8 MiB, not near 64 MiB."""
    e = endpoint([("big", 64 << 20)])
    j = client(e, retries=0)
    tracemalloc.start()
    try:
        verdict = j.judge(ITEM)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert verdict is None and j.stats["undecided"] == 1
    assert j.last_errors == ["ReplyTooLarge: reply larger than 1048576 bytes"]
    assert peak < 8 << 20


def test_clearly_wrong_answer_stays_wrong_under_fallback(endpoint):
    """A judge that says CORRECT to everything. "fallback": \\boxed{Z99} against 1 and option B
    against A are clearly wrong (read in full, compared like with like): not asked, still 0;
    "two" against 2 (words: the rules cannot compare them) is asked and turned right.
    "always": the judge overrules every rule score, so all three become right."""
    e = endpoint([("ok", "CORRECT")])
    samples = [
        Sample("z", "What is 3 - 2?", (), "1", None, "math", {}),
        Sample("mc", "Which is 3?", (), "A", ("3", "4"), "mc", {}),
        Sample("w", "How many?", (), "2", None, "math", {}),
    ]
    bench = Benchmark("b", "samples", Path("b.jsonl"), samples, "accuracy", True)
    responses = {("z", 0): "\\boxed{Z99}", ("mc", 0): "\\boxed{B}", ("w", 0): "\\boxed{two}"}
    table = score_benchmark(bench, responses, [0], judge=client(e), judge_when="fallback")
    rows = [row[0] for row in table]
    assert [(x.rule, x.judged, x.score) for x in rows] == [
        (0.0, False, 0.0),
        (0.0, False, 0.0),
        (0.0, True, 1.0),
    ]
    assert len(e.requests) == 1
    table = score_benchmark(bench, responses, [0], judge=client(e), judge_when="always")
    assert [(row[0].judged, row[0].score) for row in table] == [(True, 1.0)] * 3
