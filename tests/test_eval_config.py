"""EvalConfig.validate: every numeric field out of range is one error naming it, before any
benchmark is read (exit 2 through the CLI, no traceback)."""

import pytest

from r1v2.cli import main
from r1v2.config import ConfigError
from r1v2.eval.command import EvalConfig


def cfg(**kw) -> EvalConfig:
    return EvalConfig(bench=["a=b"], responses="r.jsonl", **kw)


@pytest.mark.parametrize(
    "field, value",
    [
        ("runs", 0),
        ("batch_size", 0),
        ("max_new_tokens", 0),
        ("limit", 0),
        ("judge_concurrency", 0),
        ("judge_max_failures", 0),
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("judge_timeout", 0.0),
        ("judge_timeout", float("inf")),
        ("judge_retries", -1),
        ("judge_backoff", -1.0),
    ],
)
def test_out_of_range_fields_are_errors_naming_them(field, value):
    with pytest.raises(ConfigError, match=f"^config field '{field}' must be"):
        cfg(**{field: value}).validate()


def test_the_defaults_and_the_edges_pass():
    cfg().validate()
    cfg(temperature=0.0, top_p=1.0, top_k=0, limit=1, judge_retries=0, judge_backoff=0.0).validate()


def test_the_cli_refuses_before_reading_anything(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"  # never read: the config is refused first
    args = ["eval", "--responses", str(missing), "--bench", f"a={missing}", "judge_timeout=-1"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "config field 'judge_timeout' must be" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
