"""Typed dataclass configs: load from YAML, override from the command line, save resolved.

Every command's settings are a (possibly nested) dataclass. ``load_config(Cls, yaml_path,
overrides)`` builds one from defaults, then a YAML file, then ``key.sub=value`` overrides
(values parsed as YAML scalars/lists and checked against the field's type).
``add_config_arguments`` turns the same fields into ``--key.sub`` flags for argparse so the
CLI never repeats a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

log = logging.getLogger(__name__)

T = TypeVar("T")


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


_YAML_TRUE, _YAML_FALSE = ("yes", "on", "true", "y"), ("no", "off", "false", "n")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` (parsed YAML) to the annotated type ``tp``."""
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"config field {where!r} may not be null")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"config field {where!r} expects a mapping, got {value!r}")
        return _from_dict(tp, value, where + ".")
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if isinstance(value, str) and "," in value and not value.lstrip().startswith("["):
            value = [_scalar(v) for v in value.split(",") if v.strip()]  # --lr_grid 1e-4,1e-3
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config field {where!r} expects a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool) and value not in allowed:  # YAML 1.1 reads no/off/yes/on as booleans
            spelled = [a for a in allowed if isinstance(a, str) and a.lower() in (_YAML_TRUE if value else _YAML_FALSE)]
            value = spelled[0] if len(spelled) == 1 else value
        if value not in allowed:
            raise ValueError(f"config field {where!r} must be one of {allowed}, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config field {where!r} expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config field {where!r} expects an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config field {where!r} expects a number, got {value!r}")
        return float(value)
    if tp is str:
        return str(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config field {where!r} expects a mapping, got {value!r}")
        return dict(value)
    return value


def _sections(cls) -> dict[str, type]:
    """Open sections of a config class (``config_sections()`` hook, e.g. one per student kind).

    Such a class keeps them in its ``sections`` dict field; each is a typed dataclass of its own.
    """
    hook = getattr(cls, "config_sections", None)
    return hook() if hook is not None else {}


def _plain_fields(cls) -> list[dataclasses.Field]:
    skip = {"sections"} if hasattr(cls, "config_sections") else set()
    return [f for f in dataclasses.fields(cls) if f.name not in skip]


def _from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    types_ = _field_types(cls)
    names = {f.name for f in _plain_fields(cls)}
    sections = _sections(cls)
    unknown = set(data) - names - set(sections)
    if unknown:
        raise ValueError(
            f"unknown config field(s) {sorted(prefix + u for u in unknown)}; "
            f"known: {sorted(prefix + n for n in names | set(sections))}"
        )
    kwargs = {k: _coerce(v, types_[k], prefix + k) for k, v in data.items() if k in names}
    if sections:
        kwargs["sections"] = {k: _coerce(v, sections[k], prefix + k) for k, v in data.items() if k in sections}
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    """Plain-dict view of a config (tuples become lists) for YAML/JSON."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            out = {f.name: conv(getattr(v, f.name)) for f in _plain_fields(type(v))}
            if hasattr(v, "config_sections"):  # open sections: only those the object says matter
                out.update({k: conv(v.section(k)) for k in v.saved_sections()})
            return out
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v
    return conv(cfg)


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot override {key!r}: {p!r} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=3e-4"`` -> ``("train.lr", 0.0003)``; values are YAML scalars or lists."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    return key.strip(), _scalar(raw)


def _scalar(raw: str) -> Any:
    """A YAML value, where ``3e-4`` (a string to YAML) is the number it reads as."""
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") and not value.isalpha() else value
        except ValueError:
            pass
    return value


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict | list | None = None) -> T:
    """Defaults <- YAML file <- overrides (a dict of dotted keys or a list of ``k=v`` strings)."""
    data = to_dict(cls())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping")
        if _drop_actions(loaded):
            log.warning("%s: 'overwrite' in a config file is ignored; replacing a run takes --overwrite true", path)
        _merge(data, loaded)
    if overrides:
        items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
        for k, v in items:
            _set_dotted(data, k, v)
    return _from_dict(cls, data)


def _merge(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


ACTIONS = ("overwrite",)  # what one command does, not a setting of the run: never saved, never read from a file


def _drop_actions(data: dict) -> bool:
    """Remove :data:`ACTIONS` keys at every level of ``data``; whether there were any."""
    found = False
    for key in list(data):
        if key in ACTIONS:
            del data[key]
            found = True
        elif isinstance(data[key], dict):
            found |= _drop_actions(data[key])
    return found


def save_config(cfg, path: str | Path) -> None:
    """The resolved settings as YAML, without one-off actions (``overwrite``): re-running a run's
    ``config.yaml`` never replaces that run unless asked again on the command line."""
    data = to_dict(cfg)
    _drop_actions(data)
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def _leaf_fields(cls, prefix: str = ""):
    types_ = _field_types(cls)
    for f in _plain_fields(cls):
        tp, _ = _strip_optional(types_[f.name])
        if dataclasses.is_dataclass(tp):
            yield from _leaf_fields(tp, prefix + f.name + ".")
        else:
            yield prefix + f.name, f
    for name, section in _sections(cls).items():
        yield from _leaf_fields(section, prefix + name + ".")


def add_config_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add ``--config`` and one ``--dotted.name`` flag per leaf field of ``cls``."""
    parser.add_argument("--config", help="YAML file with settings (flags override it)")
    group = parser.add_argument_group("settings (defaults shown by `stackdistill config`)")
    for name, f in _leaf_fields(cls):
        help_ = f.metadata.get("help", "").replace("%", "%%")
        flags = ["--" + name]
        if "_" in name:
            flags.append("--" + name.replace("_", "-"))
        group.add_argument(*flags, dest="cfg:" + name, default=argparse.SUPPRESS, metavar="V", help=help_)


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    overrides = {}
    for k, v in vars(args).items():
        if k.startswith("cfg:"):
            overrides[k[4:]] = parse_override(f"x={v}")[1]
    return load_config(cls, getattr(args, "config", None), overrides)
