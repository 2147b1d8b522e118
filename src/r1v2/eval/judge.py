"""An LLM judge behind any OpenAI-compatible ``/chat/completions`` endpoint (the ``openai`` client).

The judge decides answers that rules cannot (``50 cm`` vs ``0.5 m``). Each request sends the
prompt of ``judge_prompt.txt`` (shipped with the package; its header documents the
placeholders) and reads a CORRECT / INCORRECT verdict from the reply.

Requests go through the official ``openai`` client (``base_url`` = the judge URL), which sends
them, applies ``timeout`` to every connect, read and write, and retries timeouts, connection
errors and HTTP 408/409/429/5xx with its own exponential backoff (0.5 s doubling up to 8 s,
with jitter; a ``Retry-After`` header is honoured). HTTP 4xx otherwise (a wrong key, model or
URL) stops the evaluation with a :class:`JudgeError` naming the endpoint instead of being
retried. What the client cannot do is kept here:

- A total deadline and a size cap per request: the client's timeouts are per socket operation,
  so a server trickling one byte at a time (status line, headers or body) would hold a request
  forever, and it reads a reply of any size into memory. :class:`_GuardedTransport` (an
  ``httpx2`` transport handed to the client) gives every socket operation of a request
  (connect, TLS, write, each read) only the time left until ``timeout`` seconds after the
  request started, so an attempt ends by then however the server paces its bytes (name
  resolution excepted: the OS resolver has no timeout); it reads each reply whole and stops
  once the decoded body exceeds ``max_reply_bytes``. Either failure is retried like a timeout.
- Retries of replies that arrived but are useless (malformed JSON, no verdict): the client
  returns those as successes; they are retried here, after ``backoff`` seconds doubling.
  Both kinds of retry share one budget: at most ``retries + 1`` requests per item.
- Counting (requests, retries) and the last errors: the transport reports every attempt.
- No credentials from the environment: the client would send ``OPENAI_API_KEY``,
  ``OPENAI_ORG_ID`` and ``OPENAI_PROJECT_ID`` to whatever endpoint is configured; only the key
  given here is sent, and without one no ``Authorization`` header at all.

At most ``concurrency`` requests are in flight; definite verdicts are cached on disk (JSONL,
one line per verdict, keyed by a hash of model and prompt) so a rerun asks nothing twice.
After ``max_failures`` items in a row left undecided (every try failed), the judge stops: it
asks nothing more (cached verdicts are still used) and :meth:`JudgeClient.judge` returns
:data:`NOT_ASKED`; :attr:`JudgeClient.stopped` says so, :meth:`JudgeClient.summary` counts.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import httpcore2
import httpx2
import openai

from r1v2.errors import R1V2Error
from r1v2.eval.jsonl import complete_lines

_VERDICT = re.compile(r"\b(CORRECT|INCORRECT)\b", re.IGNORECASE)
_PLACEHOLDERS = ("question", "reference", "response")
_RETRIED_STATUS = (408, 409, 429)  # and 5xx: what the openai client retries
MAX_REPLY_BYTES = 1 << 20  # a verdict of max_tokens=1024 is a few KB


class JudgeError(R1V2Error):
    """The judge endpoint refused the request (bad URL, key or model)."""


@dataclass(frozen=True)
class JudgeItem:
    """What the judge sees for one response."""

    question: str
    reference: str
    response: str
    id: str = field(default="", compare=False)  # for reports only: the judge never sees it


def load_prompt(path: str | Path | None = None) -> str:
    """The judge prompt template: ``path`` or the packaged ``judge_prompt.txt``.

    Leading lines that start with ``#`` are documentation and are dropped.
    """
    if path is None:
        text = resources.files("r1v2.eval").joinpath("judge_prompt.txt").read_text()
    else:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise R1V2Error(f"cannot read judge prompt {path}: {e.strerror}") from e
    lines = text.splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    template = "\n".join(lines).strip() + "\n"
    missing = [p for p in _PLACEHOLDERS if "{{" + p + "}}" not in template]
    if missing:
        where = path or "judge_prompt.txt"
        raise R1V2Error(
            f"judge prompt {where} lacks the placeholder(s) "
            + ", ".join("{{" + m + "}}" for m in missing)
        )
    return template


def render_prompt(template: str, item: JudgeItem) -> str:
    """Fill the ``{{question}}``, ``{{reference}}``, ``{{response}}`` placeholders verbatim."""
    out = template
    for name in _PLACEHOLDERS:
        out = out.replace("{{" + name + "}}", getattr(item, name))
    return out


def parse_verdict(text: str) -> bool | None:
    """True for CORRECT, False for INCORRECT (the last such word counts), None for neither."""
    found = _VERDICT.findall(text)
    if not found:
        return None
    return found[-1].upper() == "CORRECT"


def chat_url(url: str) -> str:
    """Accept a base URL (``http://host/v1``) or the full ``.../chat/completions`` URL."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


class ReplyTooLarge(httpx2.ReadError):
    """The reply's body exceeded the size cap (retried like a broken connection)."""


class _Deadline:
    """The wall-clock end of the request the current thread is sending (one per thread)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._local = threading.local()

    def start(self) -> None:
        self._local.end = time.monotonic() + self.seconds

    def stop(self) -> None:
        self._local.end = None

    def left(self, timeout: float | None, error: type[Exception]) -> float | None:
        """``timeout`` cut to the time left; ``error`` once none is left (no request: as is)."""
        end = getattr(self._local, "end", None)
        if end is None:
            return timeout
        left = end - time.monotonic()
        if left <= 0:
            raise error(self.message())
        return left if timeout is None else min(timeout, left)

    def passed(self) -> bool:
        end = getattr(self._local, "end", None)
        return end is not None and time.monotonic() >= end

    def message(self) -> str:
        return f"request not complete within {self.seconds:g} s"


class _DeadlineStream(httpcore2.NetworkStream):
    """A socket stream whose every operation waits at most until the request's deadline."""

    def __init__(self, stream: httpcore2.NetworkStream, deadline: _Deadline):
        self._stream = stream
        self._deadline = deadline

    def _call(self, error: type[Exception], timeout: float | None, fn: Callable, *args):
        try:
            return fn(*args, timeout=self._deadline.left(timeout, error))
        except httpcore2.TimeoutException as e:
            if self._deadline.passed():  # cut by the deadline, not by the per-operation timeout
                raise error(self._deadline.message()) from e
            raise

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._call(httpcore2.ReadTimeout, timeout, self._stream.read, max_bytes)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._call(httpcore2.WriteTimeout, timeout, self._stream.write, buffer)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.NetworkStream:
        tls = self._call(
            httpcore2.ConnectTimeout, timeout, self._stream.start_tls, ssl_context, server_hostname
        )
        return _DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore2.NetworkBackend):
    """The connection pool's network backend, with :class:`_DeadlineStream` streams."""

    def __init__(self, backend: httpcore2.NetworkBackend, deadline: _Deadline):
        self._backend = backend
        self._deadline = deadline

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        timeout = self._deadline.left(timeout, httpcore2.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        timeout = self._deadline.left(timeout, httpcore2.ConnectTimeout)
        stream = self._backend.connect_unix_socket(path, timeout, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _GuardedTransport(httpx2.HTTPTransport):
    """Sends each request within a total deadline, reads its reply whole below a size cap, and
    reports each attempt.

    The deadline: every socket operation of the request waits at most until ``deadline``
    seconds after :meth:`handle_request` began (:class:`_DeadlineBackend` in the connection
    pool), so a server sending one byte at a time cannot stretch an attempt past it.
    ``on_attempt(error)`` is called once per HTTP request, with None for a reply below 400,
    ``"HTTP <code>"`` for an error status, or the transport error's name and message.
    """

    def __init__(
        self, *, deadline: float, max_bytes: int, on_attempt: Callable[[str | None], None]
    ):
        super().__init__()
        self.deadline = _Deadline(deadline)
        self.max_bytes = max_bytes
        self.on_attempt = on_attempt
        # httpx2 has no option for a network backend: wrap the one of its httpcore2 pool.
        pool = self._pool
        pool._network_backend = _DeadlineBackend(pool._network_backend, self.deadline)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        self.deadline.start()
        try:
            response = super().handle_request(request)
            body = self._read(response)
        except httpx2.RequestError as e:
            self.on_attempt(f"{type(e).__name__}: {e}")
            raise
        finally:
            self.deadline.stop()
        self.on_attempt(None if response.status_code < 400 else f"HTTP {response.status_code}")
        # The body is decoded already: drop the headers that describe its wire form.
        headers = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        return httpx2.Response(
            response.status_code, headers=headers, content=body, extensions=response.extensions
        )

    def _read(self, response: httpx2.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_bytes():  # decoded: the cap holds for compressed replies
                size += len(chunk)
                if size > self.max_bytes:
                    raise ReplyTooLarge(f"reply larger than {self.max_bytes} bytes")
                chunks.append(chunk)
        finally:
            response.close()
        return b"".join(chunks)


class _Retry(Exception):
    """A reply that arrived but is of no use; worth another try. The message says why."""


class _Undecided(Exception):
    """The openai client gave up (its retries are spent); the message says why."""


class NotAsked(enum.Enum):
    """What :meth:`JudgeClient.judge` returns for an item once the judge has stopped."""

    NOT_ASKED = "not asked"


NOT_ASKED = NotAsked.NOT_ASKED
Verdict = bool | None | NotAsked  # True/False, None: asked but undecided, or not asked


class JudgeClient:
    """Ask an OpenAI-compatible chat endpoint whether responses match references.

    ``retries``: at most ``retries + 1`` requests per item, whatever failed. ``backoff``: the
    wait before retrying a malformed reply or one without a verdict (doubling); HTTP-level
    retries wait as the openai client decides. ``timeout``: seconds per socket operation and,
    in total, per request from sending it to the last byte of its reply (see the module
    docstring); an item takes at most ``retries + 1`` such requests plus the waits between them.
    ``max_failures``: after this many items in a row left undecided, the judge stops asking
    (``stopped``; see the module docstring). ``stats`` counts requests sent, cache hits,
    retries, items asked, items left undecided (None) and items not asked because the judge
    had stopped; ``last_errors`` holds the last ten failures.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        concurrency: int = 8,
        cache_path: str | Path | None = None,
        prompt_template: str | None = None,
        max_tokens: int = 1024,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        max_failures: int = 5,
    ):
        if max_failures < 1:
            raise R1V2Error(f"judge max_failures must be >= 1, got {max_failures}")
        self.url = chat_url(url)
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.concurrency = max(1, concurrency)
        self.max_tokens = max_tokens
        self.template = prompt_template if prompt_template is not None else load_prompt()
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.max_failures = max_failures
        self.stats = {
            "requests": 0,
            "cache_hits": 0,
            "retries": 0,
            "asked": 0,
            "undecided": 0,
            "not_asked": 0,
        }
        self.last_errors: list[str] = []
        self.stopped = False  # max_failures items in a row were left undecided
        self.failed_items: list[str] = []  # ids of the items left undecided (every try failed)
        self._failures_in_a_row = 0
        self._lock = threading.Lock()
        self._local = threading.local()  # requests sent for the item this thread is judging
        self._cache = self._read_cache()
        transport = _GuardedTransport(
            deadline=timeout, max_bytes=max_reply_bytes, on_attempt=self._on_attempt
        )
        self._client = openai.OpenAI(
            base_url=self.url.removesuffix("/chat/completions"),
            api_key=api_key or "unused",  # never read from OPENAI_API_KEY; omitted when None
            timeout=timeout,
            max_retries=retries,
            default_headers={"OpenAI-Organization": openai.omit, "OpenAI-Project": openai.omit},
            http_client=openai.DefaultHttpxClient(transport=transport),
        )

    # ---- cache ---------------------------------------------------------------------------
    def _key(self, prompt: str) -> str:
        return hashlib.sha256(json.dumps([self.model, prompt]).encode()).hexdigest()

    def _read_cache(self) -> dict[str, bool]:
        cache: dict[str, bool] = {}
        if self.cache_path is None:
            return cache
        for line in complete_lines(self.cache_path):  # a line cut short is asked again
            try:
                entry = json.loads(line)
                cache[entry["key"]] = bool(entry["verdict"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        return cache

    def _remember(self, key: str, verdict: bool) -> None:
        with self._lock:
            self._cache[key] = verdict
            if self.cache_path is not None:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with self.cache_path.open("a") as f:
                    f.write(json.dumps({"key": key, "verdict": verdict}) + "\n")

    # ---- requests ------------------------------------------------------------------------
    def _on_attempt(self, error: str | None) -> None:
        """Called by the transport, in the judging thread, once per HTTP request."""
        sent = getattr(self._local, "sent", 0)
        self._local.sent = sent + 1
        with self._lock:
            self.stats["requests"] += 1
            self.stats["retries"] += sent > 0
            if error is not None:
                self._note(error)

    def _note(self, error: str) -> None:
        """Keep the last ten failures (caller holds the lock)."""
        self.last_errors = [*self.last_errors[-9:], error]

    def _request(self, prompt: str, max_retries: int) -> bool:
        """One call of the openai client (which retries HTTP-level failures itself)."""
        try:
            raw = self._client.with_options(max_retries=max_retries).chat.completions
            reply = raw.with_raw_response.create(
                model=self.model,
                messages=[{"role": "user", "content": prompt}],
                temperature=0.0,
                max_tokens=self.max_tokens,
                extra_headers={} if self.api_key else {"Authorization": openai.omit},
            )
        except openai.APIStatusError as e:
            if e.status_code in _RETRIED_STATUS or e.status_code >= 500:
                raise _Undecided(f"HTTP {e.status_code}") from e
            detail = e.response.text[:300]
            raise JudgeError(
                f"judge endpoint {self.url} answered HTTP {e.status_code}: {detail}"
            ) from e
        except openai.APIConnectionError as e:  # APITimeoutError is one
            cause = e.__cause__
            raise _Undecided(f"{type(cause).__name__}: {cause}" if cause else str(e)) from e
        try:
            content = reply.parse().choices[0].message.content
        except (ValueError, TypeError, AttributeError, IndexError, openai.OpenAIError) as e:
            raise _Retry(f"malformed reply: {reply.http_response.content[:200]!r}") from e
        verdict = parse_verdict(content if isinstance(content, str) else "")
        if verdict is None:
            raise _Retry(f"no verdict in reply: {str(content)[:200]!r}")
        return verdict

    def judge(self, item: JudgeItem) -> Verdict:
        """The verdict for one item: True/False, None when every try failed, or
        :data:`NOT_ASKED` when the judge has stopped (a cached verdict is still returned)."""
        prompt = render_prompt(self.template, item)
        key = self._key(prompt)
        with self._lock:
            if key in self._cache:
                self.stats["cache_hits"] += 1
                return self._cache[key]
            if self.stopped:
                self.stats["not_asked"] += 1
                return NOT_ASKED
            self.stats["asked"] += 1
        self._local.sent = 0
        for attempt in range(self.retries + 1):
            left = self.retries - self._local.sent  # retries still allowed for this item
            if left < 0 or (attempt > 0 and self.stopped):  # stopped by another thread's item
                break
            if attempt > 0:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                verdict = self._request(prompt, max_retries=left)
            except _Retry as e:
                with self._lock:
                    self._note(str(e))
                continue
            except _Undecided:
                break  # the client's retries are spent (the transport noted each failure)
            with self._lock:
                self._failures_in_a_row = 0
            self._remember(key, verdict)
            return verdict
        with self._lock:
            self.stats["undecided"] += 1
            self.failed_items.append(item.id)
            self._failures_in_a_row += 1
            self.stopped = self.stopped or self._failures_in_a_row >= self.max_failures
        return None

    def summary(self) -> dict:
        """What results.json records of the judge: counts, and whether (when) it stopped."""
        with self._lock:
            return {
                "disabled_after_failures": self.max_failures if self.stopped else None,
                "asked": self.stats["asked"],
                "failed": self.stats["undecided"],
                "not_asked": self.stats["not_asked"],
                "cache_hits": self.stats["cache_hits"],
                "requests": self.stats["requests"],
                "retries": self.stats["retries"],
                "last_error": self.last_errors[-1] if self.last_errors else None,
                "failed_items": list(self.failed_items),
            }

    def judge_many(
        self, items: Sequence[JudgeItem], on_done: Callable[[], None] | None = None
    ) -> list[Verdict]:
        """Verdicts for ``items`` in order, with at most ``concurrency`` requests in flight."""

        def one(item: JudgeItem) -> Verdict:
            verdict = self.judge(item)
            if on_done is not None:
                on_done()
            return verdict

        if not items:
            return []
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, items))
