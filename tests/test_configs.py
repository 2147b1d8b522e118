"""Every recipe YAML under configs/ resolves through `r1v2 COMMAND FILE --print-config` to the
values it writes down: no unknown key, no wrong type, nothing silently dropped.

The command is named by the file's first line, ``# r1v2 COMMAND ...``. configs/accelerate/
holds accelerate's own launch configs, not r1v2's.
"""

import importlib
from pathlib import Path

import pytest
import yaml

from r1v2.cli import COMMANDS, main
from r1v2.config import coerce, leaf_fields

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RECIPES = sorted(
    p for p in CONFIGS.rglob("*.y*ml") if "accelerate" not in p.relative_to(CONFIGS).parts
)


def command_of(path: Path):
    """The command named by ``# r1v2 COMMAND ...`` on the file's first line (longest match)."""
    first = path.read_text().splitlines()[0].split()
    assert first[:2] == ["#", "r1v2"], f"{path}: first line must be '# r1v2 COMMAND ...'"
    words = first[2:]
    named = [c for c in COMMANDS if words[: len(c.name.split())] == c.name.split()]
    assert named, f"{path}: no r1v2 command in {' '.join(words)!r}"
    return max(named, key=lambda c: len(c.name.split()))


def flat(values: dict, fields: dict, prefix: str = "") -> dict:
    """Nested sections -> ``{dotted_key: value}``; a dict-typed field's value stays whole."""
    out = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if dotted not in fields and isinstance(value, dict):
            out.update(flat(value, fields, dotted + "."))
        else:
            out[dotted] = value
    return out


def test_the_recipes_are_there():
    assert {p.name for p in RECIPES} >= {"grpo_toy.yaml", "grpo_internvl_template.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_prints_its_own_values(path, capsys):
    cmd = command_of(path)
    assert main([*cmd.name.split(), str(path), "--print-config"]) == 0, capsys.readouterr().err
    printed = yaml.safe_load(capsys.readouterr().out)
    module, name = cmd.config.split(":")
    fields = leaf_fields(getattr(importlib.import_module(module), name))
    written = flat(yaml.safe_load(path.read_text()), fields)
    resolved = flat(printed, fields)
    assert set(resolved) == set(fields)  # the printed config is complete
    for key, value in written.items():
        assert key in fields, f"{path}: '{key}' is not a config key of r1v2 {cmd.name}"
        # the file's value as the config reads it (`1e-6` without a dot is a float there)
        want = coerce(key, value, fields[key][0])
        assert resolved[key] == want, f"{path}: {key} printed {resolved[key]!r}, file {want!r}"
        assert type(resolved[key]) is type(want), key
