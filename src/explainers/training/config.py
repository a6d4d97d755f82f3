"""One way to configure every training command: ``--config FILE`` (JSON or TOML) plus repeatable
``--set KEY=VALUE``, checked once against a dataclass of settings.

Unknown keys and values of the wrong type are refused with one line that lists the valid keys; numbers
must be finite (``lr=nan`` or ``lambda_mask=inf`` would silently ruin a run).
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import tomllib

from explainers.errors import ExplainersError


class ConfigError(ExplainersError):
    """A configuration file, key or value that cannot be used."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a JSON or TOML file (by suffix; ``.toml`` is TOML, anything else JSON)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are both ValueErrors
        raise ConfigError(f"cannot parse config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/object of settings")
    return data


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["epochs=3", "schedule=reference"]`` → ``{"epochs": 3, "schedule": "reference"}`` (JSON values;
    anything that is not JSON is taken as a string)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def gather_settings(config_file: str | Path | None, sets: list[str] | None) -> dict[str, Any]:
    """The file's settings with the ``--set`` ones on top."""
    data = read_config_file(config_file) if config_file is not None else {}
    return {**data, **parse_sets(sets)}


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(cls: type, key: str, value: Any) -> Any:
    """``value`` as the type of field ``key`` of dataclass ``cls`` (strings from ``--set`` accepted)."""
    hint = _type_hints(cls)[key]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{key} cannot be null")
    if base is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool | int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
        if not math.isfinite(number) or not number.is_integer():
            raise ConfigError(f"{key} must be a (finite) integer, got {value!r}")
        return int(number)
    if base is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return number
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


def build(cls: type, data: dict[str, Any], what: str) -> Any:
    """An instance of dataclass ``cls`` from ``data``: unknown keys refused (valid ones listed), values
    coerced to the field types and checked to be finite; the class's own ``validate()`` runs after."""
    assert is_dataclass(cls)
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown {what} config key(s): {', '.join(unknown)}; valid keys: {', '.join(valid)}"
        )
    return cls(**{k: coerce(cls, k, v) for k, v in data.items()})
