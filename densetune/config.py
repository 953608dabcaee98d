"""YAML configs: load, apply dotted ``key=value`` overrides, and instantiate ``_target_`` nodes.

A node ``{"_target_": "dotted.path.Name", "arg": ...}`` becomes ``Name(arg=...)``; nested nodes are built
first (depth first). Live objects (a tokenizer, a model) are passed at the call site as keyword arguments,
so YAML holds only plain settings. Every error names the key and what was expected.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

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


def apply_overrides(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``cfg`` with each ``a.b.c=value`` set (``+a.b=value`` adds a new key).

    Raises:
        ConfigError: malformed override, or a key that does not exist (without ``+``), naming the key.
    """
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "expected an override of the form key.subkey=value")
        key, value = item.split("=", 1)
        add = key.startswith("+")
        key = key.lstrip("+")
        parts = key.split(".")
        node: Any = cfg
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[_list_index(key, part, node)]
                continue
            if part not in node or node[part] is None:
                if not add:
                    raise ConfigError(".".join(parts[: i + 1]), _no_such_key(part, node, parts[:i]))
                node[part] = {}
            node = node[part]
            if not isinstance(node, (dict, list)):
                raise ConfigError(".".join(parts[: i + 1]), f"is a {type(node).__name__}, not a mapping")
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(key, last, node)] = parse_value(value)
            continue
        if last not in node and not add:
            raise ConfigError(key, _no_such_key(last, node, parts[:-1]))
        node[last] = parse_value(value)
    return cfg


def closest_keys(name: str, valid: Iterable[str], prefix: str = "") -> str:
    """``"did you mean a.b or a.c? "`` for the valid keys closest to a misspelt ``name`` (difflib), or ``""``."""
    close = difflib.get_close_matches(name, [str(v) for v in valid], n=3, cutoff=0.6)
    return f"did you mean {' or '.join(prefix + c for c in close)}? " if close else ""


def _no_such_key(name: str, node: dict[str, Any], parents: list[str]) -> str:
    prefix = "".join(p + "." for p in parents)
    return f"no such key; {closest_keys(name, node, prefix)}valid keys here: {', '.join(prefix + str(k) for k in node)} (use +key=value to add one)"


def _list_index(key: str, part: str, node: list) -> int:
    try:
        idx = int(part)
    except ValueError:
        raise ConfigError(key, f"{part!r} indexes a list; expected an integer") from None
    if not -len(node) <= idx < len(node):
        raise ConfigError(key, f"list index {idx} out of range (length {len(node)})")
    return idx


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
        node: a mapping with ``_target_``, a plain mapping/list (instantiated element-wise), or a value.
        key: dotted location of ``node`` in the config, for error messages.
        **call_kwargs: live objects passed to the top-level target, overriding YAML values.

    Raises:
        ConfigError: unknown target, or arguments the target does not accept, naming the key.
    """
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
