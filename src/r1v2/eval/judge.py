"""An LLM judge behind any OpenAI-compatible ``/chat/completions`` endpoint (standard library only).

The judge decides answers that rules cannot (``50 cm`` vs ``0.5 m``). Each request sends the
prompt of ``judge_prompt.txt`` (shipped with the package; its header documents the
placeholders) and reads a CORRECT / INCORRECT verdict from the reply.

Robustness: a per-request timeout; retries with exponential backoff on timeouts, connection
errors, HTTP 429/5xx, malformed JSON and replies without a verdict; at most ``concurrency``
requests in flight; definite verdicts cached on disk (JSONL, one line per verdict, keyed by a
hash of model and prompt) so a rerun asks nothing twice. HTTP 4xx other than 429 (a wrong key,
model or URL) stops the evaluation with an error instead of being retried.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from r1v2.errors import R1V2Error
from r1v2.eval.jsonl import complete_lines

_VERDICT = re.compile(r"\b(CORRECT|INCORRECT)\b", re.IGNORECASE)
_PLACEHOLDERS = ("question", "reference", "response")


class JudgeError(R1V2Error):
    """The judge endpoint refused the request (bad URL, key or model)."""


@dataclass(frozen=True)
class JudgeItem:
    """What the judge sees for one response."""

    question: str
    reference: str
    response: str


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


class _Retry(Exception):
    """A failure worth another try; the message says what happened."""


class JudgeClient:
    """Ask an OpenAI-compatible chat endpoint whether responses match references.

    ``stats`` counts requests sent, cache hits, retries and items left undecided (None).
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
    ):
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
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0, "undecided": 0}
        self.last_errors: list[str] = []
        self._lock = threading.Lock()
        self._cache = self._read_cache()

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

    # ---- one request ---------------------------------------------------------------------
    def _request(self, prompt: str) -> bool:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 0.0,
                "max_tokens": self.max_tokens,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with self._lock:
            self.stats["requests"] += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            if e.code == 429 or e.code >= 500:
                raise _Retry(f"HTTP {e.code}") from e
            detail = e.read()[:300].decode(errors="replace")
            raise JudgeError(f"judge endpoint {self.url} answered HTTP {e.code}: {detail}") from e
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            raise _Retry(f"{type(e).__name__}: {e}") from e
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as e:
            raise _Retry(f"malformed reply: {raw[:200]!r}") from e
        verdict = parse_verdict(content if isinstance(content, str) else "")
        if verdict is None:
            raise _Retry(f"no verdict in reply: {str(content)[:200]!r}")
        return verdict

    def judge(self, item: JudgeItem) -> bool | None:
        """The verdict for one item: True/False, or None when every try failed."""
        prompt = render_prompt(self.template, item)
        key = self._key(prompt)
        with self._lock:
            if key in self._cache:
                self.stats["cache_hits"] += 1
                return self._cache[key]
        for attempt in range(self.retries + 1):
            try:
                verdict = self._request(prompt)
            except _Retry as e:
                with self._lock:
                    self.last_errors = [*self.last_errors[-9:], str(e)]
                if attempt == self.retries:
                    break
                with self._lock:
                    self.stats["retries"] += 1
                time.sleep(self.backoff * 2**attempt)
                continue
            self._remember(key, verdict)
            return verdict
        with self._lock:
            self.stats["undecided"] += 1
        return None

    def judge_many(
        self, items: Sequence[JudgeItem], on_done: Callable[[], None] | None = None
    ) -> list[bool | None]:
        """Verdicts for ``items`` in order, with at most ``concurrency`` requests in flight."""

        def one(item: JudgeItem) -> bool | None:
            verdict = self.judge(item)
            if on_done is not None:
                on_done()
            return verdict

        if not items:
            return []
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, items))
