from dataclasses import dataclass, field
from typing import Literal

import pytest

from r1v2.config import ConfigError, leaf_fields, option, resolve, to_yaml


@dataclass
class Inner:
    enabled: bool = option(True, "turn it on")
    alpha: float = option(1.0, "an exponent")


@dataclass
class Outer:
    model: str = option("m", "model path")
    steps: int = option(10, "how many steps")
    mode: Literal["a", "b"] = option("a", "which mode")
    tags: list[str] = option(["x"], "some tags")
    weights: dict[str, float] = option({"dpo": 0.8}, "named weights")
    limit: int | None = option(None, "optional limit")
    inner: Inner = field(default_factory=Inner, metadata={"help": "nested"})


def test_defaults_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 3\ninner:\n  alpha: 2\nweights: {dpo: 1.0, nll: 0.5}\n")
    cfg = resolve(Outer, f, ["inner.enabled=false", "steps=5", "limit=7", "tags=[a, b]"])
    assert cfg.steps == 5  # override beats file
    assert cfg.inner.alpha == 2.0 and isinstance(cfg.inner.alpha, float)
    assert cfg.inner.enabled is False
    assert cfg.weights == {"dpo": 1.0, "nll": 0.5}
    assert cfg.limit == 7 and cfg.tags == ["a", "b"]
    assert cfg.model == "m" and cfg.mode == "a"
    assert "alpha: 2.0" in to_yaml(cfg)


def test_defaults_are_not_shared():
    a, b = resolve(Outer), resolve(Outer)
    a.tags.append("y")
    assert b.tags == ["x"]


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        resolve(Outer, None, ["stepz=3"])
    assert "stepz" in str(e.value) and "inner.alpha" in str(e.value) and "steps" in str(e.value)
    f = tmp_path / "c.yaml"
    f.write_text("inner:\n  beta: 1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key 'inner.beta'"):
        resolve(Outer, f)


@pytest.mark.parametrize(
    "override, field_name",
    [
        ("steps=abc", "steps"),
        ("steps=1.5", "steps"),
        ("mode=c", "mode"),
        ("inner.enabled=3", "inner.enabled"),
    ],
)
def test_wrong_type_names_field_and_value(override, field_name):
    with pytest.raises(ConfigError) as e:
        resolve(Outer, None, [override])
    msg = str(e.value)
    assert f"'{field_name}'" in msg and override.split("=")[1] in msg


def test_bad_yaml_names_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("steps: 3\nmodel: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        resolve(Outer, f)


def test_exponent_floats_without_a_dot(tmp_path):
    """YAML 1.1 reads `1e-3` as a string; float fields accept it, str fields keep it."""
    f = tmp_path / "c.yaml"
    f.write_text("inner:\n  alpha: 2e-2\n")
    cfg = resolve(Outer, f, ["model=1e-3"])
    assert cfg.inner.alpha == 0.02 and cfg.model == "1e-3"
    assert resolve(Outer, None, ["inner.alpha=1e-3"]).inner.alpha == 0.001
    with pytest.raises(ConfigError, match="inner.alpha"):
        resolve(Outer, None, ["inner.alpha=1e-3x"])


def test_a_nested_sections_defaults_come_from_its_field_not_its_class():
    """GRPO declares its rollouts with SamplingConfig(max_new_tokens=128) (the class default is
    256): the CLI, --help and Python must all see 128, and an override of another key of the
    section keeps it."""
    from r1v2.train.grpo import GRPOConfig

    assert resolve(GRPOConfig).generation.max_new_tokens == 128
    assert (
        resolve(GRPOConfig, None, ["generation.temperature=0.7"]).generation.max_new_tokens == 128
    )
    assert leaf_fields(GRPOConfig)["generation.max_new_tokens"][2] == 128
    assert (
        resolve(GRPOConfig, None, ["generation.max_new_tokens=64"]).generation.max_new_tokens == 64
    )


@pytest.mark.parametrize(
    "override, field",
    [
        ("optim.lr=-1", "optim.lr"),
        ("optim.lr=.nan", "optim.lr"),
        ("optim.lr=.inf", "optim.lr"),
        ("optim.betas=[2, 3]", "optim.betas"),
        ("ssb.capacity=-1", "ssb.capacity"),
        ("kl_coef=-1", "kl_coef"),
        ("clip_low=-1", "clip_low"),
        ("ssb.target_ratio=5", "ssb.target_ratio"),
        ("ssb.eps=-1", "ssb.eps"),
        ("std_floor=-0.1", "std_floor"),
    ],
)
def test_grpo_values_are_checked_before_any_work(override, field, capsys):
    """Each bad value is a one-line exit-2 error naming the full dotted field, raised while the
    config resolves (nothing is loaded: the model path does not even exist)."""
    from r1v2.cli import main

    rc = main(["grpo", "model=/nonexistent", override, "--print-config"])
    err = capsys.readouterr().err
    assert rc == 2 and f"'{field}'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["grpo", "mpo"])
@pytest.mark.parametrize(
    "override, field",
    [
        ("guard.tolerance=-0.1", "guard.tolerance"),
        ("guard.patience=0", "guard.patience"),
        ("max_steps=0", "max_steps"),
        ("save_steps=0", "save_steps"),
        ("probe_every=0", "probe_every"),
        ("probe_size=0", "probe_size"),
        ("nan_patience=0", "nan_patience"),
        ("keep_last=-1", "keep_last"),
    ],
)
def test_run_settings_are_checked_alike_before_any_work(command, override, field, capsys):
    """The run settings grpo and mpo share (folder, checkpoints, probe, guard) are checked by
    one validator while the config resolves: the hallucination guard's too, which grpo once
    checked only after loading the model."""
    from r1v2.cli import main

    rc = main([command, "model=/nonexistent", override, "--print-config"])
    err = capsys.readouterr().err
    assert rc == 2 and f"'{field}'" in err and len(err.strip().splitlines()) == 1


def test_grpo_and_mpo_share_their_run_settings():
    from r1v2.train.grpo import GRPOConfig
    from r1v2.train.mpo import MPOConfig
    from r1v2.train.stage import RunSettings

    shared = set(leaf_fields(RunSettings))
    assert shared <= set(leaf_fields(GRPOConfig)) and shared <= set(leaf_fields(MPOConfig))
    # each stage keeps its own defaults for these
    assert resolve(GRPOConfig).output_dir == "runs/grpo" and resolve(GRPOConfig).max_steps == 60
    assert resolve(MPOConfig).output_dir == "runs/mpo" and resolve(MPOConfig).probe_every == 5
    assert resolve(GRPOConfig, None, ["guard.action=false"]).guard.action == "off"


def test_a_section_written_as_a_scalar_and_a_duplicate_key_are_errors(tmp_path):
    from r1v2.train.grpo import GRPOConfig

    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("ssb: false\n")
    with pytest.raises(ConfigError, match="'ssb' is a section of settings"):
        resolve(GRPOConfig, scalar)
    dup = tmp_path / "dup.yaml"
    dup.write_text("max_steps: 5\ngroup_size: 4\nmax_steps: 6\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:3: invalid YAML: .*duplicate key 'max_steps'"):
        resolve(GRPOConfig, dup)
