"""YAML and dotted overrides -> typed, validated config objects (and back).

Every value is checked against the dataclass field's type; unknown keys are errors that list the
valid keys (and the closest match). YAML is parsed with ``yaml.safe_load``: values only, no tags.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from kdistill.config.errors import ConfigError
from kdistill.config.recipes import list_recipes, recipes_root, resolve_config_path
from kdistill.config.schema import RunConfig
from kdistill.validation import coerce, describe, field_types

T = TypeVar("T")


# ----------------------------------------------------------------------------- dict -> objects


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """``value`` checked (and built, for nested sections) by the one field checker, which
    raises :class:`ConfigError`."""
    return coerce(value, tp, path, from_dict)


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build the dataclass ``cls`` from a mapping, checking keys and types."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {describe(data)}")
    hints = field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            section = f"'{path}'" if path else "the top level"
            raise ConfigError(
                f"unknown key {where!r}. Valid keys in {section}: {', '.join(sorted(fields))}.{hint}"
            )
        kwargs[key] = _coerce(value, hints[key], where)
    try:
        return cls(**kwargs)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from None


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for a config object, ready for YAML or JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"kd.temperature=2"`` -> ``(["kd", "temperature"], 2)`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value, e.g. kd.temperature=2")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot parse value {raw!r}: {e}") from None
    return key.split("."), value


def set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set ``data[k0][k1]...`` = value, creating missing or null sections on the way."""
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        nxt = keys[i + 1]
        if isinstance(node, list):
            index = _list_index(node, key, keys[: i + 1])
            if node[index] is None:
                node[index] = {}
            node = node[index]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {'.'.join(keys)}: {'.'.join(keys[:i])} is not a section")
        if node.get(key) is None:
            node[key] = [] if nxt.isdigit() else {}
        node = node[key]
    last = keys[-1]
    if isinstance(node, list):
        if last.isdigit() and int(last) == len(node):
            node.append(value)
        else:
            node[_list_index(node, last, keys)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"cannot set {'.'.join(keys)}: {'.'.join(keys[:-1])} is not a section")


def _list_index(node: list[Any], key: str, keys: list[str]) -> int:
    if not key.isdigit():
        raise ConfigError(f"{'.'.join(keys)}: a list needs a numeric index, got {key!r}")
    index = int(key)
    if index >= len(node):
        if index == len(node):
            node.append({})
        else:
            raise ConfigError(
                f"{'.'.join(keys)}: index {index} is past the end of a list of {len(node)}"
            )
    return index


def apply_overrides(cfg: T, overrides: Iterable[str]) -> T:
    """A new config with dotted ``key=value`` overrides applied and re-validated."""
    return apply_values(cfg, {".".join(k): v for k, v in map(parse_override, overrides)})


def apply_values(cfg: T, values: Mapping[str, Any], *, notes: list[str] | None = None) -> T:
    """A new config with ``{"dotted.key": value}`` set (values already typed) and re-validated.

    A change of a model's ``arch`` that leaves its ``args`` alone drops the args, which belong to
    the old architecture (an MLP's ``hidden`` would stop a ResNet); ``notes`` gets a line saying
    so."""
    data = to_dict(cfg)
    for dotted, value in values.items():
        set_path(data, dotted.split("."), value)
    for dotted in values:
        keys = dotted.split(".")
        if keys[-1] != "arch" or any(k.startswith(f"{dotted[:-4]}args") for k in values):
            continue
        model = _get_path(data, keys[:-1])
        old = _get_path(to_dict(cfg), keys)
        if isinstance(model, dict) and model.get("args") and model.get("arch") != old:
            if notes is not None:
                notes.append(
                    f"{dotted} changed from {old} to {model.get('arch')}: the arguments of "
                    f"{old} ({', '.join(f'{k}={v}' for k, v in model['args'].items())}) are "
                    f"dropped; set {dotted[:-4]}args to give {model.get('arch')} its own"
                )
            model["args"] = {}
    return from_dict(type(cfg), data)


def _get_path(data: Any, keys: list[str]) -> Any:
    """``data[k0][k1]...`` or ``None`` where the path does not exist."""
    node = data
    for key in keys:
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, dict):
            node = node.get(key)
        else:
            return None
    return node


# ----------------------------------------------------------------------------- files


def load_config(
    source: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    values: Mapping[str, Any] | None = None,
    notes: list[str] | None = None,
) -> RunConfig:
    """The one way a run config is made from outside: a YAML file or a shipped recipe's name
    (``"digits/distill"``; ``None`` = the defaults), then typed ``values`` (what command-line
    flags set), then dotted ``key=value`` overrides (later wins); validated once, as a whole.
    ``notes`` collects what the changes did beyond setting keys (see :func:`apply_values`)."""
    cfg = (
        from_dict(RunConfig, read_yaml(resolve_config_path(source)), "")
        if source is not None
        else RunConfig()
    )
    changes = dict(values or {})
    changes.update({".".join(k): v for k, v in map(parse_override, overrides)})
    return apply_values(cfg, changes, notes=notes) if changes else cfg


class _ValuesOnlyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` without aliases (a few hundred bytes of nested aliases expand to
    gigabytes) and without duplicate keys (YAML keeps the last silently)."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(
                f"aliases (*{event.anchor}) are not accepted in kdistill configs: write the values "
                f"out (line {event.start_mark.line + 1})"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.YAMLError(
                    f"duplicate key {key!r} (lines {seen[key]} and {key_node.start_mark.line + 1}): "
                    "each key may appear once in a mapping"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


class _LastKeyWinsLoader(_ValuesOnlyLoader):
    """Values only, but a key written twice keeps its last value (as PyYAML and the tools
    whose files kdistill reads do), each one recorded in ``duplicates``."""

    duplicates: list[tuple[Any, int, int]]

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:  # type: ignore[override]
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                self.duplicates.append((key, seen[key], line))
            seen[key] = line
        return yaml.SafeLoader.construct_mapping(self, node, deep=deep)


def parse_yaml(text: str, duplicates: list[tuple[Any, int, int]] | None = None) -> Any:
    """Values from YAML text: plain data only (no tags, aliases or duplicate keys). With
    ``duplicates`` (another tool's file), a key written twice keeps its last value and
    ``(key, first line, later line)`` is appended there instead."""
    if duplicates is None:
        return yaml.load(text, Loader=_ValuesOnlyLoader)
    loader = _LastKeyWinsLoader(text)
    loader.duplicates = duplicates
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(
    path: str | Path, duplicates: list[tuple[Any, int, int]] | None = None
) -> dict[str, Any]:
    """Parse a YAML file that must hold a mapping (empty file = empty mapping); ``duplicates``
    as in :func:`parse_yaml`."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {str(p)!r} is a directory; give the YAML file in it")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {p}: {e}") from None
    try:
        data = parse_yaml(text, duplicates)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML (values only, no tags or aliases): {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{p}: the top level must be a mapping of config keys, got {type(data).__name__}"
        )
    return data


def dump_yaml(cfg: Any) -> str:
    """The config as YAML (every key, defaults included)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def _parents(data: Any, keys: list[str]) -> list[dict[str, Any]]:
    """The mappings reached by ``keys`` (``name[]`` descends into every item of a list)."""
    nodes = [data]
    for key in keys:
        listed = key.endswith("[]")
        key = key.removesuffix("[]")
        found = [n.get(key) for n in nodes if isinstance(n, dict)]
        nodes = [i for f in found if isinstance(f, list) for i in f] if listed else found
    return [n for n in nodes if isinstance(n, dict)]


def config_hash(
    cfg: Any, *, exclude: Iterable[str] = (), at_default: Mapping[str, Any] | None = None
) -> str:
    """A short, stable hash of the config's values. Dotted keys in ``exclude`` are left out;
    keys in ``at_default`` are left out while they hold the given value (``policies[].x``
    names a key of every policy)."""
    data = to_dict(cfg)
    for dotted in exclude:
        *parents, last = dotted.split(".")
        for node in _parents(data, parents):
            node.pop(last, None)
    for dotted, default in (at_default or {}).items():
        *parents, last = dotted.split(".")
        for node in _parents(data, parents):
            if last in node and node[last] == default:
                del node[last]
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def field_docs(cls: type) -> list[tuple[str, str, str, str]]:
    """``(dotted key, type, default, description)`` for every field, recursively."""
    rows: list[tuple[str, str, str, str]] = []

    def walk(c: type, prefix: str) -> None:
        h = get_type_hints(c)
        for f in dataclasses.fields(c):
            tp = h[f.name]
            key = f"{prefix}{f.name}"
            inner = [a for a in get_args(tp) if dataclasses.is_dataclass(a)]
            if (
                get_origin(tp) is tuple
                and get_args(tp)
                and get_origin(get_args(tp)[0]) in (Union, types.UnionType)
            ):
                # a list of tagged policies: document every kind
                rows.append((key, "list[policy]", "[]", f.metadata.get("doc", "")))
                for option in get_args(get_args(tp)[0]):
                    (kind,) = get_args(get_type_hints(option)["kind"])
                    walk(option, f"{key}[kind={kind}].")
                continue
            target = tp if dataclasses.is_dataclass(tp) else (inner[0] if inner else None)
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            if target is not None and get_origin(tp) is not tuple:
                rows.append(
                    (
                        key,
                        _type_name(tp),
                        "section" if default is not None else "null",
                        f.metadata.get("doc", ""),
                    )
                )
                walk(target, f"{key}.")
            else:
                shown = json.dumps(to_dict(default))
                rows.append((key, _type_name(tp), shown, f.metadata.get("doc", "")))
                if target is not None:  # list of sections, e.g. kd.teachers
                    walk(target, f"{key}[i].")

    walk(cls, "")
    return rows


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list[{_type_name(args[0])}]"
        return f"list[{', '.join(_type_name(a) for a in args)}]"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if tp is typing.Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def recipes_writing(path: str | Path) -> list[str]:
    """The shipped recipes whose run is linked at ``path`` (``<out_dir>/<name>``): what to
    train when a config names a teacher that does not exist yet."""
    target = Path(path)
    found = []
    for name in list_recipes():
        data = read_yaml(recipes_root() / f"{name}.yaml")
        out = Path(str(data.get("out_dir") or "runs")) / str(data.get("name") or "")
        if out == target:
            found.append(name)
    return found
