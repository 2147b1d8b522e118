"""code_reward: extraction, the three kinds of tests, and the sandbox's protections.

Every test that runs code starts real subprocesses (about 0.1 s each). The protections that
depend on the machine (the uid drop, RLIMIT_NPROC, the namespaces, the private /tmp) skip with
the reason where :func:`sandbox_info` says they are not available.

Hostile cases (14), each asserting containment:

1. an infinite loop (and a sleeper) is killed at the deadline: test_infinite_loop_is_killed
2. a fork bomb dies against RLIMIT_NPROC: test_fork_bomb_is_contained
3. children that outlive the timeout, in the process group or in a session of their own, are
   gone when the reward returns: test_children_that_outlive_the_timeout_are_killed
4. a memory bomb fails against RLIMIT_AS: test_memory_hog_fails
5. a flood of output is cut at MAX_OUTPUT_BYTES: test_huge_output_is_capped
6. a huge file is stopped by RLIMIT_FSIZE: test_huge_file_is_stopped_by_fsize
7. writing outside the temporary folder: /tmp, /var/tmp, /dev/shm are private and the parent's
   folders are not writable: test_writing_outside_the_working_dir_is_contained (and
   test_working_dir_is_fresh_and_removed)
8. reading an env var set in the parent, directly or through /proc/PID/environ:
   test_environment_secrets_are_not_inherited
9. a socket to 127.0.0.1: test_network_is_unreachable
10. killing the parent process (its pid, the process group, every process):
    test_killing_the_parent_is_contained
11. reading root's files: test_code_runs_unprivileged_when_root
12. a solution that never reads its (large) input: test_a_solution_that_never_reads_its_input
13. a correct and a wrong solution: test_correct_solution_scores_one_and_wrong_zero
14. reading the host's world-readable files (the project, the data and its answers, /etc,
    /root): test_host_files_cannot_be_read, test_the_answers_file_cannot_be_printed
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1v2.rewards import code as code_mod
from r1v2.rewards import code_reward, code_rewards
from r1v2.rewards.code import MAX_OUTPUT_BYTES, extract_code, outputs_match, sandbox_info


def block(src: str) -> str:
    return f"Here is the program.\n```python\n{src}\n```\n"


DOUBLE = block("n = int(input())\nprint(n * 2)")
STDIO = [{"input": "3\n", "output": "6\n"}, {"input": "10\n", "output": "20\n"}]


def test_extract_code_takes_the_last_python_block_after_think():
    text = "<think>\n```python\nA\n```\n</think>\n```text\nB\n```\n```py\nC\n```\n```\nD\n```"
    assert extract_code(text) == "C\n"  # tagged blocks win over untagged ones
    assert extract_code("```\nD\n```") == "D\n"
    assert extract_code("<think>```python\nA\n```</think> no code") is None
    assert extract_code("```python\nunclosed") is None


def test_correct_solution_scores_one_and_wrong_zero():
    assert code_reward(DOUBLE, STDIO) == 1.0
    assert code_reward(block("print(int(input()) * 3)"), STDIO) == 0.0
    assert code_reward(block("raise SystemExit(1)"), [{"input": "", "output": ""}]) == 0.0


def test_asserts_give_partial_credit():
    tests = "assert f(1) == 2\nassert f(2) == 3\nassert f(3) == 5\n"
    assert code_reward(block("def f(x):\n    return x + 1"), tests) == pytest.approx(2 / 3)
    # setup statements run, an assert that raises fails only itself
    tests = "import math\nassert g(4) == 2\nassert g(-1) == 0\nassert g(9) == math.sqrt(9)"
    assert code_reward(block("import math\ng = math.sqrt"), tests) == pytest.approx(2 / 3)


def test_stdio_ignores_trailing_whitespace_but_not_content():
    code = block("print('6   ')\nprint()\nprint()")
    assert code_reward(code, [{"input": "", "output": "6"}]) == 1.0
    assert code_reward(block("print('1 2 \\n 3')"), [{"input": "", "output": "1 2\n3\n"}]) == 1.0
    assert code_reward(block("print('a  b')"), [{"input": "", "output": "a b"}]) == 0.0
    assert code_reward(block("print('1 2')"), [{"input": "", "output": "1 2\n3"}]) == 0.0


def test_stdio_numbers_compare_as_decimals_like_livecodebench():
    """A line that differs as text matches when both split into the same decimals."""
    assert outputs_match("1.50  2\n", "1.5 2.0") and outputs_match("-0", "0")
    assert not outputs_match("1.5 2", "1.5 2 0") and not outputs_match("1.51", "1.5")
    assert not outputs_match("0.1 x", "0.10 x")  # a word: the line compares as text only
    assert outputs_match("NaN", "NaN") and not outputs_match("sNaN", "1")
    assert code_reward(block("print(3 / 2)"), [{"input": "", "output": "1.50"}]) == 1.0


def test_stdin_is_readable_as_a_file():
    code = block("import sys\nprint(sum(map(int, sys.stdin.read().split())))")
    assert code_reward(code, [{"input": "1 2\n3\n", "output": "6"}]) == 1.0


FUNCTIONAL = {
    "func_name": "twoSum",
    "cases": [
        {"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]"},
        {"input": "[3, 2, 4]\n6", "output": "[1, 2]"},
        {"input": "[3, 3]\n6", "output": "[0, 1]"},
    ],
}
TWO_SUM = """
    seen = {}
    for i, x in enumerate(nums):
        if target - x in seen:
            return (seen[target - x], i)
        seen[x] = i
"""


def test_functional_with_class_solution_and_top_level_function():
    cls = block(
        "class Solution:\n    def twoSum(self, nums, target):" + TWO_SUM.replace("\n", "\n    ")
    )
    assert code_reward(cls, FUNCTIONAL) == 1.0  # a returned tuple compares as a list
    top = block("def twoSum(nums, target):" + TWO_SUM)
    assert code_reward(top, FUNCTIONAL) == 1.0
    wrong = block("def twoSum(nums, target):\n    return [0, 1]")
    assert code_reward(wrong, FUNCTIONAL) == pytest.approx(2 / 3)
    assert code_reward(block("def other(): pass"), FUNCTIONAL) == 0.0


def test_functional_accepts_an_object_with_the_attributes():
    class Tests:
        func_name = "twoSum"
        cases = FUNCTIONAL["cases"]

    assert code_reward(block("def twoSum(nums, target):" + TWO_SUM), Tests()) == 1.0


def test_only_code_after_think_counts():
    wrong = "```python\nprint(0)\n```"
    right = "```python\nprint(int(input()) * 2)\n```"
    assert code_reward(f"<think>\n{right}\n</think>\n{wrong}", STDIO) == 0.0
    assert code_reward(f"<think>\n{wrong}\n</think>\n{right}", STDIO) == 1.0
    assert code_reward(f"<think>\n{right}\n</think>\nNo code, sorry.", STDIO) == 0.0


def test_no_code_block_scores_zero():
    assert code_reward("print(6)", STDIO) == 0.0


@pytest.mark.parametrize(
    "tests",
    [
        42,
        None,
        [],
        [{"input": 1, "output": "2"}],
        [{"input": "1"}],
        ["1"],
        "x = 1",  # no assert
        "assert (",  # does not parse
        {"func_name": "f", "cases": []},
        {"func_name": "", "cases": [{"input": "1", "output": "1"}]},
        {"func_name": "f", "cases": [{"input": "not json", "output": "1"}]},
        {"func_name": "f", "cases": [{"input": "1", "output": "nope"}]},
    ],
)
def test_malformed_tests_give_none(tests):
    assert code_reward(DOUBLE, tests) is None


def test_infinite_loop_is_killed():
    start = time.monotonic()
    assert code_reward(block("while True:\n    pass"), STDIO, timeout_s=1.0) == 0.0
    sleeper = block("import time\ntime.sleep(3600)")
    assert code_reward(sleeper, "assert True\nassert True", timeout_s=1.0) == 0.0
    # one loop per stdio case would be 2 x (1 s + start-up grace); the first timeout ends it
    assert time.monotonic() - start < 15


def test_a_test_that_loops_keeps_the_credit_of_the_earlier_ones():
    code = block("def f(x):\n    while x == 3:\n        pass\n    return x")
    tests = "assert f(1) == 1\nassert f(2) == 2\nassert f(3) == 3\nassert f(4) == 4"
    assert code_reward(code, tests, timeout_s=1.0) == 0.5


def test_fork_bomb_is_contained():
    info = sandbox_info()
    if not info["nproc_limit"]:
        pytest.skip(
            "RLIMIT_NPROC is not effective here (root without a working drop to 'nobody', "
            f"or no user namespace): {info}"
        )
    bomb = block("import os\nwhile True:\n    os.fork()")
    start = time.monotonic()
    assert code_reward(bomb, [{"input": "", "output": "x"}], timeout_s=1.0) == 0.0
    assert time.monotonic() - start < 15
    assert code_reward(DOUBLE, STDIO) == 1.0  # the machine still forks


def test_memory_hog_fails():
    hog = block("x = bytearray(2 * 1024**3)\nprint('ok')")
    assert code_reward(hog, [{"input": "", "output": "ok"}], memory_mb=512) == 0.0
    small = block("x = bytearray(16 * 1024**2)\nprint('ok')")
    assert code_reward(small, [{"input": "", "output": "ok"}], memory_mb=512) == 1.0


def test_environment_secrets_are_not_inherited(monkeypatch):
    monkeypatch.setenv("R1V2_SECRET", "hunter2")
    code = block("import os\nprint(os.environ.get('R1V2_SECRET', 'absent'))")
    assert code_reward(code, [{"input": "", "output": "absent"}]) == 1.0
    scan = block(
        "import os\n"
        "found = 'clean'\n"
        "for pid in os.listdir('/proc'):\n"
        "    try:\n"
        "        if b'hunter2' in open(f'/proc/{pid}/environ', 'rb').read():\n"
        "            found = 'leak'\n"
        "    except OSError:\n"
        "        pass\n"
        "print(found)"
    )
    assert code_reward(scan, [{"input": "", "output": "clean"}]) == 1.0


def test_code_runs_unprivileged_when_root():
    info = sandbox_info()
    if not (info["root"] and info["drops_to_user"]):
        pytest.skip(f"not root, or the switch to 'nobody' does not work here: {info}")
    code = block(
        "import os, heapq\n"
        "print(os.getuid())\n"
        "try:\n"
        "    open('/etc/shadow').read()\n"
        "    print('read')\n"
        "except OSError:\n"
        "    print('denied')"
    )
    assert code_reward(code, [{"input": "", "output": "65534\ndenied"}]) == 1.0


def test_working_dir_is_fresh_and_removed(monkeypatch):
    code_mod._get_sandbox()  # the once-per-process sandbox probe makes a folder of its own
    made = []
    real_mkdtemp = code_mod.tempfile.mkdtemp

    def mkdtemp(**kw):
        made.append(real_mkdtemp(**kw))
        return made[-1]

    monkeypatch.setattr(code_mod.tempfile, "mkdtemp", mkdtemp)
    code = block("import os\nopen('left_behind.txt', 'w').write('x')")
    tests = (
        "import os\n"
        "assert os.path.basename(os.getcwd()).startswith('r1v2-code-')\n"
        "assert sorted(os.listdir('.')) == ['left_behind.txt']\n"
    )
    assert code_reward(code, tests) == 1.0
    assert code_reward(code, tests) == 1.0  # the file of the first run is not there
    assert len(made) == 2 and made[0] != made[1]
    assert not any(os.path.exists(d) for d in made)


def test_huge_file_is_stopped_by_fsize():
    big = block("open('f', 'wb').write(b'x' * (64 << 20))\nprint('done')")
    assert code_reward(big, [{"input": "", "output": "done"}]) == 0.0
    small = block("open('f', 'wb').write(b'x' * (1 << 20))\nprint('done')")
    assert code_reward(small, [{"input": "", "output": "done"}]) == 1.0


def test_huge_output_is_capped():
    flood = block("import sys\nsys.stdout.write('x' * (100 << 20))")
    res = code_mod._run({"mode": "stdio", "code": extract_code(flood)}, "", 10.0, 1024)
    assert res.truncated and len(res.stdout) == MAX_OUTPUT_BYTES
    assert code_reward(flood, [{"input": "", "output": "x" * 10}]) == 0.0


def test_network_is_unreachable():
    info = sandbox_info()
    if not info["network_isolated"]:
        pytest.skip(f"no network namespace (unshare) on this machine: {info}")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        probe = socket.create_connection(("127.0.0.1", port), timeout=5)  # open from here
        probe.close()
        code = block(
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    print('connected')\n"
            "except OSError:\n"
            "    print('blocked')"
        )
        assert code_reward(code, [{"input": "", "output": "blocked"}]) == 1.0


def _processes_with(marker: str) -> list[int]:
    """Pids of live processes whose command line contains ``marker``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(pid))
    return found


def test_children_that_outlive_the_timeout_are_killed():
    info = sandbox_info()
    # A child in a session of its own leaves the process group: only a PID namespace ends it.
    detach = [False, True] if info["pid_namespace"] else [False]
    marker = f"{secrets.randbelow(10**6)}.{secrets.randbelow(10**6)}"  # a unique sleep length
    code = block(
        "import os, time\n"
        f"for detach in {detach}:\n"
        "    if os.fork() == 0:\n"
        "        if detach:\n"
        "            os.setsid()\n"
        f"        os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
        "time.sleep(0.5)\n"
        "print('children started', flush=True)\n"
        "time.sleep(3600)"  # the parent outlives the timeout too
    )
    probe = subprocess.Popen(["sleep", marker])  # the check finds such a process
    try:  # once it has exec'd: Popen may return while the child is still python
        deadline = time.monotonic() + 10
        while _processes_with(f"sleep {marker}") != [probe.pid] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _processes_with(f"sleep {marker}") == [probe.pid]
    finally:
        probe.kill()
        probe.wait()
    start = time.monotonic()
    assert code_reward(code, [{"input": "", "output": "x"}], timeout_s=1.0) == 0.0
    assert time.monotonic() - start < 15
    time.sleep(0.5)
    left = _processes_with(f"sleep {marker}")
    for pid in left:  # do not leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"children survived the sandbox: {left} ({info})"
    if not info["pid_namespace"]:
        pytest.skip(f"no PID namespace: a child that calls setsid() would survive ({info})")


def test_writing_outside_the_working_dir_is_contained():
    info = sandbox_info()
    name = f"r1v2-escape-{secrets.token_hex(8)}"
    shared = [f"/tmp/{name}", f"/var/tmp/{name}", f"/dev/shm/{name}"]
    parent = str(Path(__file__).parent / name)  # a folder of the parent's own, not /tmp
    targets = shared + [parent]
    code = block(
        "import os\n"
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        with open(path, 'w') as f:\n"
        "            f.write('escaped')\n"
        "    except OSError:\n"
        "        pass\n"
        "print('ran')"
    )
    try:
        assert code_reward(code, [{"input": "", "output": "ran"}]) == 1.0
        if info["private_tmp"]:
            assert [p for p in shared if os.path.exists(p)] == []
        if info["drops_to_user"]:
            assert not os.path.exists(parent)
    finally:
        for path in targets:
            if os.path.exists(path):
                os.unlink(path)
    if not (info["private_tmp"] and info["drops_to_user"]):
        pytest.skip(f"no private /tmp or no uid drop here: only part was checked ({info})")


def test_killing_the_parent_is_contained():
    info = sandbox_info()
    if not (info["pid_namespace"] or info["drops_to_user"]):
        pytest.skip(f"no PID namespace and no uid drop: the code could kill our processes ({info})")
    # A process of the parent's user stands in for the parent: the code is given its pid.
    stand_in = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        code = block(
            "import os, signal\n"
            f"for pid in (os.getppid(), {stand_in.pid}, 0, -1, 1):\n"
            "    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n"
            "    except OSError:\n"
            "        pass\n"
            "try:\n"
            "    os.killpg(os.getpgrp(), signal.SIGKILL)\n"
            "except OSError:\n"
            "    pass\n"
            "print('still here')"
        )
        score = code_reward(code, [{"input": "", "output": "still here"}])
        assert score in (0.0, 1.0)  # it may kill itself; it reaches nothing of ours
        assert stand_in.poll() is None
        assert code_reward(DOUBLE, STDIO) == 1.0  # and the scorer still works
    finally:
        stand_in.kill()
        stand_in.wait()


def test_a_solution_that_never_reads_its_input():
    big = "1 " * (2 << 20)  # 4 MB on stdin, far over a pipe's buffer
    start = time.monotonic()
    assert code_reward(block("print(42)"), [{"input": big, "output": "42"}]) == 1.0
    assert code_reward(block("print(41)"), [{"input": big, "output": "42"}]) == 0.0
    assert time.monotonic() - start < 15


def test_prelude_runs_before_the_solution():
    code = block("class Solution:\n    def f(self, xs: List[int]) -> int:\n        return sum(xs)")
    tests = {"func_name": "f", "cases": [{"input": "[1, 2]", "output": "3"}]}
    assert code_reward(code, tests) == 0.0  # List is not defined
    assert code_reward(code, tests, prelude="from typing import *") == 1.0
    stdio = [{"input": "", "output": "3.0"}]
    assert code_reward(block("print(sqrt(9))"), stdio, prelude="from math import *") == 1.0


def test_parallel_scoring_matches_sequential():
    completions = [
        DOUBLE,
        block("print(0)"),
        block("def f(x):\n    return x + 1"),
        "no code",
        block("def twoSum(nums, target):" + TWO_SUM),
        DOUBLE,
    ]
    tests = [STDIO, STDIO, "assert f(1) == 2\nassert f(1) == 3", STDIO, FUNCTIONAL, []]
    sequential = [code_reward(c, t) for c, t in zip(completions, tests)]
    assert sequential == [1.0, 0.0, 0.5, 0.0, 1.0, None]
    assert code_rewards(completions, tests, workers=2) == sequential
    with pytest.raises(ValueError):
        code_rewards(completions, tests[:2])


# ---- wiring: the hybrid reward and the Sample loader ----------------------------------------


def test_hybrid_reward_scores_code_samples_by_their_tests():
    from r1v2.data.schema import Sample
    from r1v2.rewards import HybridReward

    tests = [{"input": "2 3\n", "output": "5\n"}, {"input": "1 1\n", "output": "2\n"}]
    code = Sample("c", "add", (), "-", kind="code", metadata={"tests": tests})
    maths = Sample("m", "1+1", (), "2", kind="math")
    good = "reason </think>\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    half = "reason </think>\n```python\nprint(5)\n```"
    drafted = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"  # no </think>
    reward = HybridReward({"accuracy": 1.0})
    result = reward([good, half, drafted, r"x </think> \boxed{2}"], [code, code, code, maths])
    assert result.components["accuracy"] == [1.0, 0.5, 0.0, 1.0]


def test_a_code_sample_with_malformed_tests_is_a_row_problem(tmp_path):
    from r1v2.data.loaders import load_samples

    rows = [
        {
            "id": "ok",
            "question": "q",
            "answer": "-",
            "kind": "code",
            "metadata": {"tests": "assert f(1) == 2"},
        },
        {
            "id": "bad",
            "question": "q",
            "answer": "-",
            "kind": "code",
            "metadata": {"tests": [{"input": 1}]},
        },
        {"id": "none", "question": "q", "answer": "-", "kind": "code"},
        {
            "id": "slow",
            "question": "q",
            "answer": "-",
            "kind": "code",
            "metadata": {"tests": "assert True", "timeout_s": 0, "memory_mb": 1.5, "prelude": 3},
        },
    ]
    path = tmp_path / "code.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = load_samples(path, on_bad="skip")
    assert [s.id for s in result.samples] == ["ok"]
    messages = [str(p) for p in result.problems]
    assert any(":2: field 'metadata.tests': malformed" in m for m in messages), messages
    assert any(":3: field 'metadata.tests': missing" in m for m in messages), messages
    # the settings scoring reads are refused at load time too, each by its field
    for field in ("timeout_s", "memory_mb", "prelude"):
        assert any(f":4: field 'metadata.{field}'" in m for m in messages), messages


def test_data_check_names_a_code_sample_with_malformed_tests(tmp_path, capsys):
    from r1v2.cli import main

    good = {"input": "1\n", "output": "2\n"}
    rows = [
        {"id": "ok", "question": "q", "answer": "-", "kind": "code", "metadata": {"tests": [good]}},
        {"id": "bad", "question": "q", "answer": "-", "kind": "code", "metadata": {"tests": "x"}},
    ]
    path = tmp_path / "code.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:2: field 'metadata.tests': malformed" in out, out
    assert "1 samples loaded, 1 rows with problems" in out, out


PROJECT = Path(__file__).resolve().parent.parent


def own_root_or_skip():
    info = sandbox_info()
    if not info["own_root"]:
        pytest.skip(f"no root of its own here (mount namespace, pivot_root): {info}")


def test_host_files_cannot_be_read(tmp_path):
    """A solution that prints the first line of the project's pyproject.toml, for a test that
    expects exactly that line, scores 0; so does every other host path tried."""
    own_root_or_skip()
    first = (PROJECT / "pyproject.toml").read_text().splitlines()[0]
    leak = block(f"print(open({str(PROJECT / 'pyproject.toml')!r}).readline().strip())")
    assert code_reward(leak, [{"input": "", "output": first}]) == 0.0
    (tmp_path / "data.jsonl").write_text('{"answer": "42"}\n')
    files = [
        PROJECT / "pyproject.toml",
        PROJECT / "README.md",
        PROJECT / "src" / "r1v2" / "__init__.py",
        tmp_path / "data.jsonl",
        Path(code_mod.__file__),
        *[Path("/etc") / n for n in ("passwd", "group", "hostname", "hosts", "shadow")],
        Path.home() / ".bashrc",
        Path("/proc/1/environ"),
    ]
    # Folders: nothing in them but the path down to the Python installation (and the
    # dynamic linker's cache in /etc).
    folders = [PROJECT, tmp_path, Path("/etc"), Path("/etc/ssh"), Path.home(), Path("/work")]
    python = [*Path(sys.base_prefix).parts, "ld.so.cache"]
    probe = block(
        "import os\n"
        "def readable(p):\n"
        "    try:\n"
        "        with open(p, 'rb') as f:\n"
        "            return bool(f.read(1))\n"
        "    except OSError:\n"
        "        return False\n"
        "def listed(p, allowed):\n"
        "    try:\n"
        "        return [n for n in os.listdir(p) if n not in allowed]\n"
        "    except OSError:\n"
        "        return []\n"
        f"seen = [p for p in {[str(p) for p in files]!r} if readable(p)]\n"
        f"seen += [p for p in {[str(p) for p in folders]!r} if listed(p, {list(python)!r})]\n"
        "print(seen or 'none')"
    )
    assert code_reward(probe, [{"input": "", "output": "none"}]) == 1.0


def test_the_standard_library_works_in_its_own_root():
    """What solutions use still imports: the extension modules load their system libraries."""
    own_root_or_skip()
    code = block(
        "import ssl, hashlib, zlib, sqlite3, ctypes, decimal, fractions, heapq, bisect, json\n"
        "import typing, functools, itertools, collections, math, re, random, string\n"
        "print(hashlib.sha256(b'x').hexdigest()[:8], zlib.crc32(b'x'), random.Random(0).random() < 1)"
    )
    assert code_reward(code, [{"input": "", "output": "2d711642 2363233923 True"}]) == 1.0


def test_the_answers_file_cannot_be_printed(tmp_path):
    """A code sample whose expected output is the start of a toy build's test set (the
    benchmark's answers): a solution that prints that file scores 0 through
    sample_code_reward, as training and eval score it."""
    own_root_or_skip()
    from r1v2.data.synthetic import generate
    from r1v2.rewards.code import sample_code_reward

    generate(3, 0, tmp_path / "data" / "test")
    answers = tmp_path / "data" / "test" / "samples.jsonl"
    head = answers.read_text()[:40]
    cheat = block(f"print(open({str(answers)!r}).read()[:40])")
    meta = {"tests": [{"input": "", "output": head}]}
    assert sample_code_reward(cheat, meta) == 0.0
