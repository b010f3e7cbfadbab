"""Hierarchical run config on OmegaConf: YAML files, dotlist overrides, merge, schema checks.

A `Config` wraps an OmegaConf `DictConfig`, built on a structured schema (the trainer's own,
`trainer.config_schema.TrainerConfig`, for `load`) or on none at all: `from_dict`,
`from_cli_dotlist` and `merge` of plain mappings serve any program's keys. It keeps attribute
access (`cfg.train.lr`) and adds dotted lookup (`cfg.get("train.lr")`, `cfg["train.lr"]`),
which `DictConfig.get` does not do. Every value comes from a stack of named layers (schema
defaults, files, command-line overrides; later wins), so a bad key or value is reported with
the layer that set it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainer.config_schema import CHOICES, GE, GT, LE, LT, TrainerConfig
from trainer.errors import TrainerError

__all__ = [
    "Config",
    "ConfigError",
    "default",
    "freeze",
    "from_cli_dotlist",
    "from_dict",
    "from_dotlist",
    "load",
    "merge",
    "to_dict",
]

DEFAULTS = "schema defaults"
_MISSING = object()


class ConfigError(TrainerError, ValueError):
    """A config that cannot be used; `key` and `source` name the culprit where known."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None):
        super().__init__(message)
        self.key = key
        self.source = source


Layer = tuple[str, DictConfig]


class Config:
    """A validated config: `cfg.train.lr`, `cfg.get("train.lr")`, merge, freeze, to_dict."""

    __slots__ = ("_layers", "_node", "_schema")

    def __init__(self, node: DictConfig, layers: Sequence[Layer], schema: type | None) -> None:
        object.__setattr__(self, "_node", node)
        object.__setattr__(self, "_layers", tuple(layers))
        object.__setattr__(self, "_schema", schema)

    # -- access ---------------------------------------------------------------------------

    @property
    def node(self) -> DictConfig:
        """The underlying OmegaConf node (for APIs that want a DictConfig)."""
        return self._node

    def __getattr__(self, name: str) -> Any:
        # Dunders and our own slots (unset while copy or pickle rebuild us) are not config keys.
        if name.startswith("__") or name in Config.__slots__:
            raise AttributeError(name)
        return getattr(self._node, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in Config.__slots__:
            object.__setattr__(self, name, value)
        else:
            setattr(self._node, name, value)

    def get(self, key: str, default: Any = None) -> Any:
        """The value at a dotted key (`"train.lr"`), or `default` if it is absent."""
        value = OmegaConf.select(self._node, key, default=_MISSING)
        return default if value is _MISSING else value

    def __getitem__(self, key: str) -> Any:
        value = OmegaConf.select(self._node, key, default=_MISSING)
        if value is _MISSING:
            raise KeyError(f"config has no key {key!r}")
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, _MISSING) is not _MISSING

    def __iter__(self) -> Iterator[str]:
        return iter(self._node)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Config):
            return self.to_dict() == other.to_dict()
        if isinstance(other, Mapping):
            return self.to_dict() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable until frozen

    def __repr__(self) -> str:
        return f"Config({self.to_dict(resolve=False)!r})"

    def source_of(self, key: str) -> str:
        """The name of the last layer (file, override, defaults) that set a dotted key."""
        return _source_of(key, self._layers)

    # -- building ---------------------------------------------------------------------------

    def merge(self, *others: Config | Mapping[str, Any] | DictConfig) -> Config:
        """A new config with `others` merged on top of this one (later wins), validated.

        A `Config` contributes the layers it was loaded from (files, overrides, mappings), not
        its schema defaults, so merging never resets a value to its default; edits made to it
        in place after loading are not part of those layers.
        """
        layers = list(self._layers)
        for i, other in enumerate(others, start=1):
            if isinstance(other, Config):
                layers.extend(other._layers[1:] if other._schema is self._schema else other._layers)
            else:
                layers.append((f"merged mapping #{i}", _as_node(other, f"merged mapping #{i}")))
        return _build(self._schema, layers)

    def with_overrides(self, overrides: Iterable[str]) -> Config:
        """A new config with command-line style overrides (`"train.epochs=20"`) applied."""
        return _build(self._schema, [*self._layers, *_override_layers(overrides)])

    # -- output -----------------------------------------------------------------------------

    def freeze(self) -> Config:
        """Make the config read-only (assignments raise) and return it."""
        OmegaConf.set_readonly(self._node, True)
        return self

    @property
    def frozen(self) -> bool:
        """Whether assignments are refused."""
        return bool(OmegaConf.is_readonly(self._node))

    def to_dict(self, resolve: bool = True) -> dict[str, Any]:
        """The config as plain dicts and lists, interpolations resolved unless told not to."""
        return OmegaConf.to_container(self._node, resolve=resolve)  # type: ignore[return-value]

    def to_yaml(self) -> str:
        """The resolved config as YAML text, loadable again with `load`."""
        return OmegaConf.to_yaml(self._node, resolve=True)

    def save(self, path: str | Path) -> Path:
        """Write the resolved config as YAML to `path` and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path


def default(schema: type | None = TrainerConfig) -> Config:
    """The schema's defaults as a config (the embedded default job)."""
    return _build(schema, [])


def load(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    schema: type | None = TrainerConfig,
) -> Config:
    """The schema defaults, then the YAML file at `path` (if any), then `overrides`."""
    layers: list[Layer] = []
    if path is not None:
        layers.append(_read_yaml(Path(path)))
    layers.extend(_override_layers(overrides))
    return _build(schema, layers)


def from_dotlist(overrides: Iterable[str], *, schema: type | None = TrainerConfig) -> Config:
    """The schema defaults with dotlist overrides (`["train.epochs=20", "optim.lr=0.01"]`)."""
    return load(None, overrides, schema=schema)


def from_dict(data: Mapping[str, Any], *, schema: type | None = None) -> Config:
    """A config of any keys from a mapping, checked against `schema` when one is given."""
    return _build(schema, [("dict", _as_node(data, "dict"))])


def from_cli_dotlist(args: Iterable[str], *, schema: type | None = None) -> Config:
    """A config from command-line words: `a.b=1`, `--a.b=1` or `--a.b 1` (later wins)."""
    return _build(schema, _override_layers(cli_overrides(args)))


def cli_overrides(args: Iterable[str]) -> list[str]:
    """Command-line words as `key=value` overrides: `--a.b=1` and `--a.b 1` become `a.b=1`."""
    if isinstance(args, str):
        raise ConfigError(f"overrides must be a list of 'key=value' strings, got {args!r}")
    words, out = list(args), []
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--") and "=" not in word and i + 1 < len(words):
            out.append(f"{word[2:]}={words[i + 1]}")  # the argparse spelling: --key value
            i += 2
            continue
        out.append(word.removeprefix("--"))
        i += 1
    return out


def merge(*configs: Config | Mapping[str, Any] | DictConfig) -> Config:
    """Merge configs left to right (later wins), on the first one's schema if it is a Config."""
    if configs and isinstance(configs[0], Config):
        return configs[0].merge(*configs[1:])
    return _build(None, []).merge(*configs)


def freeze(cfg: Config) -> Config:
    """Make `cfg` read-only and return it (as `cfg.freeze()`)."""
    return cfg.freeze()


def to_dict(cfg: Config, resolve: bool = True) -> dict[str, Any]:
    """`cfg` as plain dicts and lists (as `cfg.to_dict()`)."""
    return cfg.to_dict(resolve=resolve)


# -- internals ------------------------------------------------------------------------------


def _read_yaml(path: Path) -> Layer:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {source}", source=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {source}: {exc}", source=source) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}", source=source) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"{source}: the top level must be a mapping of sections, not {kind}")
    return source, _as_node(data, source)


def _as_node(data: Any, source: str) -> DictConfig:
    if isinstance(data, Config):
        return data.node
    if isinstance(data, DictConfig):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
    try:
        return OmegaConf.create(dict(data))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {_first_line(exc)}", source=source) from None


def _override_layers(overrides: Iterable[str]) -> list[Layer]:
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of 'key=value' strings, got {overrides!r}")
    layers = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value", source=item)
        source = f"override {item!r}"
        try:
            layers.append((source, OmegaConf.from_dotlist([item])))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{source}: {_first_line(exc)}", key=key, source=item) from None
    return layers


def _build(schema: type | None, layers: Sequence[Layer]) -> Config:
    base = OmegaConf.structured(schema) if schema is not None else OmegaConf.create({})
    node = base
    for source, layer in layers:
        try:
            node = OmegaConf.merge(node, layer)
        except OmegaConfBaseException as exc:
            raise _merge_error(exc, schema, source, layer) from None
    config = Config(node, [(DEFAULTS, base.copy()), *layers], schema)
    _validate(config, schema)
    return config


def _merge_error(
    exc: OmegaConfBaseException, schema: type | None, source: str, layer: DictConfig
) -> ConfigError:
    key = getattr(exc, "full_key", None)
    if not key and schema is not None:
        key = _culprit_section(schema, layer)
    if isinstance(exc, KeyError) and key and schema is not None:
        return ConfigError(
            f"{source}: unknown key {key!r}{_known_keys_hint(schema, key)}", key=key, source=source
        )
    prefix = f"{source}: bad value for {key!r}: " if key else f"{source}: "
    return ConfigError(prefix + _first_line(exc), key=key, source=source)


def _culprit_section(schema: type, layer: DictConfig) -> str | None:
    """The first top-level key of `layer` that fails to merge on its own."""
    for key in layer:
        try:
            OmegaConf.merge(OmegaConf.structured(schema), {key: layer[key]})
        except OmegaConfBaseException:
            return str(key)
    return None


def _known_keys_hint(schema: type, key: str) -> str:
    parent, _, name = key.rpartition(".")
    node = OmegaConf.structured(schema)
    section = OmegaConf.select(node, parent) if parent else node
    if not isinstance(section, DictConfig):
        return ""
    known = [str(k) for k in section]
    close = difflib.get_close_matches(name, known, n=1)
    guess = f"; did you mean {'.'.join(filter(None, (parent, close[0])))!r}?" if close else ""
    where = f"in {parent!r}" if parent else "at the top level"
    return f"{guess} (known keys {where}: {', '.join(known)})"


def _validate(config: Config, schema: type | None) -> None:
    node = config.node
    try:
        OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        source = config.source_of(key) if key else None
        where = f" (set by {source})" if source else ""
        raise ConfigError(
            f"bad value for {key!r}{where}: {_first_line(exc)}", key=key, source=source
        ) from None
    if schema is None:
        return
    for key, value, metadata in _constrained(schema, node, prefix=""):
        items = enumerate(value) if isinstance(value, ListConfig) else [(None, value)]
        for index, item in items:
            problem = _violation(item, metadata)
            if problem:
                source = config.source_of(key)
                where = key if index is None else f"{key}[{index}]"
                raise ConfigError(
                    f"bad value for {where!r} (set by {source}): {item!r} {problem}",
                    key=key,
                    source=source,
                )


def _constrained(schema: type, node: DictConfig, prefix: str):
    """(dotted key, value, metadata) for every schema field carrying constraints."""
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        value = node[f.name]
        sub_schema = OmegaConf.get_type(node, f.name)
        if isinstance(value, DictConfig) and dataclasses.is_dataclass(sub_schema):
            yield from _constrained(sub_schema, value, prefix=f"{key}.")
        elif f.metadata:
            yield key, value, f.metadata


def _violation(value: Any, metadata: Mapping[str, Any]) -> str | None:
    if value is None:
        return None
    if CHOICES in metadata and value not in metadata[CHOICES]:
        return f"is not one of {', '.join(map(repr, metadata[CHOICES]))}"
    if isinstance(value, float) and math.isnan(value) and set(metadata) & {GT, GE, LT, LE}:
        return "is not a number"
    checks = (
        (GT, lambda b: value > b, "be >"),
        (GE, lambda b: value >= b, "be >="),
        (LT, lambda b: value < b, "be <"),
        (LE, lambda b: value <= b, "be <="),
    )
    for name, ok, words in checks:
        if name in metadata and not ok(metadata[name]):
            return f"must {words} {metadata[name]}"
    return None


def _source_of(key: str, layers: Sequence[Layer]) -> str:
    for source, layer in reversed(layers):
        # Walk the unresolved layer: a key holding a broken interpolation was still set here.
        node: Any = OmegaConf.to_container(layer, resolve=False)
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return source
    return DEFAULTS


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
