"""YAML configs: load, apply dotted ``key=value`` overrides, and instantiate ``_target_`` nodes.

Configs are OmegaConf configs (a schema is a structured config: dataclasses whose annotations type-check
every value), so values may be ``${a.b}`` interpolations; this module turns OmegaConf's errors into
densetune's one-line ones. YAML is read here (not by OmegaConf) so that problems name the file and line.

A node ``{"_target_": "dotted.path.Name", "arg": ...}`` becomes ``Name(arg=...)``; nested nodes are built
first (depth first). Live objects (a tokenizer, a model) are passed at the call site as keyword arguments,
so YAML holds only plain settings. Every error names the key and what was expected.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import inspect
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import Container, DictConfig, OmegaConf, open_dict
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    GrammarParseError,
    InterpolationResolutionError,
    OmegaConfBaseException,
    ValidationError,
)

from densetune.errors import ConfigError
from densetune.paths import path_problem

TARGET = "_target_"


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``2e-5`` and ``1e6`` as floats (YAML 1.1 wants a dot; users do not) and refuses
    duplicate keys (PyYAML keeps the last without a word; two ``lr:`` lines in a recipe are a mistake)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merged keys (<<) may be overridden on purpose
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {first[key]})", key_node.start_mark
                    )
                first[key] = line
            except TypeError:
                pass  # an unhashable key: SafeLoader reports it
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text_or_stream: Any) -> Any:
    """Parse YAML with densetune's loader (safe, numbers as users write them)."""
    return yaml.load(text_or_stream, Loader=_Loader)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file and line."""
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise ConfigError(str(path), "config file not found" if problem == "not found" else problem)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        bom = raw[:2] in (b"\xff\xfe", b"\xfe\xff")
        why = "UTF-16-encoded" if bom else f"not valid UTF-8 (byte 0x{raw[err.start]:02x})"
        raise ConfigError(
            f"{path}:{line}", f"{why}; expected UTF-8 text (re-save the file as UTF-8)"
        ) from None
    try:
        data = yaml_load(text.removeprefix("\ufeff"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(where, f"invalid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), f"expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """Parse an override value as YAML (so ``3``, ``1e-4``, ``true``, ``[a, b]``, ``null`` work)."""
    try:
        return yaml_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: Mapping[str, Any], overrides: list[str]) -> Any:
    """Return a copy of ``cfg`` with each ``a.b.c=value`` set (``+a.b=value`` adds a new key).

    ``cfg`` is an OmegaConf config, whose schema (a structured config) then checks each value's type (a lone
    string given for a list of strings becomes a one-item list), or a plain mapping, returned as one. A value
    may be a ``${...}`` interpolation, resolved when the config is.

    Raises:
        ConfigError: malformed override, a key that does not exist (without ``+``; a section of a schema takes
            none), or a value of the wrong type, naming the key.
    """
    conf = copy.deepcopy(cfg) if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "expected an override of the form key.subkey=value")
        key, text = item.split("=", 1)
        add = key.startswith("+")
        key = key.lstrip("+")
        value = parse_value(text)
        try:
            _check_path(conf, key, add)
            current = OmegaConf.select(conf, key, throw_on_resolution_failure=False)
            # a section of a schema takes the keys given (the others keep their values); a mapping is replaced
            merge = OmegaConf.is_dict(current) and dataclasses.is_dataclass(OmegaConf.get_type(current))
            try:
                OmegaConf.update(conf, key, value, merge=merge, force_add=True)
            except ValidationError:
                if not (isinstance(value, str) and OmegaConf.is_list(current)):
                    raise
                OmegaConf.update(conf, key, [value], merge=False, force_add=True)
        except OmegaConfBaseException as err:
            raise omegaconf_error(err, value, at=key) from None
    return conf if isinstance(cfg, DictConfig) else OmegaConf.to_container(conf)


def _check_path(conf: Container, key: str, add: bool) -> None:
    """Raise ConfigError unless ``key`` names a place in ``conf``; with ``add``, missing or null mappings on
    the way are created (a schema's section still takes no new keys: OmegaConf would drop them silently)."""
    parts = key.split(".")
    node: Any = conf
    for i, part in enumerate(parts[:-1]):
        if OmegaConf.is_list(node):
            node = node[_list_index(key, part, node)]
            continue
        if part not in node or node[part] is None:
            here = ".".join(parts[: i + 1])
            if not add and part in node:
                raise ConfigError(
                    here, f"is null; set it whole ({here}={{...}}) or add to it with +{key}=..."
                )
            if not add:
                raise ConfigError(here, _no_such_key(part, node, parts[:i]))
            _refuse_new_key(node, part, here, parts[:i])
            with open_dict(node):
                node[part] = {}
        node = node[part]
        if not OmegaConf.is_config(node):
            raise ConfigError(".".join(parts[: i + 1]), f"is a {type(node).__name__}, not a mapping")
    last = parts[-1]
    if OmegaConf.is_list(node):
        _list_index(key, last, node)
    elif last not in node:
        if not add:
            raise ConfigError(key, _no_such_key(last, node, parts[:-1]))
        _refuse_new_key(node, last, key, parts[:-1])


def _refuse_new_key(node: DictConfig, name: str, key: str, parents: list[str]) -> None:
    if name not in node and dataclasses.is_dataclass(OmegaConf.get_type(node)):
        raise ConfigError(key, unknown_key_message([name], node, "".join(p + "." for p in parents)))


def closest_keys(name: str, valid: Iterable[str], prefix: str = "") -> str:
    """``"did you mean a.b or a.c? "`` for the valid keys closest to a misspelt ``name`` (difflib), or ``""``."""
    close = difflib.get_close_matches(name, [str(v) for v in valid], n=3, cutoff=0.6)
    return f"did you mean {' or '.join(prefix + c for c in close)}? " if close else ""


def unknown_key_message(
    unknown: Iterable[str], valid: Iterable[str], prefix: str = "", what: str = "unknown key"
) -> str:
    """``"unknown key; did you mean ...? valid keys here: ..."`` for keys a mapping does not have."""
    valid = [str(v) for v in valid]
    hint = "".join(closest_keys(str(u), valid, prefix) for u in unknown)
    return f"{what}; {hint}valid keys here: {', '.join(prefix + v for v in valid)}"


def _no_such_key(name: str, node: Any, parents: list[str]) -> str:
    prefix = "".join(p + "." for p in parents)
    return unknown_key_message([name], node, prefix, "no such key") + " (use +key=value to add one)"


def _list_index(key: str, part: str, node: Any) -> int:
    try:
        idx = int(part)
    except ValueError:
        raise ConfigError(key, f"{part!r} indexes a list; expected an integer") from None
    if not -len(node) <= idx < len(node):
        raise ConfigError(key, f"list index {idx} out of range (length {len(node)})")
    return idx


_NOTHING = object()


def omegaconf_error(err: OmegaConfBaseException, given: Any = _NOTHING, at: str = "") -> ConfigError:
    """densetune's one-line ConfigError for one of OmegaConf's: the dotted key and what its schema expects.

    Args:
        err: raised while merging, setting or resolving a config.
        given: what was merged or set at ``at`` (the YAML mapping at the root, an override's value): the
            message quotes the offending part of it and, for unknown keys, lists every unknown one there.
    """
    key = getattr(err, "full_key", None) or at or "<root>"
    message = str(err).strip().splitlines()[0].strip()  # the lines after it repeat the key and the types
    if isinstance(err, (InterpolationResolutionError, GrammarParseError)):
        return ConfigError(key, f"cannot resolve the interpolation: {message}")
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and OmegaConf.is_dict(err.parent_node):
        parent, _, name = key.rpartition(".")
        prefix = parent + "." if parent else ""
        here = _dig(given, parent) if not at else _NOTHING  # a merged mapping: name all its unknown keys
        unknown = sorted(set(map(str, here)) - set(err.parent_node)) if isinstance(here, Mapping) else [name]
        return ConfigError(
            ", ".join(prefix + u for u in unknown), unknown_key_message(unknown, err.parent_node, prefix)
        )
    if isinstance(err, ValidationError):
        hint = getattr(getattr(err.child_node, "_metadata", None), "type_hint", None)
        if hint is None and typing.get_origin(err.ref_type) in (list, tuple):
            hint = typing.get_args(err.ref_type)[0]  # an item of a typed list
        if hint is not None and hint is not Any:
            got = _dig(given, key[len(at) :] if key.startswith(at) else "")
            return ConfigError(
                key, f"expected {type_name(hint)}" + ("" if got is _NOTHING else f"; got {got!r}")
            )
    return ConfigError(key, message)


def _dig(data: Any, dotted: str) -> Any:
    """The value at ``a.b[0]`` (or ``a.b.0``) in nested plain mappings and lists, or _NOTHING."""
    for part in re.findall(r"[^.\[\]]+", dotted):
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.lstrip("-").isdigit() and -len(data) <= int(part) < len(data):
            data = data[int(part)]
        else:
            return _NOTHING
    return data


def type_name(tp: Any) -> str:
    """How an error message names the type annotation ``tp`` (``"an integer or null"``)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


# Targets that moved: configs and checkpoints saved before the move name the old path, which still
# resolves here (one table, so the old modules keep no re-exports that would make imports point up or
# round in a cycle).
MOVED_TARGETS = {
    "densetune.models.crossencoder.RerankerLoss": "densetune.losses.reranker.RerankerLoss",
    "densetune.models.crossencoder.loss_step": "densetune.losses.reranker.loss_step",
    "densetune.models.crossencoder.rows_per_query": "densetune.losses.reranker.rows_per_query",
    **{
        f"densetune.data.collators.{name}": f"densetune.data.flag_collators.{name}"
        for name in ("RetrievalDataCollator", "SameEmbedCollator", "NO_IN_BATCH_TYPES", "SAME_EMBED_OUTPUTS")
    },
    # the seeds' data APIs moved from the data layer to densetune.compat (one module per upstream system)
    **{
        f"densetune.data.{old}.{name}": f"densetune.compat.llm_embedder.{name}"
        for old in ("compat", "flag_compat")
        for name in ("RetrievalDataset", "SameDatasetTrainDataset", "TASK_CONFIG", "get_query_prompt")
    },
    "densetune.data.compat.make_retrieval_dataset": "densetune.compat.nemo_automodel.make_retrieval_dataset",
    "densetune.data.compat.RetrievalTransform": "densetune.compat.nemo_automodel.RetrievalTransform",
}


def locate(path: str, key: str = TARGET) -> Any:
    """Import ``package.module.Name`` (attributes may nest: ``module.Class.method``); a path in
    :data:`MOVED_TARGETS` resolves to where the object lives now."""
    path = MOVED_TARGETS.get(path, path)
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    raise ConfigError(
        key, f"cannot import {path!r}; expected a dotted path such as densetune.data.BiEncoderCollator"
    )


def instantiate(node: Any, key: str = "", **call_kwargs: Any) -> Any:
    """Build the objects a config node describes.

    Args:
        node: a mapping with ``_target_``, a plain mapping/list (instantiated element-wise), or a value; an
            OmegaConf node is resolved first (``${...}`` interpolations).
        key: dotted location of ``node`` in the config, for error messages.
        **call_kwargs: live objects passed to the top-level target, overriding YAML values.

    Raises:
        ConfigError: unknown target, or arguments the target does not accept, naming the key.
    """
    if OmegaConf.is_config(node):
        try:
            node = OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as err:
            raise omegaconf_error(err, at=key) from None
    if isinstance(node, list):
        return [instantiate(v, f"{key}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, Mapping):
        return node
    if TARGET not in node:
        return {k: instantiate(v, f"{key}.{k}" if key else k) for k, v in node.items()}
    target = locate(str(node[TARGET]), f"{key}.{TARGET}" if key else TARGET)
    kwargs = {
        k: instantiate(v, f"{key}.{k}" if key else k)
        for k, v in node.items()
        if k != TARGET and k not in call_kwargs
    }
    kwargs.update(call_kwargs)
    check_arguments(target, kwargs, key or TARGET)
    try:
        return target(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(key or TARGET, f"{node[TARGET]}: {err}") from err


def signature_defaults(path: str, names: tuple[str, ...]) -> dict[str, Any]:
    """The default values of ``names`` in the signature of the callable at ``path``, in that order."""
    params = inspect.signature(locate(path)).parameters
    return {name: params[name].default for name in names}


def check_arguments(target: Any, kwargs: Mapping[str, Any], key: str) -> None:
    """Raise ConfigError listing every keyword ``target`` does not accept, with the ones it does."""
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        accepted = ", ".join(n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL)
        name = getattr(target, "__qualname__", str(target))
        raise ConfigError(key, f"{name} does not accept {', '.join(unknown)}; accepted: {accepted}")
