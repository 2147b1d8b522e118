"""The code reward: run a completion's last Python block against tests in a sandboxed process.

``code_reward(completion, tests)`` takes the last fenced Python block of the completion (after
``</think>`` when there is one; a block inside the reasoning is ignored) and returns the
fraction of tests it passes, in [0, 1]. No block: 0.0. Tests that cannot be scored (wrong
types, an empty list, asserts that do not parse, functional cases that are not JSON): None.

Three kinds of tests:

- a list of ``{"input": str, "output": str}`` cases: the program reads ``input`` on stdin and
  its stdout is compared with ``output`` the way LiveCodeBench does (whole text stripped,
  split into lines, each line stripped; the same number of lines, each equal as text or, split
  at whitespace, as a list of decimal numbers: ``1.50`` matches ``1.5``). One process per
  case; after a case times out the remaining cases are counted as failed without running them
  (our choice, to bound the time a looping program costs; LiveCodeBench stops at the first
  failure of any kind).
- a string of Python statements: each top-level ``assert`` is one test, run after the
  solution in the same process, one by one, so 2 of 3 passing scores 2/3. Other top-level
  statements (imports, helpers) run as setup, their errors ignored.
- LiveCodeBench functional tests: ``{"func_name": str, "cases": [{"input", "output"}]}`` (or
  any object with those attributes). Each line of ``input`` is one JSON argument, ``output``
  the JSON of the expected return value; tuples compare as lists. The solution may define
  ``class Solution`` with the method (LeetCode style, a fresh instance per case) or a
  top-level function.

``prelude``: source run before the solution, in its namespace (LiveCodeBench puts a block of
standard-library imports, ``typing`` included, before every solution: see
``r1v2.eval.livecodebench``).

In the assert and functional modes the solution runs with ``__name__ == "solution"``, so its
``if __name__ == "__main__":`` block does not run; ``timeout_s`` applies to the solution's own
top-level code and to each test (a ``setitimer`` alarm), and the first timeout ends the run.
Their results travel back on stdout lines tagged with a per-run nonce; code that inspects the
runner's frames could forge them, so these two modes are not proof against adversarial code
(the stdin/stdout mode is: its comparison happens in this process).

The sandbox, per process (what works is detected once, at the first call; see
:func:`sandbox_info`):

- ``sys.executable -I`` in a fresh temporary working directory, removed afterwards; the
  environment is scrubbed to PATH, LANG, HOME/TMPDIR (the temp dir), PYTHONHASHSEED=0 and
  one-thread settings for BLAS, so nothing of the parent's environment (secrets) is inherited.
- resource limits set by the runner before the solution runs: RLIMIT_AS = ``memory_mb``,
  RLIMIT_CPU (the wall budget rounded up, plus 1 s), RLIMIT_FSIZE (:data:`MAX_FILE_BYTES`),
  RLIMIT_CORE = 0, and RLIMIT_NPROC (:data:`MAX_PROCESSES`) only where it is effective: the
  kernel counts it per user and never applies it to uid 0, so it is set only when the code
  runs as ``nobody`` (then all concurrent sandboxes share that user's count) or in a user
  namespace of its own.
- a wall-clock deadline after which the whole process group is killed (``start_new_session``
  and ``os.killpg``); with a PID namespace (``unshare --pid --fork --kill-child``) every
  process the code forked dies with it, even one that left the process group, and with
  ``--mount-proc`` the code sees only its own processes in ``/proc`` (not the parent's
  ``/proc/PID/environ``).
- stdout read up to :data:`MAX_OUTPUT_BYTES`; a process that writes more is killed and fails.
- a root of its own: in the mount namespace that ``--mount-proc`` makes, the runner builds a
  small tmpfs root with read-only binds of the system libraries and the standard library (its
  site-packages hidden), ``/etc/ld.so.cache``, ``/dev/null`` and the random devices, a fresh
  ``/proc``, empty ``/tmp``, ``/var/tmp``, ``/dev/shm`` and ``/run/lock`` (private, discarded
  with the namespace) and the working directory at its own path, and ``pivot_root`` s into it
  (:data:`_ROOT`). No other host path exists for the code: not the project, its data, the
  benchmark's answers, ``/etc`` or ``/root``. Third-party packages (numpy) are not there
  either: solutions get the standard library, as LiveCodeBench's do. Where this fails
  (detected once), the code sees the host's filesystem (a warning is logged) and gets:
- a private ``/tmp``: in the mount namespace that ``--mount-proc`` makes, the runner bind-mounts
  the temporary working directory over the world-writable directories (:data:`PRIVATE_DIRS`:
  ``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run/lock``) before it drops privileges, so what the
  code writes there lands in the working directory and is removed with it, and it cannot read
  what other processes left there. Where the mount fails (detected once), they stay shared.
- no network, through ``unshare --net`` (as root) or ``unshare -rn`` (a user namespace,
  otherwise): a new network namespace with only a downed loopback. Where neither works, the
  code runs with network access and this is logged once (a warning).
- as root, the code runs as ``nobody``: the runner calls setgroups/setgid/setuid after the
  limits, before the solution. An interpreter that ``nobody`` cannot reach (pyenv under a
  private ``/root``) still works: its import directories are opened before the switch and
  imported through ``/proc/self/fd`` (see ``_DROP``), which lets ``nobody`` read the Python
  installation but not the rest of ``/root``. Where the switch fails (no ``nobody``, or the
  standard library still does not import), the code runs as root, which can read and write
  everything root can: this is logged once (a warning).
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import pwd
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from r1v2.errors import R1V2Error
from r1v2.rewards.answers import THINK_CLOSE

log = logging.getLogger(__name__)

TIMEOUT_S = 4.0  # seconds per test, when neither the caller nor the sample sets one
MEMORY_MB = 1024  # the solution's address-space limit, when neither sets one
MAX_OUTPUT_BYTES = 1 << 20  # stdout read per process; more kills the process
MAX_FILE_BYTES = 16 << 20  # RLIMIT_FSIZE: the largest file the code may write
MAX_PROCESSES = 64  # RLIMIT_NPROC (tasks, threads included), where it is effective
_STARTUP_GRACE_S = 2.0  # interpreter start-up under load, on top of the time budget
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
# World-writable directories the runner covers with its working directory (a private /tmp).
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
# What the sandbox's own root binds from the host, read-only (with the standard library).
SYSTEM_LIBS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")

# A fence: ``` and an info string, the body, then ``` at the start of a line.
_BLOCK = re.compile(r"```([^\n`]*)\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
_PYTHON_TAGS = {"python", "python3", "py"}

# Switch to (uid, gid). The interpreter may live where that user cannot search (pyenv under a
# private /root): each sys.path directory is opened first and imported through its
# /proc/self/fd/N link, which the kernel follows without checking the directories above it.
# The user can then read the (world-readable) Python installation, not the rest of /root.
_DROP = r"""
import os, sys

def drop(uid, gid):
    links = {}
    for path in sys.path:
        if os.path.isdir(path):
            links[path] = "/proc/self/fd/%d" % os.open(path, os.O_RDONLY | os.O_DIRECTORY)

    def relink(path):
        for old, new in links.items():
            if path == old or path.startswith(old + "/"):
                return new + path[len(old):]
        return path

    sys.path[:] = list(links.values())
    for module in list(sys.modules.values()):  # packages imported already (encodings)
        if isinstance(getattr(module, "__path__", None), list):
            module.__path__[:] = [relink(p) for p in module.__path__]
    sys.path_importer_cache.clear()
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
"""
_PROBE_MODULES = "json, collections, heapq, math, fractions, decimal, re, socket, encodings.idna"
_DROP_PROBE = _DROP + f"drop(int(sys.argv[1]), int(sys.argv[2]))\nimport {_PROBE_MODULES}\n"

# Bind-mount the working directory over each existing directory of ``targets`` (in a mount
# namespace of our own); the source is opened first, as /tmp itself may hold it.
_PRIVATE = r"""
def private_dirs(targets):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    source = ("/proc/self/fd/%d" % fd).encode()
    for target in targets:
        if os.path.isdir(target) and libc.mount(source, target.encode(), None, 4096, None):
            os._exit(3)  # 4096: MS_BIND. Detected as working: no run rather than a shared /tmp
    os.close(fd)
"""
# A root of nothing but what Python needs (in the mount namespace of our own): a small tmpfs
# mounted over the working directory (the host's copy stays as it is), holding read-only binds
# of the system libraries (``/usr/lib``, ``/lib``: extension modules load them) and of the
# standard library (its site-packages covered by an empty tmpfs), ``/etc/ld.so.cache``, a few
# devices, a fresh ``/proc``, empty ``/tmp``-style folders, and the working directory at its
# own path; then ``pivot_root`` into it and the old root detached. Any other host path, the
# project and its data included, does not exist for the code.
_ROOT = r"""
def private_root(spec):
    import ctypes, platform
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
    KEEP = {2: NOSUID, 4: NODEV, 8: NOEXEC, 1024: 1024, 2048: 2048, 4096: 1 << 21}

    def mount(src, dst, kind, flags, data=None):
        if libc.mount(src and src.encode(), dst.encode(), kind and kind.encode(), flags,
                      data and data.encode()):
            raise OSError(ctypes.get_errno(), "mount %s" % dst)

    def bind(src, dst, read_only=True):
        if os.path.isdir(src):
            os.makedirs(dst, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            open(dst, "a").close()
        mount(src, dst, None, BIND | REC)
        if read_only:  # a bind's remount keeps the flags the kernel locked on the source
            f = os.statvfs(dst).f_flag
            kept = sum(v for k, v in KEEP.items() if f & k)
            mount(None, dst, None, REMOUNT | BIND | RDONLY | NOSUID | kept)

    work = os.getcwd()
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    mount(None, "/", None, REC | PRIVATE)
    mount("tmpfs", work, "tmpfs", NOSUID | NODEV, "size=%dk,mode=755" % spec["size_kb"])
    new = work  # the new root's tree is built under it, then it becomes /
    done = []
    for path in spec["read_only"]:
        if os.path.islink(path) and path.count("/") == 1:  # /lib -> usr/lib
            os.symlink(os.readlink(path), new + path)
        elif os.path.exists(path) and not any(path.startswith(d + "/") for d in done):
            bind(path, new + path)
            done.append(path)
    for path in spec["hidden"]:  # site-packages inside a bound tree: an empty tmpfs over it
        if os.path.isdir(new + path):
            mount("tmpfs", new + path, "tmpfs", RDONLY | NOSUID | NODEV, "size=4k")
    for path in spec["devices"]:
        if os.path.exists(path):
            bind(path, new + path, read_only=False)
    for path in spec["scratch"]:
        os.makedirs(new + path, exist_ok=True)
        os.chmod(new + path, 0o1777)
    os.makedirs(new + "/proc", exist_ok=True)
    mount("proc", new + "/proc", "proc", NOSUID | NODEV | NOEXEC)
    os.makedirs(new + work, exist_ok=True)
    mount("/proc/self/fd/%d" % fd, new + work, None, BIND)  # the working directory itself
    os.close(fd)
    os.chdir(new)
    number = {"x86_64": 155, "aarch64": 41}[platform.machine()]  # SYS_pivot_root
    if libc.syscall(number, b".", b"."):
        raise OSError(ctypes.get_errno(), "pivot_root")
    if libc.umount2(b".", 2):  # MNT_DETACH: the old root, stacked on the new one
        raise OSError(ctypes.get_errno(), "umount old root")
    os.chdir(work)
    sys.path[:] = [p for p in sys.path if os.path.isdir(p)]
"""
_ROOT_PROBE = (
    "import os, sys\n"
    + _ROOT
    + _DROP
    + "import json\nspec = json.loads(sys.argv[1])\nprivate_root(spec)\n"
    + "if spec['drop']:\n    drop(*spec['drop'])\n"
    + f"import {_PROBE_MODULES}\n"
    + "assert not os.path.exists(sys.argv[2]), sys.argv[2]\n"
    + "open('/tmp/r1v2-probe', 'w').close()\n"
)

_PRIVATE_PROBE = (
    "import os\n"
    + _PRIVATE
    + "import json, sys\nprivate_dirs(json.loads(sys.argv[1]))\n"
    + "open('/tmp/r1v2-probe', 'w').close()\nassert os.listdir('.') == ['r1v2-probe']\n"
)

# The runner, passed with -c. It reads job.json from its working directory, deletes it, sets
# the limits, makes /tmp private, drops privileges, then runs the solution (and the tests, in
# two modes).
_RUNNER = (
    _DROP
    + _PRIVATE
    + _ROOT
    + r"""
import json, resource, signal

with open("job.json") as f:
    job = json.load(f)
os.unlink("job.json")
for name, value in job["limits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
if job["root"]:
    private_root(job["root"])
elif job["private"]:
    private_dirs(job["private"])
del private_dirs, private_root
if job["drop"]:
    drop(*job["drop"])
del drop
code = compile(job["code"], "solution.py", "exec")
if job["mode"] == "stdio":
    del job
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    sys.exit(0)

class _Timeout(BaseException):
    pass

def _alarm(signum, frame):
    raise _Timeout()

signal.signal(signal.SIGALRM, _alarm)
report = os.dup(1)
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1)
nonce, timeout, mode = job["nonce"], job["timeout"], job["mode"]

def timed(fn):
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

def send(ok):
    os.write(report, ("%s %d\n" % (nonce, 1 if ok else 0)).encode())

ns = {"__name__": "solution", "__builtins__": __builtins__}
try:
    timed(lambda: exec(code, ns))
except BaseException:
    os._exit(0)

def run_asserts(source):
    import ast
    for node in ast.parse(source).body:
        one = compile(ast.Module(body=[node], type_ignores=[]), "tests.py", "exec")
        try:
            timed(lambda: exec(one, ns))
            ok = True
        except _Timeout:
            if isinstance(node, ast.Assert):
                send(False)
            return
        except BaseException:
            ok = False
        if isinstance(node, ast.Assert):
            send(ok)

def run_functional(func_name, cases):
    def target():
        if isinstance(ns.get("Solution"), type) and hasattr(ns["Solution"], func_name):
            return getattr(ns["Solution"](), func_name)
        return ns[func_name]
    for args, expected in cases:
        box = []
        try:
            timed(lambda: box.append(json.loads(json.dumps(target()(*args)))))
            ok = box[0] == expected
        except _Timeout:
            send(False)
            return
        except BaseException:
            ok = False
        send(ok)

if mode == "asserts":
    run_asserts(job["tests"])
else:
    run_functional(job["func_name"], job["cases"])
os._exit(0)
"""
)


@dataclass(frozen=True)
class _Sandbox:
    prefix: tuple[str, ...]  # the unshare command line before the interpreter, or ()
    drop: tuple[int, int] | None  # (uid, gid) the runner switches to, or None
    nproc: bool  # whether RLIMIT_NPROC is effective (and so set)
    private: tuple[str, ...] = ()  # the directories the runner covers (PRIVATE_DIRS), or ()
    root: bool = False  # whether the runner pivots into a root of its own (_ROOT)


_sandbox_lock = threading.Lock()
_sandbox_cached: _Sandbox | None = None


def _probe(cmd: list[str], cwd: str = "/") -> bool:
    """Whether ``cmd`` runs and exits 0 within 10 s."""
    try:
        done = subprocess.run(
            cmd, env=_env(cwd), cwd=cwd, capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _probe_private(prefix: tuple[str, ...]) -> tuple[str, ...]:
    """The PRIVATE_DIRS the runner can cover inside ``prefix``'s mount namespace, or ()."""
    if "--mount-proc" not in prefix:
        return ()
    workdir = tempfile.mkdtemp(prefix="r1v2-code-probe-")
    try:
        cmd = [*prefix, sys.executable, "-I", "-c", _PRIVATE_PROBE, json.dumps(PRIVATE_DIRS)]
        return PRIVATE_DIRS if _probe(cmd, cwd=workdir) else ()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def root_spec() -> dict[str, Any]:
    """What the runner's own root holds (:data:`_ROOT`): read-only system libraries and the
    standard library, its site-packages hidden, a few devices, empty scratch folders."""
    paths = sysconfig.get_paths()
    stdlib = sorted({paths["stdlib"], paths["platstdlib"]})
    packages = {paths["purelib"], paths["platlib"], "/usr/lib/python3/dist-packages"}
    packages |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    return {
        "read_only": [*SYSTEM_LIBS, *stdlib, "/etc/ld.so.cache"],
        "hidden": sorted(packages),
        "devices": list(DEVICES),
        "scratch": list(PRIVATE_DIRS),
        "size_kb": 2 * MAX_FILE_BYTES >> 10,
    }


def _probe_root(prefix: tuple[str, ...], drop: tuple[int, int] | None) -> bool:
    """Whether the runner can pivot into its own root inside ``prefix``'s namespaces, import
    the standard library there (as ``drop``'s user) and not see a host file (this one)."""
    if "--mount-proc" not in prefix:
        return False
    workdir = tempfile.mkdtemp(prefix="r1v2-code-probe-")
    try:
        spec = json.dumps({**root_spec(), "drop": drop})
        cmd = [*prefix, sys.executable, "-I", "-c", _ROOT_PROBE, spec, os.path.abspath(__file__)]
        if drop:
            os.chown(workdir, *drop)
        return _probe(cmd, cwd=workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _detect() -> _Sandbox:
    """Find which protections this machine allows (network/PID namespaces, the uid drop)."""
    root = os.geteuid() == 0
    drop = None
    if root:
        try:
            pw = pwd.getpwnam("nobody")
            ids = (pw.pw_uid, pw.pw_gid)
        except KeyError:
            ids = None
        # After the switch, nobody must still import the standard library (see _DROP).
        probe = [sys.executable, "-I", "-c", _DROP_PROBE]
        if ids and _probe([*probe, str(ids[0]), str(ids[1])]):
            drop = ids
        else:
            log.warning(
                "code sandbox: running as root and cannot switch to 'nobody' (missing, or it "
                "cannot import the standard library of %s): the code runs as root",
                sys.executable,
            )
    unshare = shutil.which("unshare")
    net = ["--net"] if root else ["--user", "--map-root-user", "--net"]
    pid = ["--pid", "--fork", "--kill-child"]
    # --mount-proc: a /proc of the new PID namespace, so the code cannot read other
    # processes' /proc/PID/environ (the parent's secrets) when it runs as root.
    candidates = [net + pid + ["--mount-proc"], net + pid, net] if unshare else []
    prefix: tuple[str, ...] = ()
    for flags in candidates:
        if _probe([unshare, *flags, "--", sys.executable, "-I", "-c", "pass"]):
            prefix = (unshare, *flags, "--")
            break
    if not prefix:
        log.warning("code sandbox: no network namespace (unshare): the code has network access")
    nproc = drop is not None or (not root and "--user" in prefix)
    own_root = _probe_root(prefix, drop)
    private = PRIVATE_DIRS if own_root else _probe_private(prefix)
    if not own_root:
        log.warning(
            "code sandbox: no root of its own (mount namespace, pivot_root): the code can read "
            "the host's world-readable files"
        )
    if not private:
        log.warning("code sandbox: no private /tmp (mount namespace): the code shares /tmp")
    return _Sandbox(prefix=prefix, drop=drop, nproc=nproc, private=private, root=own_root)


def _get_sandbox() -> _Sandbox:
    global _sandbox_cached
    with _sandbox_lock:
        if _sandbox_cached is None:
            _sandbox_cached = _detect()
        return _sandbox_cached


def sandbox_info() -> dict[str, Any]:
    """What the sandbox does on this machine (detected once): for logs and for tests."""
    box = _get_sandbox()
    return {
        "root": os.geteuid() == 0,
        "drops_to_user": box.drop is not None,
        "network_isolated": bool(box.prefix),
        "pid_namespace": "--pid" in box.prefix,
        "private_proc": "--mount-proc" in box.prefix,
        "nproc_limit": box.nproc,
        "private_tmp": bool(box.private),
        "own_root": box.root,
        "prefix": list(box.prefix),
    }


def _env(workdir: str) -> dict[str, str]:
    return {
        "PATH": _SAFE_PATH,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def extract_code(completion: str) -> str | None:
    """The last fenced Python block after the last ``</think>`` (the whole text when none).

    Blocks tagged ``python``, ``python3`` or ``py`` win; when there is none, the last untagged
    block is taken; blocks in other languages are ignored. None when there is no closed block.
    """
    answer = completion.rsplit(THINK_CLOSE, 1)[-1]
    blocks = [(m.group(1).strip().lower(), m.group(2)) for m in _BLOCK.finditer(answer)]
    tagged = [body for tag, body in blocks if tag in _PYTHON_TAGS]
    untagged = [body for tag, body in blocks if not tag]
    return (tagged or untagged or [None])[-1]


@dataclass(frozen=True)
class _Tests:
    mode: str  # "stdio", "asserts" or "functional"
    n: int  # number of tests
    payload: Any  # stdio: [(input, output)]; asserts: source; functional: (name, cases)


def _case_pairs(cases: Any) -> list[tuple[str, str]] | None:
    if not isinstance(cases, Sequence) or isinstance(cases, str) or not cases:
        return None
    pairs = []
    for case in cases:
        if not isinstance(case, dict):
            return None
        inp, out = case.get("input"), case.get("output")
        if not isinstance(inp, str) or not isinstance(out, str):
            return None
        pairs.append((inp, out))
    return pairs


def _parse_functional(func_name: Any, cases: Any) -> _Tests | None:
    pairs = _case_pairs(cases)
    if not isinstance(func_name, str) or not func_name.isidentifier() or pairs is None:
        return None
    parsed = []
    try:
        for inp, out in pairs:
            args = [json.loads(line) for line in inp.split("\n") if line.strip()]
            parsed.append((args, json.loads(out)))
    except json.JSONDecodeError:
        return None
    return _Tests("functional", len(parsed), (func_name, parsed))


def _parse_tests(tests: Any) -> _Tests | None:
    """The tests in one of the three accepted shapes, or None when they are malformed."""
    if isinstance(tests, str):
        try:
            body = ast.parse(tests).body
        except (SyntaxError, ValueError):
            return None
        n = sum(isinstance(node, ast.Assert) for node in body)
        return _Tests("asserts", n, tests) if n else None
    if isinstance(tests, dict):
        if tests.get("func_name") is not None:
            return _parse_functional(tests["func_name"], tests.get("cases"))
        tests = tests.get("cases")
    elif hasattr(tests, "func_name") and hasattr(tests, "cases"):
        return _parse_functional(tests.func_name, tests.cases)
    pairs = _case_pairs(tests)
    return _Tests("stdio", len(pairs), pairs) if pairs is not None else None


TESTS_SHAPES = (
    "a list of {input, output} stdin/stdout cases, a string of assert statements, or "
    "{func_name, cases} (LiveCodeBench functional tests)"
)


def check_tests(tests: Any) -> str | None:
    """Why ``tests`` cannot be scored (a one-line reason), or None when they can."""
    if tests is None:
        return f"missing: a code sample needs tests ({TESTS_SHAPES})"
    return None if _parse_tests(tests) is not None else f"malformed: expected {TESTS_SHAPES}"


def _normalise_output(text: str) -> list[str]:
    """The text stripped, split into lines, each line stripped (LiveCodeBench's reading)."""
    return [line.strip() for line in text.strip().split("\n")]


def _as_decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(token) for token in line.split()]
    except (InvalidOperation, ValueError):
        return None


def outputs_match(output: str, expected: str) -> bool:
    """LiveCodeBench's stdout comparison: after :func:`_normalise_output`, the same number of
    lines, each equal as text or as a list of decimals (``1.50 2`` matches ``1.5 2.0``)."""
    got, want = _normalise_output(output), _normalise_output(expected)
    if len(got) != len(want):
        return False
    for a, b in zip(got, want):
        if a == b:
            continue
        da, db = _as_decimals(a), _as_decimals(b)
        try:
            if da is None or db is None or da != db:
                return False
        except InvalidOperation:  # a signalling NaN
            return False
    return True


@dataclass
class _RunResult:
    stdout: bytes
    returncode: int | None  # None when killed at the deadline
    truncated: bool  # stdout went past MAX_OUTPUT_BYTES (the process was killed)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_capped(proc: subprocess.Popen, deadline: float) -> tuple[bytes, bool, bool]:
    """Read ``proc``'s stdout until EOF, the deadline or the cap: (data, timed_out, truncated)."""
    fd = proc.stdout.fileno()
    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), True, False
        ready, _, _ = select.select([fd], [], [], min(left, 0.1))
        if not ready:
            if proc.poll() is not None:
                _kill_group(proc.pid)  # the leader is done: strays must not hold the pipe
            continue
        data = os.read(fd, 65536)
        if not data:
            return b"".join(chunks), False, False
        chunks.append(data)
        size += len(data)
        if size > MAX_OUTPUT_BYTES:
            return b"".join(chunks)[:MAX_OUTPUT_BYTES], False, True


def _run(job: dict[str, Any], stdin: str | None, wall_s: float, memory_mb: int) -> _RunResult:
    """Run one job through the runner in a fresh temp dir; the dir is removed afterwards."""
    box = _get_sandbox()
    cpu = math.ceil(wall_s) + 1
    limits = {"RLIMIT_AS": memory_mb << 20, "RLIMIT_CPU": cpu}
    limits.update(RLIMIT_FSIZE=MAX_FILE_BYTES, RLIMIT_CORE=0)
    if box.nproc:
        limits["RLIMIT_NPROC"] = MAX_PROCESSES
    workdir = tempfile.mkdtemp(prefix="r1v2-code-")
    try:
        with open(os.path.join(workdir, "job.json"), "w") as f:
            root = root_spec() if box.root else None
            json.dump({**job, "limits": limits, "drop": box.drop, "private": box.private,
                       "root": root}, f)  # fmt: skip
        stdin_file = None
        if stdin is not None:
            stdin_file = os.path.join(workdir, "stdin.txt")
            with open(stdin_file, "w") as f:
                f.write(stdin)
        if box.drop:
            for path in (workdir, *(p for p in [stdin_file] if p)):
                os.chown(path, *box.drop)
        with open(stdin_file or os.devnull, "rb") as stdin_f:
            cmd = [*box.prefix, sys.executable, "-I", "-c", _RUNNER]
            proc = subprocess.Popen(
                cmd,
                stdin=stdin_f,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd=workdir,
                env=_env(workdir),
                start_new_session=True,
                close_fds=True,
            )
        try:
            out, timed_out, truncated = _read_capped(proc, time.monotonic() + wall_s)
        finally:
            _kill_group(proc.pid)
            proc.stdout.close()
            proc.wait()
        code = None if timed_out or truncated else proc.returncode
        return _RunResult(out, code, truncated)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _score_stdio(code: str, cases: list[tuple[str, str]], timeout_s: float, memory_mb: int):
    passed = 0
    for inp, expected in cases:
        res = _run({"mode": "stdio", "code": code}, inp, timeout_s + _STARTUP_GRACE_S, memory_mb)
        if res.returncode is None and not res.truncated:
            break  # timed out: the remaining cases count as failed (module docstring)
        out = res.stdout.decode("utf-8", errors="replace")
        if res.returncode == 0 and outputs_match(out, expected):
            passed += 1
    return passed


def _score_in_process(code: str, tests: _Tests, timeout_s: float, memory_mb: int) -> int:
    nonce = secrets.token_hex(16)
    job = {"mode": tests.mode, "code": code, "nonce": nonce, "timeout": timeout_s}
    if tests.mode == "asserts":
        job["tests"] = tests.payload
    else:
        job["func_name"], job["cases"] = tests.payload
    wall = timeout_s * (tests.n + 1) + _STARTUP_GRACE_S
    res = _run(job, None, wall, memory_mb)
    lines = res.stdout.decode("utf-8", errors="replace").splitlines()
    results = [line.split()[1] for line in lines if line.startswith(nonce + " ")]
    return min(results.count("1"), tests.n)


def code_reward(
    completion: str,
    tests: Any,
    *,
    timeout_s: float = TIMEOUT_S,
    memory_mb: int = MEMORY_MB,
    prelude: str = "",
) -> float | None:
    """The fraction of ``tests`` that the completion's last Python block passes (module doc).

    ``timeout_s``: the wall-clock limit of one test (of one process in the stdin/stdout mode).
    ``memory_mb``: the address-space limit of the process (RLIMIT_AS). ``prelude``: source run
    before the solution (imports). None when the tests are malformed; 0.0 when the completion
    has no code block.
    """
    parsed = _parse_tests(tests)
    if parsed is None:
        return None
    code = extract_code(completion) if isinstance(completion, str) else None
    if code is None:
        return 0.0
    if prelude:
        code = prelude.rstrip("\n") + "\n" + code
    if parsed.mode == "stdio":
        passed = _score_stdio(code, parsed.payload, timeout_s, memory_mb)
    else:
        passed = _score_in_process(code, parsed, timeout_s, memory_mb)
    return passed / parsed.n


def _setting(metadata: Mapping[str, Any], name: str, kind: type, default: Any) -> Any:
    """``metadata[name]`` as a positive ``kind``; ``default`` when absent or null."""
    value = metadata.get(name)
    if value is None:
        return default
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not (math.isfinite(value) and value > 0):
        raise R1V2Error(f"metadata.{name}: expected a positive number, got {value!r}")
    if kind is int and value != int(value):
        raise R1V2Error(f"metadata.{name}: expected a whole number, got {value!r}")
    return kind(value)


def _prelude(metadata: Mapping[str, Any]) -> str:
    prelude = metadata.get("prelude") or ""
    if not isinstance(prelude, str):
        raise R1V2Error(f"metadata.prelude: expected a string, got {type(prelude).__name__}")
    return prelude


def check_code_metadata(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, reason)`` for each part of a code sample's metadata that cannot be used:
    its tests (:func:`check_tests`) and the settings :func:`sample_code_reward` reads, so
    ``r1v2 data check`` and the loaders refuse what scoring would refuse later."""
    problems = []
    reason = check_tests(metadata.get("tests"))
    if reason is not None:
        problems.append(("metadata.tests", reason))
    checks = (
        ("timeout_s", lambda: _setting(metadata, "timeout_s", float, None)),
        ("memory_mb", lambda: _setting(metadata, "memory_mb", int, None)),
        ("prelude", lambda: _prelude(metadata)),
    )
    for name, check in checks:
        try:
            check()
        except R1V2Error as e:
            problems.append((f"metadata.{name}", str(e).partition(": ")[2]))
    return problems


def sample_code_reward(
    completion: str,
    metadata: Mapping[str, Any] | None,
    *,
    timeout_s: float = TIMEOUT_S,
    memory_mb: int = MEMORY_MB,
) -> float | None:
    """:func:`code_reward` of a ``kind: code`` sample, with the settings its metadata carries.

    ``metadata["tests"]`` are the tests; ``metadata`` may also set ``timeout_s`` (per test),
    ``memory_mb`` and ``prelude`` (source run before the solution: LiveCodeBench's imports),
    which win over the keyword defaults. Training (``HybridReward``) and eval
    (``r1v2.eval.scoring``) both score code samples through this function, so they honour the
    same per-sample settings. A setting that is not a positive number raises R1V2Error.
    """
    meta = metadata or {}
    prelude = _prelude(meta)
    return code_reward(
        completion,
        meta.get("tests"),
        timeout_s=_setting(meta, "timeout_s", float, timeout_s),
        memory_mb=_setting(meta, "memory_mb", int, memory_mb),
        prelude=prelude,
    )


def code_rewards(
    completions: Sequence[str],
    tests_list: Sequence[Any],
    *,
    workers: int = 2,
    timeout_s: float = TIMEOUT_S,
    memory_mb: int = MEMORY_MB,
) -> list[float | None]:
    """:func:`code_reward` of each (completion, tests) pair, ``workers`` at a time, in order.

    Threads suffice: each one waits on its own child processes.
    """
    if len(completions) != len(tests_list):
        raise ValueError(f"{len(completions)} completions but {len(tests_list)} test sets")
    _get_sandbox()  # detect once, before the threads start

    def one(pair: tuple[str, Any]) -> float | None:
        return code_reward(pair[0], pair[1], timeout_s=timeout_s, memory_mb=memory_mb)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, zip(completions, tests_list)))
