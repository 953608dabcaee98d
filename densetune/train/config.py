"""Reading the training recipe's configuration: YAML and ``key=value`` overrides into the schema, checked.

The schema and every default are :mod:`densetune.train.schema`. :func:`load_config` merges a recipe YAML into
it (component nodes merge into their defaults unless they name another ``_target_``), applies overrides,
accepts classic NeMo's names for the number of hard negatives, resolves ``${...}`` interpolations and runs
the checks of :mod:`densetune.train.checks`. :func:`save_config` writes the resolved config a run keeps,
:func:`diff_configs` compares two.

Example:
    >>> cfg = load_config("configs/minilm_scifact.yaml", ["train.max_steps=10", "optim.lr=3e-5"])
    >>> cfg.train.batch_size
    16
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from densetune.config import TARGET, apply_overrides, load_yaml, omegaconf_error
from densetune.errors import ConfigError
from densetune.train.checks import check_choices, check_values
from densetune.train.schema import COMPONENTS, SECTIONS, STRING_LISTS, RecipeConfig

logger = logging.getLogger("densetune.train")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RecipeConfig:
    """Read a recipe YAML, fill defaults, apply ``key=value`` overrides, resolve ``${...}``, and validate.

    Overrides are applied after defaults are filled, so any key of the schema can be overridden even
    when the YAML does not mention it (``train.max_steps=10``). Values in the YAML and in overrides may be
    OmegaConf interpolations (``eval.batch_size: ${train.batch_size}``, ``${oc.env:VAR}``), resolved once
    everything is merged, so the saved ``config.yaml`` holds the resolved values.

    Args:
        path: the YAML file, or None for defaults only.
        overrides: dotted ``key=value`` strings (values parsed as YAML).

    Raises:
        ConfigError: naming the key and what was expected (for unknown keys: the valid ones).
    """
    conf = merge_defaults(load_yaml(path) if path is not None else {})
    # The NeMo aliases are not schema keys, so an override naming one adds it (no "+" needed).
    aliases = {f"data.selector.{name}" for name in NEGATIVE_ALIASES}
    overrides = [f"+{o}" if o.split("=", 1)[0] in aliases else o for o in overrides or []]
    return from_dict(apply_overrides(conf, overrides))


def merge_defaults(raw: Mapping[str, Any]) -> DictConfig:
    """The schema (:class:`RecipeConfig` as an OmegaConf structured config) overlaid with ``raw``.

    Unknown keys and values of the wrong type are errors naming the key. A component node merges into its
    default unless it names another ``_target_``: then it replaces the default whole (its own defaults come
    from its signature). ``${...}`` interpolations stay until :func:`from_dict` resolves them.
    """
    conf = OmegaConf.structured(RecipeConfig)
    raw = _fit(conf, raw)
    try:
        return OmegaConf.merge(conf, raw)
    except OmegaConfBaseException as err:
        raise omegaconf_error(err, raw) from None


def _fit(conf: DictConfig, raw: Any) -> dict[str, Any]:
    """``raw`` shaped, and ``conf`` readied, for OmegaConf's merge where the recipe means more than the types
    say: an empty section (all commented out) is its defaults, a lone string is a one-item list of strings
    (unless it is one ``${...}``, which may name a list), and a component node merges into its default (the
    default node when the schema's is null) or, naming another ``_target_``, replaces it."""
    if not isinstance(raw, Mapping):
        raise ConfigError("<root>", f"expected a mapping, got {type(raw).__name__} {raw!r}")
    raw = copy.deepcopy(dict(raw))
    for name in SECTIONS:
        if name in raw and raw[name] is None:
            raw[name] = {}
        elif name in raw and not isinstance(raw[name], Mapping):
            raise ConfigError(name, f"expected a mapping, got {type(raw[name]).__name__} {raw[name]!r}")
    for key, default in COMPONENTS.items():
        section, name = key.split(".")
        node = raw.get(section, {}).get(name)
        if node is None:
            continue
        if not isinstance(node, Mapping):
            raise ConfigError(key, f"expected a component mapping with {TARGET} (or null), got {node!r}")
        current = conf[section][name]
        base = current if current is not None else default
        if node.get(TARGET, base[TARGET]) != base[TARGET]:
            conf[section][name] = {}
        elif current is None:
            conf[section][name] = default
    for key in STRING_LISTS:
        section, name = key.split(".")
        value = raw.get(section, {}).get(name)
        if isinstance(value, str) and not value.startswith("${"):
            raw[section][name] = [value]
    return raw


# Classic NeMo's names for the number of hard negatives per query (SBERT's model.data.hard_negatives_to_train,
# GPT embedding's num_hard_negatives): accepted in the selector node as n_passages = value + 1.
NEGATIVE_ALIASES = ("hard_negatives_to_train", "num_hard_negatives")


def _resolve_negative_aliases(cfg: RecipeConfig) -> None:
    """Rewrite ``data.selector.{hard_negatives_to_train,num_hard_negatives}: k`` as ``n_passages: k + 1``."""
    node = cfg.data.selector
    given = {name: node.pop(name) for name in NEGATIVE_ALIASES if name in node}
    if not given:
        return
    values = set(map(repr, given.values()))
    if len(values) > 1:
        raise ConfigError(
            "data.selector." + " / data.selector.".join(given),
            f"disagree ({given}); give one number of negatives",
        )
    name, k = next(iter(given.items()))
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(
            f"data.selector.{name}", f"expected an integer >= 0 (hard negatives per query), got {k!r}"
        )
    node["n_passages"] = k + 1
    logger.info(
        "data.selector.%s=%d (classic NeMo's name) means n_passages=%d (1 positive + %d)", name, k, k + 1, k
    )


def from_dict(data: DictConfig | Mapping[str, Any]) -> RecipeConfig:
    """A validated :class:`RecipeConfig` from :func:`merge_defaults`' result (a plain mapping is merged first),
    with every ``${...}`` interpolation resolved."""
    conf = data if isinstance(data, DictConfig) else merge_defaults(data)
    try:
        cfg = OmegaConf.to_object(conf)
    except OmegaConfBaseException as err:
        raise omegaconf_error(err) from None
    _resolve_negative_aliases(cfg)
    check_choices(cfg)
    check_values(cfg)
    return cfg


def save_config(cfg: RecipeConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (every key, defaults included)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False, default_flow_style=False)


def diff_configs(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two config dicts: ``{key: (old, new)}``."""
    out: dict[str, tuple[Any, Any]] = {}
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(diff_configs(a, b, f"{prefix}{k}."))
        elif a != b:
            out[f"{prefix}{k}"] = (a, b)
    return out
