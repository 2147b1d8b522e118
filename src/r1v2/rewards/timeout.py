"""Run a function in a worker process with a hard time limit, from any thread.

math-verify's own timeout uses ``signal.alarm``, which only works in the main thread and
cannot stop C-level work. Here the call runs in a separate Python process instead: the
caller waits on the worker's pipe with ``poll`` (fine in any thread), and a worker that
overruns is killed and replaced by a fresh one on the next call. POSIX only (``poll`` on
pipes).

Protocol: the worker reads one JSON line ``{"target": "module:function", "args": [...]}`` per
call from stdin and writes one JSON line back, ``{"ok": true, "value": ...}`` or
``{"ok": false, "error": "..."}``. Arguments and results are JSON values.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from typing import Any

from r1v2.errors import R1V2Error


class CallTimeout(TimeoutError):
    """The call did not finish within its time limit; its worker was killed."""


class WorkerError(R1V2Error, RuntimeError):
    """The target raised in the worker, or the worker died; the message carries the reason."""


class _Worker:
    """One worker process and its pipes. Not thread-safe: the pool hands it to one caller."""

    def __init__(self, startup_timeout: float) -> None:
        env = dict(os.environ)
        # The worker imports targets with the parent's search path (editable installs, tests).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from r1v2.rewards.timeout import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._buf = b""
        self._poll = select.poll()  # poll, not select: no limit on the descriptor's number
        self._poll.register(self.proc.stdout.fileno(), select.POLLIN)
        try:
            ready = self._read_line(startup_timeout)
        except (CallTimeout, WorkerError, ValueError) as e:
            self.kill()
            raise WorkerError(f"verification worker failed to start: {e}") from e
        if ready != {"ready": True}:
            self.kill()
            raise WorkerError(f"verification worker failed to start: {ready!r}")

    def call(self, target: str, args: tuple, timeout: float) -> Any:
        line = json.dumps({"target": target, "args": list(args)}).encode() + b"\n"
        try:
            self.proc.stdin.write(line)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise WorkerError(f"verification worker died (exit code {self.proc.poll()})") from e
        reply = self._read_line(timeout)
        if reply.get("ok"):
            return reply.get("value")
        raise WorkerError(str(reply.get("error")))

    def _read_line(self, timeout: float) -> dict:
        """Read one JSON line from the worker, waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CallTimeout(f"no answer within {timeout:g} s")
            if not self._poll.poll(max(1, int(remaining * 1000))):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise WorkerError(f"verification worker died (exit code {self.proc.wait()})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass


class WorkerPool:
    """Up to ``max_workers`` worker processes, started on demand and reused across calls.

    ``call`` is thread-safe: each caller borrows an idle worker (starting one if fewer than
    ``max_workers`` exist, else waiting for one), and the time limit counts from the moment the
    request is sent, so waiting for a worker or for its start-up does not eat into it.
    """

    def __init__(self, max_workers: int = 2, startup_timeout: float = 120.0) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self.max_workers = max_workers
        self.startup_timeout = startup_timeout
        self._idle: list[_Worker] = []
        self._count = 0
        self._cond = threading.Condition()
        self.timeouts = 0  # calls cut by their time limit (each killed its worker)

    def call(self, target: str, args: tuple = (), timeout: float = 5.0) -> Any:
        """Run ``target(*args)`` (``"module:function"``) in a worker; return its JSON result.

        Raises :class:`CallTimeout` after ``timeout`` seconds (the worker is killed) and
        :class:`WorkerError` when the target raises or the worker dies.
        """
        worker = self._acquire()
        healthy = False
        try:
            value = worker.call(target, args, timeout)
            healthy = True
            return value
        except CallTimeout:
            with self._cond:
                self.timeouts += 1
            raise
        except WorkerError:
            healthy = worker.alive()  # the target raised, the worker itself is fine
            raise
        finally:
            self._release(worker, healthy)

    def _acquire(self) -> _Worker:
        with self._cond:
            while not self._idle and self._count >= self.max_workers:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return _Worker(self.startup_timeout)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _release(self, worker: _Worker, healthy: bool) -> None:
        if not healthy:
            worker.kill()
        with self._cond:
            if healthy:
                self._idle.append(worker)
            else:
                self._count -= 1
            self._cond.notify()

    def close(self) -> None:
        """Stop the idle workers (busy ones are stopped when their call returns)."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for w in idle:
            w.kill()


_DEFAULT_POOL: WorkerPool | None = None
_DEFAULT_LOCK = threading.Lock()


def default_pool() -> WorkerPool:
    """The process-wide pool used by the rewards (two workers; closed at exit)."""
    global _DEFAULT_POOL
    with _DEFAULT_LOCK:
        if _DEFAULT_POOL is None:
            _DEFAULT_POOL = WorkerPool(max_workers=2)
            atexit.register(_DEFAULT_POOL.close)
        return _DEFAULT_POOL


def call_with_timeout(target: str, args: tuple = (), timeout: float = 5.0) -> Any:
    """``default_pool().call(target, args, timeout)``."""
    return default_pool().call(target, args, timeout)


def _resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def serve() -> None:
    """The worker loop: answer one JSON request per line until stdin closes."""
    # Keep the protocol stream private: anything the targets print goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(message: dict) -> None:
        out.write(json.dumps(message).encode() + b"\n")
        out.flush()

    reply({"ready": True})
    try:
        for line in sys.stdin.buffer:
            try:
                request = json.loads(line)
                value = _resolve(request["target"])(*request["args"])
                reply({"ok": True, "value": value})
            except Exception as e:  # reported to the caller, the worker stays up
                reply({"ok": False, "error": f"{type(e).__name__}: {e}"})
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent handles it
        pass
