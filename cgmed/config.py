"""Typed configs from Hydra/OmegaConf nodes.

Each config group maps to one dataclass living next to the code that uses it
(``DataConfig`` in ``cgmed.data.source``, ``SplitConfig`` in ``cgmed.data.split`` ...).
``build_config`` turns the composed node into that dataclass once, at start-up,
and fails with the key's full dotted name and the accepted values, so that a typo
never reaches the work.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from cgmed.errors import ConfigError

T = TypeVar("T")


def _plain(node: Any) -> Any:
    """OmegaConf containers -> plain Python, resolving interpolations."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - hydra is a hard dependency
        return node
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp``, converted where a config allows it."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        return _convert_union(value, tp, key)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(
                key, f"{value!r} is not one of {list(allowed)}", f"set {key} to one of {list(allowed)}"
            )
        return value
    if origin in (list, tuple):
        (inner, *_) = get_args(tp) or (Any,)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}", f"write {key}=[...]")
        return [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        kt, vt = get_args(tp) or (Any, Any)
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        return {_convert(k, kt, key): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build_config(tp, value, key)
    if tp in _SCALARS:
        return _SCALARS[tp](value, key)
    return value


def _convert_union(value: Any, tp: Any, key: str) -> Any:
    """The first member of ``X | Y | None`` that ``value`` fits."""
    args = get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(key, "must be set (got null)", f"give {key} a value of type {_type_name(tp)}")
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(value, arg, key)
        except ConfigError:
            continue
    raise ConfigError(key, f"{value!r} fits none of {_type_name(tp)}")


def _to_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(key, f"expected true/false, got {value!r}")


def _to_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    return value


def _to_float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"expected a number, got {value!r}")
    return float(value)


def _to_str(value: Any, key: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # Subset ids such as 04 arrive from the command line as ints; keep them readable.
        return str(value)
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {value!r}")
    return value


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _child(key: str, name: str) -> str:
    """The dotted name of ``name`` under ``key`` ("" for a command's top-level keys)."""
    return f"{key}.{name}" if key else name


def build_config(cls: type[T], node: Any, key: str) -> T:
    """Build dataclass ``cls`` from a config node; unknown keys and bad types raise ConfigError.

    ``key`` is the dotted path of the node (``"split"``), used in error messages.
    After construction ``__post_init__`` (if any) runs its own cross-field checks.
    """
    node = _plain(node)
    if node is None:
        node = {}
    if isinstance(node, cls):
        return node
    if not isinstance(node, Mapping):
        raise ConfigError(key, f"expected a mapping of {cls.__name__} fields, got {node!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(node) - set(fields))
    if unknown:
        bad = ", ".join(_child(key, u) for u in unknown)
        raise ConfigError(bad, "unknown key", f"valid keys under '{key}' are: {', '.join(sorted(fields))}")
    kwargs = {name: _convert(node[name], hints[name], _child(key, name)) for name in fields if name in node}
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(_child(key, missing[0]), "is required", f"set {_child(key, missing[0])}=...")
    return cls(**kwargs)


def as_dict(obj: Any) -> Any:
    """Dataclass (possibly nested) -> plain JSON-able dict."""
    if dataclasses.is_dataclass(obj):
        return {f.name: as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [as_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    return obj
