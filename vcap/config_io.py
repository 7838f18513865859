"""Reading configs: files to dataclasses, command-line overrides, and the paths a run saves.

- :func:`config_from_dict` builds a (nested) config dataclass from a dict: an unknown key or a
  value of the wrong type is an error naming its full key path (``train.lr``); the dataclass's own
  ``__post_init__`` then checks the values.
- :func:`apply_overrides` applies command-line ``key=value`` pairs (values parsed as YAML scalars).
- :func:`read_config_file` reads YAML or JSON; :func:`load_config` reads a run config with
  overrides; :func:`absolute_paths` is the run config as a run saves it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .config import ConfigError, RunConfig

T = TypeVar("T")


def config_from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``: unknown keys and wrong types raise ConfigError."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {_join(where, unknown[0])!r} (known: {', '.join(fields)})")
    kwargs = {name: _convert(hints[name], value, _join(where, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where + ': ' if where else ''}{e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def identity_dict(config: Any) -> dict[str, Any]:
    """A captioner config as identities hash it (``vcap caption``'s model id, the feature store's
    key): ``config_to_dict`` without the settings added after captioners were first saved, where
    they hold their defaults, so that an upgrade leaves earlier outputs and stored features valid."""
    from .config import DEFAULT_DENSE_INSTRUCTIONS

    data = config_to_dict(config)
    for key, default in (("timestamps", "none"), ("end_label", False), ("min_frames", None),
                         ("token_budget", None)):
        if data["frames"].get(key, default) == default:
            data["frames"].pop(key, None)
    if data.get("dense_instructions", DEFAULT_DENSE_INSTRUCTIONS) == DEFAULT_DENSE_INSTRUCTIONS:
        data.pop("dense_instructions", None)
    if not data.get("event_windows", False):
        data.pop("event_windows", None)
    return data


def config_to_dict(config: Any) -> Any:
    if dataclasses.is_dataclass(config):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {k: config_to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    return config


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return config_from_dict(hint, value, where)
    if hint is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        key_hint, value_hint = typing.get_args(hint) or (Any, Any)
        return {k: _convert(value_hint, v, f"{where}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item_hint, *_) = typing.get_args(hint) or (Any,)
        return [_convert(item_hint, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # PyYAML (YAML 1.1) reads 2e-4 as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where} must be float, got {value!r}") from None
    if hint in (int, float, str, bool):
        if isinstance(value, bool) and hint is not bool:
            raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
        if not isinstance(value, hint):
            raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
        return value
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (value parsed as a YAML scalar) to a nested dict, in place."""
    import yaml

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key}: cannot parse {raw!r} ({e})") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.setdefault(part, {}), dict):
                raise ConfigError(f"override {key}: {part} is not a section")
            node = node[part]
        node[parts[-1]] = value
    return data


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML or JSON file as a dict; a syntax error names the file and line."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def absolute_paths(cfg: RunConfig, base: str | os.PathLike | None = None) -> RunConfig:
    """A copy of ``cfg`` whose file and folder settings are absolute (relative ones resolved against
    ``base``, the working folder by default), as a run saves them: the run then means the same
    files from any working folder. A language model that is not a local path (``preset:``, a hub
    id) is kept as it is."""
    root = Path(base or os.getcwd())

    def absolute(value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else (root / path).resolve())

    def absolute_each(value: str | list[str] | None) -> str | list[str] | None:
        return [absolute(v) for v in value] if isinstance(value, list) else absolute(value)

    model, data, train = cfg.model, cfg.data, cfg.train
    lm = model.language_model
    if not lm.startswith("preset:") and (Path(lm).is_absolute() or (root / lm).exists()):
        lm = absolute(lm)
    pretrained = model.vision.pretrained
    if pretrained and Path(pretrained).suffix:  # a file, not an open_clip tag
        pretrained = absolute(pretrained)
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(model, language_model=lm, vision=dataclasses.replace(model.vision, pretrained=pretrained),
                                  vision_weights=absolute(model.vision_weights), tokenizer=absolute(model.tokenizer),
                                  adapter=absolute(model.adapter)),
        data=dataclasses.replace(data, train=absolute_each(data.train), val=absolute_each(data.val),
                                 feature_cache=absolute(data.feature_cache)),
        train=dataclasses.replace(train, out_dir=absolute(train.out_dir), init_from=absolute(train.init_from)),
    )


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """A YAML run config with ``key=value`` overrides applied (errors name the file and key)."""
    data = apply_overrides(read_config_file(path), overrides or [])
    try:
        return config_from_dict(RunConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
