"""BFCL (Berkeley Function Calling Leaderboard), AST categories: the leaderboard's own prompt
and checker, from ``bfcl-eval`` in an environment of its own.

``bfcl-eval`` pins versions that clash with r1v2's (numpy 1.26, filelock 3.20, ...), so it is
installed in its own virtual environment and run there by :mod:`r1v2.eval.bfcl_worker`
(one process per batch): ``python -m r1v2.eval.bfcl install`` creates it under
``~/.cache/r1v2`` (about 600 MB, a minute), or point ``$R1V2_BFCL_PYTHON`` at the Python of
an environment that has it. The leaderboard's retrieval and local-inference dependencies
(sentence-transformers, faiss) are left out: the AST checker does not use them.

Scored as the leaderboard scores a prompting (non-function-calling) model: the prompt is BFCL's
system prompt for the entry's functions (the ``[func(arg=value)]`` format) followed by the
user's question; the answer after the response's last ``</think>`` is decoded by BFCL's
prompting decoder and checked against the entry's possible answers by its ``ast_checker``
(``parallel*`` in any order). Categories: simple (Python), multiple, parallel,
parallel_multiple.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from r1v2.errors import R1V2Error

VERSION = "2026.3.23"
CATEGORIES = ("simple", "simple_python", "multiple", "parallel", "parallel_multiple")
WORKER = Path(__file__).with_name("bfcl_worker.py")
REQUIREMENTS = Path(__file__).with_name("bfcl-requirements.txt")
TIMEOUT_S = 600


def default_env() -> Path:
    return Path.home() / ".cache" / "r1v2" / f"bfcl-eval-{VERSION}"


def install_hint() -> str:
    return (
        "BFCL needs bfcl-eval in an environment of its own: run `python -m r1v2.eval.bfcl "
        "install` (or set R1V2_BFCL_PYTHON to a Python that has bfcl-eval)"
    )


def bfcl_python() -> str:
    """The Python of the environment holding ``bfcl-eval``."""
    given = os.environ.get("R1V2_BFCL_PYTHON")
    python = Path(given) if given else default_env() / "bin" / "python"
    if not python.is_file():
        where = f"R1V2_BFCL_PYTHON={given}" if given else str(python)
        raise R1V2Error(f"{where}: no such Python. {install_hint()}")
    return str(python)


def category_of(entry_id: str) -> str:
    """BFCL's category of an entry id: ``parallel_multiple_12`` -> ``parallel_multiple``."""
    head, _, tail = entry_id.rpartition("_")
    return head if head and tail.isdigit() else entry_id


def run_worker(op: str, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One request to :mod:`r1v2.eval.bfcl_worker` in bfcl-eval's environment."""
    python = bfcl_python()
    request = json.dumps({"op": op, "items": list(items)})
    try:
        done = subprocess.run(
            [python, str(WORKER)],
            input=request,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise R1V2Error(f"BFCL's checker ({python}) took over {TIMEOUT_S} s") from None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise R1V2Error(f"BFCL's checker ({python}) failed: {tail}. {install_hint()}")
    return json.loads(done.stdout)


def prompts(entries: Sequence[dict[str, Any]]) -> list[str]:
    """BFCL's prompt of each entry (``id``, ``question``, ``function``) as one user turn: the
    system prompt, a blank line, the user's message."""
    out = []
    for messages in run_worker("prompts", entries)["prompts"]:
        out.append("\n\n".join(m["content"] for m in messages))
    return out


def check(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """BFCL's verdicts: ``items`` hold ``id``, ``function``, ``possible_answer`` and the
    response ``output``; each result has ``valid``, ``error_type`` and ``error``."""
    from r1v2.eval.ifeval import answer_part  # the part after the last </think>

    if not items:
        return []
    sent = [{**item, "output": answer_part(item["output"])} for item in items]
    return run_worker("check", sent)["results"]


def install(env: Path) -> None:
    """Create ``env`` and install bfcl-eval (without its retrieval / inference extras)."""
    if (env / "bin" / "python").is_file():
        print(f"{env} exists; remove it first to reinstall")
        return
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    steps = [
        [sys.executable, "-m", "venv", str(env)],
        [*pip, "--no-deps", f"bfcl-eval=={VERSION}"],
        [*pip, "-r", str(REQUIREMENTS)],
    ]
    for step in steps:
        if subprocess.run(step).returncode != 0:
            raise SystemExit(f"failed: {' '.join(step)}")
    check_import = "from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker"
    if subprocess.run([str(env / "bin" / "python"), "-c", check_import]).returncode != 0:
        raise SystemExit(f"bfcl-eval does not import in {env}")
    print(f"bfcl-eval {VERSION} installed in {env}; r1v2 finds it there")


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m r1v2.eval.bfcl",
        description="Install BFCL's checker (bfcl-eval) in an environment of its own.",
    )
    p.add_argument("command", choices=["install"])
    p.add_argument("--env", type=Path, default=default_env(), help="where (default: %(default)s)")
    args = p.parse_args(argv)
    install(args.env)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
