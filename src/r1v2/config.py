"""Command configs: one dataclass per command, filled from YAML and ``key=value`` overrides.

Every field carries its help text in ``field(metadata={"help": ...})``; use :func:`option`
to write that briefly. Nested dataclasses give dotted keys (``ssb.enabled=false``).

Resolution order (later wins): dataclass defaults, the YAML file, overrides in the order given.
Override values are parsed as YAML scalars (``3`` is an int, ``0.5`` a float, ``true`` a bool,
``[1, 2]`` a list, ``null`` None), then checked against the field's type annotation.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from r1v2.errors import R1V2Error

T = TypeVar("T")
_EXPONENT_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


class ConfigError(R1V2Error, ValueError):
    """A config value, key or file that cannot be used; the message says which and why."""


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:  # noqa: A002
    """A dataclass field with help text. Mutable defaults are wrapped in a factory."""
    if not help:
        raise ValueError("every config field needs a help string")
    metadata = {"help": help}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        value = default
        return dataclasses.field(default_factory=lambda: _copy(value), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


def check_range(
    key: str,
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise a ConfigError naming ``key`` unless ``value`` is a finite number in the range
    (``low``/``high`` inclusive unless ``*_open``; None = unbounded). None passes (optional)."""
    import math

    if value is None:
        return
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    span = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    bad = not math.isfinite(value)
    bad = bad or (low is not None and (value <= low if low_open else value < low))
    bad = bad or (high is not None and (value >= high if high_open else value > high))
    if bad:
        raise ConfigError(f"config field '{key}' must be a finite number in {span}, got {value}")


def leaf_fields(cls: type, prefix: str = "", base: Any = None) -> dict[str, tuple[Any, str, Any]]:
    """Map each dotted key of ``cls`` to ``(type, help, default)``; nested dataclasses flatten.

    A nested section's defaults are those of the instance its field's default factory makes
    (``SamplingConfig(max_new_tokens=128)``), not its class's; ``base`` carries that instance.
    """
    out: dict[str, tuple[Any, str, Any]] = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = prefix + f.name
        default = getattr(base, f.name) if base is not None else _field_default(f)
        if dataclasses.is_dataclass(tp):
            out.update(leaf_fields(tp, key + ".", default))
            continue
        out[key] = (tp, f.metadata.get("help", ""), default)
    return out


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "None"
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against annotation ``tp``; return it (ints widen to float). Raise ConfigError."""
    ok, out = _coerce(value, tp)
    if not ok:
        raise ConfigError(
            f"config field '{key}' expects {_type_name(tp)}, got {value!r} ({type(value).__name__})"
        )
    return out


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    if tp is Any:
        return True, value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, None
    if origin is Literal:
        return (value in get_args(tp)), value
    if tp is type(None):
        return value is None, None
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str) and _EXPONENT_FLOAT.match(value.strip()):
            return True, float(value)  # YAML 1.1 reads `1e-3` (no dot) as a string
        return False, None
    if tp is str:
        return isinstance(value, str), value
    if origin in (list, tuple) or tp in (list, tuple):
        return _coerce_list(value, get_args(tp))
    if origin is dict or tp is dict:
        return _coerce_dict(value, get_args(tp))
    return isinstance(value, tp), value


def _coerce_list(value: Any, args: tuple) -> tuple[bool, Any]:
    if not isinstance(value, (list, tuple)):
        return False, None
    items = []
    for v in value:
        ok, out = _coerce(v, args[0]) if args else (True, v)
        if not ok:
            return False, None
        items.append(out)
    return True, items


def _coerce_dict(value: Any, args: tuple) -> tuple[bool, Any]:
    if not isinstance(value, dict):
        return False, None
    out = {}
    for k, v in value.items():
        ok_k, kk = _coerce(k, args[0]) if args else (True, k)
        ok_v, vv = _coerce(v, args[1]) if args else (True, v)
        if not (ok_k and ok_v):
            return False, None
        out[kk] = vv
    return True, out


def _flatten(d: dict, prefix: str = "", parents: tuple[int, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    parents = (*parents, id(d))
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and all(isinstance(kk, str) for kk in v):
            if id(v) in parents:  # a YAML alias inside its own anchor: `a: &x {b: *x}`
                raise ConfigError(f"config key '{key}' holds itself (a recursive YAML alias)")
            out[key] = v  # kept whole too: a dict-typed field takes it as is
            for kk, vv in _flatten(v, key + ".", parents).items():
                out[kk] = vv
        else:
            out[key] = v
    return out


def _select(raw: dict[str, Any], fields: dict[str, tuple[Any, str, Any]], source: str):
    """Pick the entries of a flattened mapping that name fields; reject unknown leaves."""
    picked: dict[str, Any] = {}
    groups = {k.rsplit(".", 1)[0] for k in fields if "." in k}
    for key, value in raw.items():
        if key in fields:
            picked[key] = value
        elif key in groups and not isinstance(value, dict):
            raise ConfigError(
                f"{source}: '{key}' is a section of settings ({key}.*), not a value: got {value!r}"
            )
        elif key in groups or any(
            key.startswith(f + ".") for f in fields if _is_dict(fields[f][0])
        ):
            continue  # a section header, or a key inside a dict-typed field
        else:
            raise ConfigError(
                f"{source}: unknown config key '{key}'. Valid keys: {', '.join(sorted(fields))}"
            )
    return picked


def _is_dict(tp: Any) -> bool:
    if tp is dict or get_origin(tp) is dict:
        return True
    return (
        any(_is_dict(a) for a in get_args(tp))
        if get_origin(tp) in (Union, types.UnionType)
        else False
    )


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``; the value is read as a YAML scalar."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip().removeprefix("--").replace("-", "_")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except Exception:  # YAMLError, or PyYAML's constructors' own (2020-13-45, !!int x)
        value = raw  # not a YAML scalar: the text itself (a str field takes it)
    return key, value


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's SafeLoader that refuses a key written twice in one mapping (safe_load keeps
    the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # `? [1]`: left to SafeLoader's own error
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    from r1v2.data.text import decode_utf8

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    try:
        text = decode_utf8(data, path)
    except R1V2Error as e:  # UTF-16, binary data, invalid UTF-8: named with file and line
        raise ConfigError(str(e)) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {e}") from e
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    except Exception as e:  # PyYAML's constructors fail on some tagged values with plain
        # Python errors: 2020-13-45, `!!int x`, an empty `!!float` (an IndexError)
        raise ConfigError(f"{path}: invalid YAML: {type(e).__name__}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys to values")
    return data


def build(cls: type[T], values: dict[str, Any], base: Any = None) -> T:
    """Instantiate ``cls`` from a flat ``{dotted_key: value}`` mapping of checked values; a key
    not given keeps the default of ``base`` (a nested section: its field's default instance)."""
    hints = get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            prefix = f.name + "."
            sub = {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}
            default = getattr(base, f.name) if base is not None else _field_default(f)
            kwargs[f.name] = build(tp, sub, None if default is dataclasses.MISSING else default)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
        elif base is not None:
            kwargs[f.name] = getattr(base, f.name)
    return cls(**kwargs)


def resolve(
    cls: type[T],
    config_file: str | Path | None = None,
    overrides: typing.Sequence[str | tuple[str, Any]] = (),
) -> T:
    """Build a config of type ``cls`` from defaults, an optional YAML file and overrides."""
    fields = leaf_fields(cls)
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(_select(_flatten(load_yaml(config_file)), fields, str(config_file)))
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        if key not in fields:
            raise ConfigError(
                f"unknown config key '{key}'. Valid keys: {', '.join(sorted(fields))}"
            )
        values[key] = value
    checked = {k: coerce(k, v, fields[k][0]) for k, v in values.items()}
    missing = [
        k for k, (_, _, d) in fields.items() if d is dataclasses.MISSING and k not in checked
    ]
    if missing:
        raise ConfigError(f"missing required config value(s): {', '.join(missing)}")
    cfg = build(cls, checked)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
