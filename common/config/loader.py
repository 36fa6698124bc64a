"""Loading YAML configs: `_base_` inheritance, `-o key=value` overrides, checks against the schema.

A config file may list base files, relative to itself:

    _base_: [_base_/dac_detr_r50.yml, _base_/coco.yml]
    train: {epochs: 24}

Bases are merged in order, then the file itself; dicts merge key by key, any other value replaces. Overrides
`a.b=value` come last, their values parsed as YAML (`train.lr=1e-4`, `train.lr_drop=[20]`). Every key must be
in the schema, with a value of its type; errors name the key and the file (or the override) that set it.
"""
import difflib
import os
import re
from typing import Any, Dict, Iterable, List, Optional

import yaml

from common.config.fields import Field


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 wants `1.0e-4` and would give a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+][0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


class ConfigError(ValueError):
    """A config problem, with a message that names the key and where it was set."""


class Config(dict):
    """A nested dict whose keys also read as attributes (`cfg.train.lr`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key '{name}'") from None

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.items()}


def load_config(path: str, overrides: Iterable[str] = (), schema: Optional[dict] = None) -> Config:
    """Reads `path` with its bases, applies `overrides` ("a.b=value"), checks and fills defaults."""
    if schema is None:
        from common.config.schema import SCHEMA as schema
    values: Dict[str, Any] = {}
    sources: Dict[str, str] = {}  # dotted key -> the file or override that set it last
    _merge_file(os.path.abspath(path), values, sources, stack=[])
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(values, key, value)
        sources[key] = f"-o {item}"
    _check(values, schema, sources, prefix="")
    cfg = _fill(values, schema, os.path.abspath(path), prefix="")
    cfg["_config_file"] = os.path.abspath(path)
    return cfg


def require(cfg: Config, key: str, why: str = "") -> Any:
    """The value at dotted `key`; a ConfigError naming the key and the config file when it is unset."""
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is None or node == "":
        where = cfg.get("_config_file", "the config")
        hint = f" ({why})" if why else ""
        raise ConfigError(f"{where}: '{key}' must be set{hint}; set it in the file or with -o {key}=...")
    return node


def dump_config(cfg: Config, path: str) -> None:
    """Writes the resolved config as YAML (atomically: a reader never sees half a file)."""
    data = {k: v for k, v in cfg.to_dict().items() if not k.startswith("_")}
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False, default_flow_style=None)
    os.replace(tmp, path)


def _merge_file(path: str, values: dict, sources: dict, stack: List[str]) -> None:
    if path in stack:
        raise ConfigError(f"{path}: _base_ cycle: {' -> '.join(stack + [path])}")
    if not os.path.isfile(path):
        parent = f" (a _base_ of {stack[-1]})" if stack else ""
        raise ConfigError(f"{path}: config file not found{parent}")
    try:
        with open(path) as f:
            data = yaml.load(f, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys, not {type(data).__name__}")
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    for base in bases:
        _merge_file(os.path.normpath(os.path.join(os.path.dirname(path), base)), values, sources, stack + [path])
    _merge(values, data, sources, path, prefix="")


def _merge(dst: dict, src: dict, sources: dict, origin: str, prefix: str) -> None:
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, sources, origin, dotted + ".")
        else:
            dst[key] = value
            _mark(sources, dotted, value, origin)


def _mark(sources: dict, dotted: str, value: Any, origin: str) -> None:
    sources[dotted] = origin
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(sources, f"{dotted}.{k}", v, origin)


def _parse_override(item: str):
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"-o {item}: an override is key=value, e.g. -o train.lr=1e-4")
    try:
        value = yaml.load(text, Loader=_Loader) if text.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"-o {item}: the value is not valid YAML") from None
    return key, value


def _set_dotted(values: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = values
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _where(sources: dict, dotted: str) -> str:
    return sources.get(dotted, "the config")


def _check(values: dict, schema: dict, sources: dict, prefix: str) -> None:
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{_where(sources, dotted)}: unknown key '{dotted}'{hint}")
        spec = schema[key]
        if isinstance(spec, Field):
            problem = spec.check(value)
            if problem:
                raise ConfigError(f"{_where(sources, dotted)}: {dotted}: {problem}")
        elif not isinstance(value, dict):
            raise ConfigError(f"{_where(sources, dotted)}: {dotted}: expected a mapping of keys, "
                              f"got {type(value).__name__} {value!r}")
        else:
            _check(value, spec, sources, dotted + ".")


def _fill(values: dict, schema: dict, path: str, prefix: str) -> Config:
    out = Config()
    for key, spec in schema.items():
        if isinstance(spec, Field):
            value = values.get(key, spec.default)
            if spec.required and value is None:
                raise ConfigError(f"{path}: missing required key '{prefix}{key}' ({spec.doc})")
            # Copy mutable defaults so one run's config never aliases the schema.
            out[key] = list(value) if isinstance(value, list) else value
        else:
            out[key] = _fill(values.get(key, {}), spec, path, f"{prefix}{key}.")
    return out
