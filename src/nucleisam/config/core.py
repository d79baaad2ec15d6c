"""The configuration mechanism: dataclass trees filled from YAML/TOML files and ``--set key=value``.

Every section of a run's configuration is a frozen dataclass with defaults (:mod:`nucleisam.config`
holds them all). This module turns plain nested dicts (parsed from a file, built from overrides or
read from an adapter's metadata) into those dataclasses with strict checking, so that a misspelt key
or a wrong type fails early with a message naming the dotted key and what is allowed, and turns them
back into plain dicts for saving next to the results. Range checks live in each section's
``__post_init__`` (:func:`require`), so a section built in Python is checked the same way.

Supported field types: ``bool``, ``int``, ``float`` (finite), ``str``, ``Literal[...]``, ``X | None``,
``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``, ``dict[str, X]`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from nucleisam.errors import NucleisamError
from nucleisam.utils.atomic import write_text_atomic

T = TypeVar("T")

CONFIG_SUFFIXES = (".yaml", ".yml", ".toml")


class ConfigError(NucleisamError):
    """A configuration value at fault. ``key`` is its dotted key (``model.lora.rank``), so that a
    front end can name its own way of setting it (the CLI's option) next to the message."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


def require(condition: bool, key: str, rule: str, value: object) -> None:
    """Raise :class:`ConfigError` "configuration key '<key>' must be <rule>" unless ``condition``
    (the range checks of every configuration dataclass's ``__post_init__``)."""
    if not condition:
        raise ConfigError(f"configuration key '{key}' must be {rule} (got {value!r}).", key)


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass (string annotations evaluated once)."""
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(v) for v in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in canonical form."""

    def fail(expected: str | None = None) -> ConfigError:
        return ConfigError(
            f"configuration key '{key}': got {value!r} ({type(value).__name__}), "
            f"expected {expected or _type_name(tp)}.",
            key,
        )

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise fail(f"a mapping of {tp.__name__} options")
        return from_dict(tp, value, prefix=key)
    if origin is Literal:
        # bool is an int subclass: True must not match a Literal[1].
        for allowed in args:
            if value == allowed and type(value) is type(allowed):
                return allowed
        raise fail(f"one of {', '.join(repr(a) for a in args)}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: X's own error (e.g. a nested key) is the useful one
            return _convert(value, options[0], key)
        for option in options:
            try:
                return _convert(value, option, key)
            except NucleisamError:
                continue
        raise fail()
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise fail(f"a list ({_type_name(tp)})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise fail(f"a list of {len(args)} values ({_type_name(tp)})")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise fail(f"a list ({_type_name(tp)})")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise fail(f"a mapping ({_type_name(tp)})")
        return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail("an integer")
    if tp is float:
        return _finite_float(value, fail)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise fail("a string")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise fail()


def _finite_float(value: Any, fail: Callable[[str], ConfigError]) -> float:
    """A finite float from a number, or from a string Python reads as one (YAML 1.1 reads "1e-4",
    without a dot, as a string); NaN and infinities are refused: no option means either."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise fail("a number")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise fail("a finite number") from None
    if not math.isfinite(number):
        raise fail("a finite number")
    return number


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, prefix: str = "") -> T:
    """Build the dataclass ``cls`` from a (nested) mapping; missing keys keep their defaults.

    ``prefix`` is the dotted key of the section (``"model"``), so errors name the full key.
    Raises :class:`ConfigError` naming the dotted key for an unknown key (listing the allowed
    ones), a value of the wrong type, or one out of range.
    """
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(
            f"configuration section '{prefix or cls.__name__}' must be a mapping of keys to values, "
            f"not {type(data).__name__}.",
            prefix,
        )
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = _field_types(cls)
    unknown = sorted(str(k) for k in set(data) - set(fields))
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        section = f" in section '{prefix}'" if prefix else ""
        raise ConfigError(
            f"unknown configuration key '{where}'{section}. Allowed keys: {', '.join(fields)}.", where
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(value, hints[name], key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        where = f" in {prefix!r}" if prefix else ""
        raise ConfigError(f"invalid configuration{where}: {exc}", prefix) from exc


def to_dict(obj: Any) -> Any:
    """Dataclass tree → plain dicts/lists/scalars (tuples become lists), ready for YAML or JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file into a dict (empty file → {})."""
    file = Path(path)
    if not file.is_file():
        raise NucleisamError(f"configuration file not found: {file}.")
    suffix = file.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise NucleisamError(
            f"configuration file {file} has suffix {suffix!r}; use one of {', '.join(CONFIG_SUFFIXES)}."
        )
    text = file.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: TOML errors, impossible YAML dates
        raise NucleisamError(f"cannot parse configuration file {file}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise NucleisamError(
            f"configuration file {file} must hold a mapping of sections, not {type(data).__name__}."
        )
    return data


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` → (["train", "lr"], 0.0001); the value is read as a YAML scalar or list."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise NucleisamError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. train.lr=1e-4.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: e.g. the date 2024-13-01
        raise NucleisamError(f"--set {text!r}: cannot read the value: {exc}") from exc
    return key.split("."), value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``--set key=value`` strings to a nested dict (a new dict is returned)."""
    result = to_dict(dict(data))
    for text in overrides:  # one by one: a later --set wins over an earlier one
        path, value = parse_override(text)
        result = assign(result, {".".join(path): value})
    return result


def assign(data: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys to Python values (no parsing: for paths and numbers from CLI options)."""
    result = to_dict(dict(data))
    for dotted, value in values.items():
        nested: dict[str, Any] = {dotted.split(".")[-1]: value}
        for part in reversed(dotted.split(".")[:-1]):
            nested = {part: nested}
        result = _merge(result, nested)
    return result


def load_config(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    values: Mapping[str, Any] | None = None,
) -> T:
    """Defaults of ``cls``, updated by the file at ``path`` (if any), then by ``values`` (dotted key →
    value, e.g. from dedicated CLI options), then by the ``--set`` strings ``overrides``."""
    # Only what the user set is collected; from_dict fills in the rest, so that defaults one field
    # derives from another (e.g. a head chosen by the mode) are resolved after every override.
    data: dict[str, Any] = {}
    if path is not None:
        data = _merge(data, read_config_file(path))
    data = assign(data, values or {})
    data = apply_overrides(data, overrides)
    return from_dict(cls, data)


def dump_config(config: Any) -> str:
    """YAML text of a configuration (key order as declared)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


def save_config(config: Any, path: str | os.PathLike[str]) -> Path:
    """Write the resolved configuration as YAML, atomically."""
    return write_text_atomic(path, dump_config(config))
