"""The accuracy reward: extraction, letters, numbers, math-verify, and its time limit."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from r1v2.rewards import accuracy as acc
from r1v2.rewards import accuracy_reward
from r1v2.rewards import timeout as to
from r1v2.rewards.accuracy import option_index
from r1v2.rewards.answers import (
    as_letter,
    as_number,
    boxed_contents,
    clean,
    extract_answer,
    number_unit,
)

CHOICES = ["3", "5", "7"]

CASES = [
    # (completion, reference, choices, expected)
    # math-verify: expressions
    (r"\boxed{\frac{1}{2}}", "0.5", None, 1.0),
    (r"\boxed{0.5}", r"\frac{1}{2}", None, 1.0),
    (r"\boxed{\frac{1}{3}}", "0.5", None, 0.0),
    (r"\boxed{x = 3}", "3", None, 1.0),
    (r"\boxed{x = 4}", "3", None, 0.0),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\sqrt{2}/2", None, 1.0),  # nested braces
    (r"\boxed{\{1, 2\}}", r"\{2, 1\}", None, 1.0),  # escaped braces inside the box
    # multiple choice
    (r"\boxed{\text{B}}", "B", None, 1.0),
    (r"\boxed{(B)}", "B", None, 1.0),
    (r"\boxed{B.}", "(B)", None, 1.0),
    (r"\boxed{B}", "C", None, 0.0),
    (r"\boxed{5}", "B", CHOICES, 1.0),  # option text for the reference letter
    (r"\boxed{3}", "B", CHOICES, 0.0),
    (r"\boxed{(B) 5}", "B", CHOICES, 1.0),
    (r"\boxed{b}", "B", CHOICES, 1.0),  # lower case counts when options are listed
    (r"\boxed{b}", "B", None, 0.0),  # ... and not otherwise (a variable)
    (r"\boxed{B}", "b", CHOICES, 1.0),
    (r"\boxed{b}", "b", None, 1.0),  # same string
    (r"\boxed{B}", "b", None, 1.0),  # not letters here, but plain words ignore case
    (r"\boxed{B}", "5", CHOICES, 1.0),  # reference given as option text, answer as letter
    (r"\boxed{A}", "5", CHOICES, 0.0),
    (r"\boxed{A}", "E", CHOICES, None),  # reference letter outside the options
    # two boxed answers: the last one counts
    (r"\boxed{3} wait, no: \boxed{4}", "4", None, 1.0),
    (r"\boxed{4} wait, no: \boxed{3}", "4", None, 0.0),
    # unbalanced braces: no answer
    (r"\boxed{4", "4", None, 0.0),
    (r"\boxed{4} hmm \boxed{5", "4", None, 0.0),
    # numbers: tolerance, thousands separators, units, percent
    (r"\boxed{1,000}", "1000", None, 1.0),
    (r"\boxed{1{,}000}", "1000", None, 1.0),
    (r"\boxed{50 cm}", "50", None, 1.0),
    (r"\boxed{50\text{ cm}}", "50 cm", None, 1.0),
    (r"\boxed{51 cm}", "50", None, 0.0),
    (r"\boxed{30^\circ}", "30", None, 1.0),
    (r"\boxed{50\%}", "0.5", None, 1.0),
    (r"\boxed{50%}", "50", None, 1.0),
    (r"\boxed{3.0000001}", "3", None, 1.0),  # |diff| / 3 = 3.3e-8 <= 1e-6
    (r"\boxed{3.0001}", "3", None, 0.0),  # 3.3e-5 > 1e-6
    (r"\boxed{ 4 }", "4", None, 1.0),  # word-level tokenizers put spaces inside
    (r"\boxed{2 pi}", "2", None, 0.0),  # "pi" is not a unit
    # plain words
    (r"\boxed{Red  Circle}", "red circle", None, 1.0),
    (r"\boxed{ab}", "ba", None, 0.0),  # words, not the product a*b
    (r"\boxed{four}", "4", None, 0.0),
    # no answer
    ("The answer is 4.", "4", None, 0.0),
    ("reasoning </think> 4", "4", None, 0.0),
    (r"\boxed{}", "4", None, 0.0),
    # </think>: the part after it first, then the whole completion
    (r"\boxed{3} </think> so \boxed{4}", "4", None, 1.0),
    (r"i get \boxed{4} </think> the answer is four", "4", None, 1.0),
    # references in boxed / dollar form
    (r"\boxed{4}", r"$\boxed{4}$", None, 1.0),
    # references that cannot be parsed
    (r"\boxed{4}", "", None, None),
    (r"\boxed{4}", "   ", None, None),
    (r"\boxed{4}", r"\frac{1}{", None, None),
    (r"\boxed{4}", "???", None, None),
    # no answer beats an unparsable reference only when the reference looks fine
    ("no answer", "4", None, 0.0),
]


@pytest.mark.parametrize("completion,reference,choices,expected", CASES)
def test_accuracy_cases(completion, reference, choices, expected):
    assert accuracy_reward(completion, reference, choices=choices) == expected


# (completion, reference, expected) with after_think=True: only an answer after </think> counts.
AFTER_THINK_CASES = [
    (r"\boxed{4} maybe </think> the answer is four", "4", 0.0),  # a boxed draft in the reasoning
    (r"let me see, \boxed{4}", "4", 0.0),  # cut off before </think>: no answer at all
    (r"\boxed{4}", "4", 0.0),
    (r"reasoning </think> \boxed{4}", "4", 1.0),
    (r"\boxed{3} wait </think> so \boxed{4}", "4", 1.0),
    (r"\boxed{4} </think> \boxed{3}", "4", 0.0),
    (r"a </think> \boxed{4} b </think> none", "4", 0.0),  # the last </think> decides
    (r"a </think> \boxed{B}", "B", 1.0),
    (r"a \boxed{4}", "", None),  # an unscorable reference stays None
]


@pytest.mark.parametrize("completion,reference,expected", AFTER_THINK_CASES)
def test_after_think(completion, reference, expected):
    assert accuracy_reward(completion, reference, after_think=True) == expected


def test_after_think_default_is_off():
    """Eval reads other systems' responses, which may have no think block: by default the
    whole completion is searched when nothing after </think> is boxed."""
    assert accuracy_reward(r"\boxed{4} maybe </think> the answer is four", "4") == 1.0
    assert accuracy_reward(r"let me see, \boxed{4}", "4") == 1.0
    assert extract_answer(r"\boxed{4} </think> four", after_think=True) is None
    assert extract_answer(r"\boxed{4} </think> four") == "4"


LABELS = ["(a)", "(b)", "(c)", "(d)"]
SHUFFLED_LABELS = ["(b)", "(a)", "(d)", "(c)"]
SURD = ["160√{3}m", "80m", "30√{3}m", "320m"]
PAIRS = ["1 & 3", "2 & 4", "1 & 4", "3 & 4"]

# (prediction, reference, choices, expected): cases where the official scorers of public
# benchmarks and ours used to disagree, and their neighbours.
CHOICE_CASES = [
    # options that are themselves labels: an option text matches as a whole
    ("(b)", "(b)", LABELS, 1.0),
    ("(d)", "(b)", LABELS, 0.0),
    ("(b)", "B", LABELS, 1.0),
    ("B", "(b)", LABELS, 1.0),
    ("(a)", "B", SHUFFLED_LABELS, 1.0),  # "(a)" is option B's text, not the letter A
    ("(b)", "B", SHUFFLED_LABELS, 0.0),  # "(b)" is option A's text
    ("B", "(a)", SHUFFLED_LABELS, 1.0),  # "B" is no option's text: the letter B
    ("A", "(a)", SHUFFLED_LABELS, 0.0),
    # no prefix or number-only match of an option text
    ("160m", "A", SURD, 0.0),
    ("160m", "160√{3}m", SURD, 0.0),
    ("30m", "C", SURD, 0.0),
    ("30m", "30√{3}m", SURD, 0.0),
    ("160√{3}m", "A", SURD, 1.0),
    ("160 √{3} m", "A", SURD, 1.0),  # spaces do not matter
    ("80m", "B", SURD, 1.0),
    ("2 & 3", "1 & 3", PAIRS, 0.0),
    ("2 & 3", "A", PAIRS, 0.0),
    ("1 & 3", "A", PAIRS, 1.0),
    ("1&3", "1 & 3", PAIRS, 1.0),
    # the same plain number, unit on one side only; two different units do not match
    ("45", "B", ["30°", "45°", "60°"], 1.0),
    (r"45^\circ", "B", ["30°", "45°", "60°"], 1.0),
    ("50 cm", "A", ["50 m", "50 cm"], 0.0),
    ("50 cm", "B", ["50 m", "50 cm"], 1.0),
    ("0.50", "B", ["0.25", "0.5"], 1.0),
    ("50", "A", ["50 m", "50 cm"], 0.0),  # names two options: none
    # the whole text ignoring case, and letter spellings
    ("paris", "B", ["London", "Paris"], 1.0),
    (r"\dfrac{1}{2}", "A", [r"\frac{1}{2}", r"\frac{1}{3}"], 1.0),
    ("Option B", "B", ["x", "y"], 1.0),
    ("E", "B", ["x", "y"], 0.0),  # a letter past the options names none
    (r"\frac{2}{4}", "A", [r"\frac{1}{2}", r"\frac{1}{3}"], 0.0),  # no math-verify on options
]


@pytest.mark.parametrize("prediction,reference,choices,expected", CHOICE_CASES)
def test_multiple_choice(prediction, reference, choices, expected):
    got = accuracy_reward("</think> \\boxed{" + prediction + "}", reference, choices=choices)
    assert got == expected


def test_option_index():
    assert [option_index(x, LABELS) for x in ["(c)", "(C)", "c", "C", "(e)", "x"]] == [
        2,
        2,
        2,
        2,
        None,
        None,
    ]
    assert [option_index(x, SHUFFLED_LABELS) for x in ["(a)", "A", "(A)", "D"]] == [1, 0, 1, 3]
    assert option_index("x", ["X", "x"]) == 1  # exact text first
    assert option_index("X ", ["x", "x"]) is None  # two options match ignoring case
    assert number_unit("45 degrees") == (45.0, False, "°")
    assert number_unit("3 Km/h") == (3.0, False, "km/h")
    assert number_unit("160√{3}m") is None


def test_unparsable_reference_is_none_even_without_answer():
    """A broken reference cannot be scored, whatever the completion says."""
    assert accuracy_reward("no answer here", r"\frac{1}{") is None


def test_boxed_contents_nesting_and_escapes():
    text = r"a \boxed{\frac{1}{2}} b \boxed{\boxed{3}} c \boxed{x\}y} d \boxed{oops"
    assert boxed_contents(text) == [r"\frac{1}{2}", r"\boxed{3}", r"x\}y", None]
    assert extract_answer(r"\boxed{1} and \boxed{2}") == "2"
    assert extract_answer(r"\boxed{1} and \boxed{2") is None


def test_clean_letters_and_numbers():
    assert clean(r"$\text{(B)}.$") == "(B)"
    assert clean(r"1{,}000\,\text{cm}") == "1,000 cm"
    assert clean(r"1\,000") == "1000"
    assert [
        as_letter(s, allow_lower=False) for s in ["B", "(B)", "B.", "B)", "Option C", "(D) 7"]
    ] == [1, 1, 1, 1, 2, 3]
    assert as_letter("b", allow_lower=False) is None
    assert as_letter("b", allow_lower=True) == 1
    assert as_letter("A triangle", allow_lower=False) is None
    assert as_number("1,234.5 km/h") == (1234.5, False)
    assert as_number("12%") == (12.0, True)
    assert as_number("3x") is None  # a one-letter suffix is a variable, not a unit
    assert as_number("1,2,3") is None


def test_accuracy_off_the_main_thread():
    """math-verify's own timeout uses signal.alarm, which raises in threads; ours does not."""
    out = {}

    def work():
        out["frac"] = accuracy_reward(r"\boxed{\frac{1}{2}}", "0.5")
        out["eq"] = accuracy_reward(r"\boxed{x = 3}", "3")

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert out == {"frac": 1.0, "eq": 1.0}

    pairs = [(r"\boxed{\frac{1}{2}}", "0.5", 1.0), (r"\boxed{\frac{2}{3}}", "0.5", 0.0)] * 3
    with ThreadPoolExecutor(max_workers=4) as ex:
        got = list(ex.map(lambda p: accuracy_reward(p[0], p[1]), pairs))
    assert got == [p[2] for p in pairs]


@pytest.fixture
def fresh_pool(monkeypatch):
    """A private worker pool for the test (so it sees the test's sys.path), closed after."""
    pool = to.WorkerPool(max_workers=1)
    monkeypatch.setattr(to, "_DEFAULT_POOL", pool)
    yield pool
    pool.close()


def test_slow_verifier_is_cut_and_scores_zero(tmp_path, monkeypatch, fresh_pool):
    """A verification that would run for a minute is cut: the answer could not be checked in
    time, so it is wrong (0.0, never None: an unverifiable answer must not beat a wrong one),
    and it is counted as a timeout."""
    (tmp_path / "slow_verifier_mod.py").write_text(
        "import time\n\ndef verify(gold, pred):\n    time.sleep(60)\n    return True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(acc, "MATH_VERIFY_TARGET", "slow_verifier_mod:verify")
    before = acc.accuracy_stats()

    result = {}
    t = threading.Thread(
        target=lambda: result.setdefault("r", accuracy_reward(r"\boxed{x+1}", "1+x", timeout=0.5))
    )
    t.start()
    t.join(timeout=50)
    assert not t.is_alive()
    assert result == {"r": 0.0}
    after = acc.accuracy_stats()
    assert after["timeouts"] == before["timeouts"] + 1
    assert fresh_pool.timeouts == 1
    # Plain numbers never reach the worker, so they still score while the verifier is broken.
    assert accuracy_reward(r"\boxed{4}", "4", timeout=0.5) == 1.0


def test_pool_recovers_after_timeout_and_reports_errors(fresh_pool):
    with pytest.raises(to.CallTimeout):
        fresh_pool.call("time:sleep", (60,), timeout=0.3)
    assert fresh_pool.call("math:sqrt", (16.0,), timeout=30) == 4.0  # a fresh worker
    with pytest.raises(to.WorkerError, match="math domain error"):
        fresh_pool.call("math:sqrt", (-1.0,), timeout=30)
    assert fresh_pool.call("math:hypot", (3.0, 4.0), timeout=30) == 5.0  # same worker, still up
    assert fresh_pool.timeouts == 1


def test_pool_from_worker_threads_with_a_hung_call(fresh_pool):
    """Callers on executor threads, one worker: a call that sleeps forever is cut at its 0.5 s
    limit (well before its 60 s), the calls queued behind it still get answers, and the pool
    serves the next call."""
    with ThreadPoolExecutor(max_workers=4) as ex:
        start = time.monotonic()
        hung = ex.submit(fresh_pool.call, "time:sleep", (60,), 0.5)
        roots = [ex.submit(fresh_pool.call, "math:sqrt", (float(x * x),), 30) for x in range(6)]
        with pytest.raises(to.CallTimeout, match="no answer within 0.5 s"):
            hung.result()
        assert time.monotonic() - start < 10
        assert [f.result() for f in roots] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert fresh_pool.call("math:hypot", (3.0, 4.0), timeout=30) == 5.0
    assert fresh_pool.timeouts == 1


def test_pool_replaced_after_a_worker_dies_while_idle(fresh_pool):
    """pebble declares a pool broken when a worker dies outside a task (the OOM killer, say);
    the next call runs on a fresh pool instead of failing."""
    pid = fresh_pool.call("os:getpid", timeout=30)
    (worker,) = [p for p in multiprocessing.active_children() if p.pid == pid]
    os.kill(pid, signal.SIGKILL)
    worker.join(10)
    assert worker.exitcode == -signal.SIGKILL
    assert fresh_pool.call("math:sqrt", (9.0,), timeout=30) == 3.0
    time.sleep(0.5)  # pebble has now seen the death too
    assert fresh_pool.call("math:sqrt", (4.0,), timeout=30) == 2.0


def test_a_call_whose_pool_breaks_while_it_waits_moves_to_a_fresh_pool(fresh_pool, monkeypatch):
    """The race behind a 150 s stall: pebble breaks the pool (a worker died while idle) just
    after a task was queued, and that task is never run. Here the first pool takes the task
    into a future that never completes and then reports itself broken; the call notices
    within a poll and answers from a fresh pool, in seconds rather than after its whole wait."""
    from concurrent.futures import Future

    first = fresh_pool._active_pool()
    stuck: Future = Future()

    def schedule_then_break(*args, **kwargs):
        monkeypatch.setattr(type(first), "active", property(lambda pool: pool is not first))
        return stuck

    monkeypatch.setattr(first, "schedule", schedule_then_break)
    start = time.monotonic()
    assert fresh_pool.call("math:sqrt", (9.0,), timeout=30) == 3.0
    assert time.monotonic() - start < 30 + to.POLL_SECONDS  # not startup_timeout + timeout
    assert fresh_pool._pool is not first and stuck.cancelled()


def test_worker_error_scores_zero(monkeypatch, fresh_pool):
    """A verifier that fails: the answer is wrong (0.0), and the failure is counted."""
    monkeypatch.setattr(acc, "MATH_VERIFY_TARGET", "math:no_such_function")
    before = acc.accuracy_stats()["worker_errors"]
    assert accuracy_reward(r"\boxed{x+1}", "1+x") == 0.0
    assert acc.accuracy_stats()["worker_errors"] == before + 1


def test_unparsable_prediction_is_wrong_unparsable_reference_is_none():
    """math-verify parses neither "???" nor "@@": as a prediction it is wrong, as a reference
    the pair cannot be scored."""
    assert accuracy_reward(r"\boxed{@@}", r"\frac{1}{2}") == 0.0
    assert accuracy_reward(r"\boxed{\frac{1}{2}}", "@@") is None


@pytest.mark.slow
def test_a_script_without_a_main_guard_scores_correctly(tmp_path):
    """The verification workers do not re-run the caller's script: a plain script (no
    ``if __name__ == "__main__":``) gets 1.0 for a correct answer, once, and no
    multiprocessing bootstrapping error (it printed one per worker and got 0.0 before)."""
    import subprocess
    import sys

    script = tmp_path / "score.py"
    script.write_text(
        "from r1v2.rewards import accuracy_reward\n"
        "print('score', accuracy_reward('\\\\boxed{\\\\frac{1}{2}}', '0.5'))\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["score 1.0"]
    assert "bootstrapping" not in done.stderr
