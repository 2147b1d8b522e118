"""Run a function in a worker process with a hard time limit, from any thread (``pebble``).

math-verify's own timeout uses ``signal.alarm``, which only works in the main thread and
cannot stop C-level work. Here the call runs in a worker process of a ``pebble.ProcessPool``
instead: ``schedule(..., timeout=)`` returns a future that any thread may wait on, and a task
that overruns has its worker terminated (SIGTERM, then SIGKILL after pebble's 3 s grace) and
replaced. The limit counts from the moment a worker picks the task up, so waiting for a free
worker or for its start-up does not eat into it. Python code, sympy (with its pure-Python
ground types) and big-integer arithmetic stop at once on SIGTERM (a call is cut within about
0.1 s of its limit, pebble's polling step); only C code that ignores signals (gmpy2, if sympy
uses it) can hold the caller up to 3 s past the limit before the SIGKILL.

Workers are started with ``spawn``: a fork of a process with threads (the trainer's, pebble's
own) can deadlock. Unlike other spawn-based pools, the workers do not import the caller's
main module (multiprocessing would re-run a script without an ``if __name__ == "__main__":``
guard in every worker, whose own reward call then fails): the preparation data of the
processes named :data:`WORKER_PREFIX` leaves it out, since the targets live in importable
modules.

Targets are named ``"module:function"`` and resolved in the worker; arguments and results are
pickled. A pool that pebble declares broken (a worker killed while idle, by the OOM killer
say) is replaced on the next call.
"""

from __future__ import annotations

import atexit
import importlib
import multiprocessing
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from pebble import ProcessExpired, ProcessPool

from r1v2.errors import R1V2Error

POLL_SECONDS = 0.5  # how often a waiting call looks whether its pool broke
WORKER_PREFIX = "r1v2-verify-"  # the names of this module's worker processes


class _WorkerProcess(multiprocessing.context.SpawnProcess):
    """A spawned worker whose name marks it, so that it starts without the main module."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = WORKER_PREFIX + self.name


class _WorkerContext(multiprocessing.context.SpawnContext):
    Process = _WorkerProcess


def _without_main(get_preparation_data):
    """multiprocessing's ``spawn.get_preparation_data``, minus the main module for workers."""

    def prepare(name: str) -> dict[str, Any]:
        data = get_preparation_data(name)
        if name.startswith(WORKER_PREFIX):
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    prepare.r1v2_without_main = True
    return prepare


def _install_without_main() -> None:
    from multiprocessing import spawn

    if not getattr(spawn.get_preparation_data, "r1v2_without_main", False):
        spawn.get_preparation_data = _without_main(spawn.get_preparation_data)


class CallTimeout(TimeoutError):
    """The call did not finish within its time limit; its worker was killed."""


class WorkerError(R1V2Error, RuntimeError):
    """The target raised in the worker, or the worker died; the message carries the reason."""


def _run(target: str, args: tuple) -> tuple[bool, Any]:
    """In the worker: ``(True, target(*args))``, or ``(False, "Type: message")`` when it raises.

    Reporting the target's errors as values keeps every exception the future raises pebble's
    own (a timeout, a dead worker), and never pickles an exception object.
    """
    try:
        module, _, name = target.partition(":")
        return True, getattr(importlib.import_module(module), name)(*args)
    except Exception as e:
        return False, f"{type(e).__name__}: {e}"


class WorkerPool:
    """Up to ``max_workers`` worker processes (pebble), started on first use and reused.

    ``call`` is thread-safe. ``startup_timeout`` bounds how long a caller waits, beyond its
    own time limit, for a worker to start and pick its task up.
    """

    def __init__(self, max_workers: int = 2, startup_timeout: float = 120.0) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self.max_workers = max_workers
        self.startup_timeout = startup_timeout
        self.timeouts = 0  # calls cut by their time limit (each killed its worker)
        self._pool: ProcessPool | None = None
        self._lock = threading.Lock()

    def _active_pool(self) -> ProcessPool:
        with self._lock:
            if self._pool is None or not self._pool.active:
                if self._pool is not None:
                    self._pool.stop()  # broken: its workers are gone or going
                _install_without_main()
                self._pool = ProcessPool(self.max_workers, context=_WorkerContext())
            return self._pool

    def call(self, target: str, args: tuple = (), timeout: float = 5.0) -> Any:
        """Run ``target(*args)`` (``"module:function"``) in a worker; return its result.

        Raises :class:`CallTimeout` after ``timeout`` seconds (the worker is killed) and
        :class:`WorkerError` when the target raises or the worker dies. A call that finds the
        pool broken is tried once more on a fresh pool (targets are pure functions).
        """
        for attempt in (1, 2):
            try:
                ok, value = self._call_once(target, args, timeout)
                break
            except BrokenProcessPool as e:
                if attempt == 2:
                    raise WorkerError(f"verification pool broke: {e}") from e
        if not ok:  # the target raised; its worker stays up
            raise WorkerError(value)
        return value

    def _call_once(self, target: str, args: tuple, timeout: float) -> tuple[bool, Any]:
        """``_run``'s ``(ok, value)``; pebble's BrokenProcessPool passes through."""
        pool = self._active_pool()
        try:
            future = pool.schedule(_run, (target, tuple(args)), timeout=timeout)
        except RuntimeError as e:  # it broke since _active_pool looked
            raise BrokenProcessPool(str(e)) from e
        wait = self.startup_timeout + timeout
        try:
            return self._wait(pool, future, wait)
        except TimeoutError as e:  # pebble's "Task timeout", or our wait above ran out
            if not future.done():
                future.cancel()  # kills the worker if the task has started
                raise WorkerError(f"no verification worker answered within {wait:g} s") from e
            with self._lock:
                self.timeouts += 1
            raise CallTimeout(f"no answer within {timeout:g} s") from e
        except ProcessExpired as e:
            raise WorkerError(f"verification worker died (exit code {e.exitcode})") from e
        except BrokenProcessPool:
            raise
        except Exception as e:  # the pool was stopped, or a result could not be pickled
            raise WorkerError(f"verification pool failed: {type(e).__name__}: {e}") from e

    @staticmethod
    def _wait(pool: ProcessPool, future: Any, wait: float) -> tuple[bool, Any]:
        """``future.result`` within ``wait`` seconds, looking every :data:`POLL_SECONDS` at
        whether the pool broke meanwhile: pebble breaks a pool whose worker died while idle,
        and a task queued just before it noticed is never run (its future would wait out the
        whole ``wait``); that raises BrokenProcessPool, so the call is tried on a fresh pool."""
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            try:
                return future.result(timeout=max(0.0, min(POLL_SECONDS, left)))
            except TimeoutError:
                if future.done() or left <= POLL_SECONDS:
                    raise  # pebble's task timeout, or the whole wait is over
                if not pool.active:
                    future.cancel()
                    raise BrokenProcessPool("the pool broke while the call waited") from None

    def close(self) -> None:
        """Stop the workers (a call in progress fails with :class:`WorkerError`)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
            pool.join(timeout=10)


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
