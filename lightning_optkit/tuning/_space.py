"""Search spaces over the ``optim:`` block, keyed by the same dotted paths as the config.

A search space maps key paths of the config (``optimizer.lr``, ``scheduler.warmup``,
``param_groups.0.lr_scale``) to a parameter spec::

    optimizer.name: {choices: [adamw, sgd]}                     # categorical
    optimizer.lr: {low: 1.0e-5, high: 1.0e-1, log: true}         # float (log scale)
    scheduler.warmup: {low: 0, high: 200, step: 50}              # int (both ends are ints)
    optimizer.momentum: {low: 0.8, high: 0.99, when: {optimizer.name: sgd}}   # conditional
    loss.label_smoothing: 0.1                                    # fixed (or {value: 0.1})

One key may be searched differently under different conditions: ``PATH@LABEL`` names a variant of
``PATH`` (Optuna sees the whole name as its own parameter), and the variants of one path must
exclude each other through their conditions::

    optimizer.lr@adamw: {low: 1.0e-4, high: 1.0e-2, log: true, when: {optimizer.name: adamw}}
    optimizer.lr@sgd: {low: 1.0e-2, high: 1.0, log: true, when: {optimizer.name: sgd}}

A sampled trial is a set of dotted overrides applied to the base config with
:func:`lightning_optkit.config.apply_overrides` (``None`` deletes a key), so a trial's config is
validated exactly as a hand-written one. Everything is checked up front by
:meth:`SearchSpace.validate`: unknown key paths, empty choices, ``low >= high``, ``log`` with
``low <= 0``, and every value at the edges of every range, applied to the base config (with its
conditions satisfied), must give a valid config -- a :class:`~lightning_optkit.ConfigError` before
any training, naming ``search.<path>``.

Where each part lives: spec vocabulary and ``when:`` parsing in ``_space_parse``, :class:`Param`
in ``_space_param``, trial activity and override splitting in ``_space_sample``, key-path,
condition and edge-value checks in ``_space_check``; this module holds :class:`SearchSpace` and
:func:`load_search` and re-exports the names other modules import from it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..config import ConfigError, OptimConfig, did_you_mean, load_config, read_yaml
from ._space_check import (  # noqa: F401  (re-exported: the names this module always offered)
    _CHILD,
    _CLOSED,
    _check_path,
    _construct_optimizers,
    _explain,
    _fmt_assignment,
    check_conditions,
    check_variants,
    probe,
)
from ._space_param import Param, _witness  # noqa: F401
from ._space_parse import (  # noqa: F401  (re-exported: the names this module always offered)
    _KIND_ALIASES,
    _LABEL,
    _OPS,
    _PRIMITIVE,
    KINDS,
    LR_SCALING,
    SPEC_KEYS,
    TARGET_SECTIONS,
    Compare,
    _is_number,
    _matches,
    _overlap,
    _same,
    _token,
    get_path,
    normalize_path,
    target_section,
)
from ._space_sample import _as_dict, _listify, conditions_hold, split_overrides  # noqa: F401

__all__ = ["TARGET_SECTIONS", "Compare", "Param", "SearchSpace", "get_path", "load_search", "normalize_path",
           "split_overrides"]


class SearchSpace:
    """A search space over the optim block: ``{dotted key path: parameter spec}``.

    Load it from a dict, a YAML file (a ``search:`` mapping, optionally next to an ``optim:`` base
    config) or a preset name (``"digits"``, ``"adamw"``...; see :func:`search_preset`), validate it
    against the base config with :meth:`validate`, and sample trial overrides with :meth:`sample`.

    Conditions (``when:``) may test another searched parameter (categorical or fixed) or any key
    of the base config; a parameter whose conditions fail is left out of the trial (Optuna then
    never sees it, as with ``if`` in a hand-written objective).

    Example:
        >>> import optuna
        >>> space = SearchSpace.from_dict({
        ...     "optimizer.name": {"choices": ["adamw", "sgd"]},
        ...     "optimizer.lr": {"low": 1e-4, "high": 1e-1, "log": True},
        ...     "optimizer.momentum": {"low": 0.8, "high": 0.99, "when": {"optimizer.name": "sgd"}},
        ... })
        >>> base = {"optimizer": {"name": "adamw", "lr": 1e-3}}
        >>> space.validate(base)
        >>> study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        >>> overrides = space.sample(study.ask(), base)
        >>> ("optimizer.momentum" in overrides) == (overrides["optimizer.name"] == "sgd")
        True
    """

    def __init__(self, params: Mapping[str, Param]) -> None:
        self.params: dict[str, Param] = dict(params)
        self.order: list[str] = self._topological_order()
        # the values model./data./trainer. keys have without a search (set by tune(), for base_params)
        self.target_base: dict[str, Any] = {}

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        """Parse ``{path: spec}`` (or ``{"search": {path: spec}}``); checks the paths and specs."""
        if isinstance(data, Mapping) and set(data) <= {"search", "optim"} and "search" in data:
            data = data["search"]
        if not isinstance(data, Mapping):
            raise ConfigError("search", data, "a mapping of dotted config key paths to parameter specs, "
                              "e.g. {optimizer.lr: {low: 1.0e-5, high: 1.0e-1, log: true}}")
        if not data:
            raise ConfigError("search", {}, "at least one parameter to search")
        params: dict[str, Param] = {}
        for path, spec in data.items():
            path = normalize_path(path)
            if path in params:
                raise ConfigError(f"search.{path}", spec, "one spec per key (model.init_args.X and model.X are one key)")
            if isinstance(path, str) and "@" in path:
                key, label = path.split("@", 1)
                if not _LABEL.fullmatch(label):
                    raise ConfigError(f"search.{path}", path, "PATH@LABEL with a label of letters, digits, _ or -, "
                                      "e.g. optimizer.lr@sgd")
                _check_path(key, where=f"search.{path}")
            else:
                _check_path(path)
            params[path] = Param.from_spec(path, spec)
        space = cls(params)
        space._check_conditions()
        return space

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> SearchSpace:
        """Read a YAML file with a ``search:`` mapping (an ``optim:`` block beside it is ignored here)."""
        data = read_yaml(path)
        if not isinstance(data, Mapping) or "search" not in data:
            raise ConfigError("search", str(path), "a YAML file with a top-level `search:` mapping",
                              hint="see configs/search_*.yaml")
        return cls.from_dict(data["search"])

    def to_dict(self) -> dict[str, Any]:
        """``{path: spec}``, which :meth:`from_dict` turns back into an equal space."""
        return {name: p.to_spec() for name, p in self.params.items()}

    def __len__(self) -> int:
        return len(self.params)

    def __iter__(self) -> Iterator[str]:
        return iter(self.params)

    def __contains__(self, name: object) -> bool:
        return name in self.params

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"SearchSpace({', '.join(self.params)})"

    @property
    def searched(self) -> list[str]:
        """The parameters Optuna samples (fixed ones left out)."""
        return [n for n in self.order if self.params[n].kind != "fixed"]

    @property
    def has_conditions(self) -> bool:
        return any(p.when for p in self.params.values())

    def _topological_order(self) -> list[str]:
        order: list[str] = []
        state: dict[str, int] = {}  # 1: visiting, 2: done

        def visit(name: str, chain: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = " -> ".join([*chain[chain.index(name):], name])
                raise ConfigError(f"search.{name}.when", None, f"conditions without a cycle ({cycle})")
            state[name] = 1
            for key, _ in self.params[name].when:
                if key in self.params:
                    visit(key, [*chain, name])
            state[name] = 2
            order.append(name)

        for name in self.params:
            visit(name, [])
        return order

    def _check_conditions(self) -> None:
        """Conditions name valid keys and values; variants of one key exclude each other."""
        check_conditions(self.params)

    def _check_variants(self) -> None:
        """Parameters that set the same config key must exclude each other through their conditions."""
        check_variants(self.params)
    # -- activity and sampling ------------------------------------------------------------------------
    def is_active(self, name: str, values: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> bool:
        return conditions_hold(self.params, name, values, base)

    def sample(self, trial: Any, base: OptimConfig | Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Sample one trial: ``{path: value}`` overrides for the base config (inactive keys left out).

        Args:
            trial: an :class:`optuna.trial.Trial` (anything with ``suggest_float/int/categorical``).
            base: the base config, for conditions on keys that are not searched.
        """
        base_dict = _as_dict(base)
        values: dict[str, Any] = {}
        for name in self.order:
            if self.is_active(name, values, base_dict):
                values[name] = self.params[name].suggest(trial)
        return self._as_overrides(values)

    def _as_overrides(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``{parameter name: value}`` -> ``{config key path: value}`` (a ``@label`` variant sets its path)."""
        return {self.params[name].config_path: v for name, v in values.items()}

    def overrides_from_params(self, params: Mapping[str, Any], base: OptimConfig | Mapping[str, Any] | None = None
                              ) -> dict[str, Any]:
        """The overrides of a finished trial from its Optuna ``params`` (fixed keys re-derived)."""
        base_dict = _as_dict(base)
        values: dict[str, Any] = {}
        for name in self.order:
            p = self.params[name]
            if not self.is_active(name, values, base_dict):
                continue
            if p.kind == "fixed":
                values[name] = p.value
            elif name in params:
                values[name] = p.decode(params[name])
        return self._as_overrides(values)

    def base_params(self, base: OptimConfig | Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The base config's own values as Optuna params (to enqueue it as the first trial).

        Returns ``(params, left_out)``: keys whose base value is missing or outside the searched
        range are left out (the sampler picks them).
        """
        base_dict = {**_as_dict(base), **self.target_base}
        values: dict[str, Any] = {}
        params: dict[str, Any] = {}
        left_out: list[str] = []
        for name in self.order:
            p = self.params[name]
            if not self.is_active(name, values, base_dict):
                continue
            current = get_path(base_dict, p.config_path)
            if p.kind == "fixed":
                values[name] = p.value
                continue
            encoded = p.encode(current) if current is not None else None
            if encoded is None:
                left_out.append(name)  # the sampler picks it (and whatever depends on it)
                continue
            params[name] = encoded
            values[name] = current
        return params, left_out

    # -- validation --------------------------------------------------------------------------------
    def validate(self, base: OptimConfig | Mapping[str, Any] | str | os.PathLike[str]) -> None:
        """Check every parameter against the base config before any training.

        Each value at the edges of each range, and each choice, is applied to the base config with
        its conditions satisfied and the other active parameters at their first value; the result
        must load with :func:`~lightning_optkit.load_config` and its optimizer must construct.

        Raises:
            ConfigError: naming ``search.<path>``, the value and why the config it makes is invalid.
        """
        base_cfg = base if isinstance(base, OptimConfig) else load_config(base)
        base_dict = base_cfg.to_dict()
        tried: set[str] = set()
        for name in self.order:
            for value in self.params[name].probe_values():
                assignment = self._probe(name, value, base_dict)
                if assignment is None:
                    continue  # its conditions can never hold with this base config: never used
                key = json.dumps(assignment, sort_keys=True, default=repr)
                if key in tried:
                    continue
                tried.add(key)
                overrides, _targets = split_overrides(self._as_overrides(assignment))
                overrides = self.scale_lr(overrides, assignment, base_dict)
                try:
                    cfg = load_config(base_dict, overrides)
                    _construct_optimizers(cfg)
                except ConfigError as err:
                    raise _explain(name, value, assignment, err, base_dict, self.params) from None

    @property
    def target_params(self) -> list[Param]:
        """The parameters of ``model.``/``data.``/``trainer.`` keys (not of the optim block)."""
        return [self.params[n] for n in self.order if target_section(self.params[n].config_path) is not None]

    def scale_lr(self, overrides: Mapping[str, Any], values: Mapping[str, Any], base: OptimConfig | Mapping[str, Any]
                 ) -> dict[str, Any]:
        """The optim overrides with every block's LR scaled by the ``lr_scaling`` parameters among ``values``.

        ``values`` are the trial's ``{parameter name: value}``; the LR scaled is the trial's own
        (``optimizer.lr`` when searched) or the base config's.

        Example:
            >>> space = SearchSpace.from_dict({"data.batch_size": {"choices": [32, 128], "lr_scaling": "linear",
            ...                                                     "lr_base": 64}})
            >>> space.scale_lr({}, {"data.batch_size": 128}, {"optimizer": {"name": "sgd", "lr": 0.1}})
            {'optimizer.lr': 0.2}
        """
        factor = 1.0
        for p in self.params.values():
            if p.lr_scaling is None:
                continue
            value = values.get(p.path, values.get(p.config_path) if "@" not in p.path else None)
            if value is not None:
                factor *= p.lr_factor(value)
        out = dict(overrides)
        if factor == 1.0:
            return out
        base_dict = _as_dict(base)
        blocks = base_dict.get("optimizers")
        keys = [f"optimizers.{i}.optimizer.lr" for i in range(len(blocks))] if blocks else ["optimizer.lr"]
        for key in keys:
            lr = out.get(key, get_path(base_dict, key))
            if lr is None:
                from ..config import OptimizerConfig

                lr = OptimizerConfig.model_fields["lr"].default
            out[key] = float(lr) * factor
        return out

    def _probe(self, name: str, value: Any, base: Mapping[str, Any]) -> dict[str, Any] | None:
        """A probe assignment with ``name = value`` (see :func:`._space_check.probe`), or ``None``."""
        return probe(self.params, self.order, name, value, base)


def load_search(source: SearchSpace | Mapping[str, Any] | str | os.PathLike[str]) -> tuple[SearchSpace, dict[str, Any] | None]:
    """A search space from a :class:`SearchSpace`, dict, YAML path or preset name.

    Returns ``(space, base)``: ``base`` is the ``optim:`` block found next to ``search:`` in a
    YAML file or preset (used when no base config is given), else ``None``.

    Example:
        >>> space, base = load_search("digits")
        >>> "optimizer.lr" in space, base["optimizer"]["name"]
        (True, 'adamw')
    """
    from ._presets import PRESETS, search_preset

    if isinstance(source, SearchSpace):
        return source, None
    if isinstance(source, Mapping):
        base = source.get("optim") if isinstance(source.get("optim"), Mapping) and "search" in source else None
        return SearchSpace.from_dict(source), dict(base) if base is not None else None
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        if isinstance(source, str) and not text.endswith((".yaml", ".yml")) and not Path(text).exists():
            if text.lower() in PRESETS or (text and all(t.strip().lower() in PRESETS for t in text.split("+"))):
                preset = search_preset(text)
                return SearchSpace.from_dict(preset["search"]), preset.get("optim")
            raise ConfigError("search", text, "a YAML file or a preset: " + ", ".join(sorted(PRESETS)),
                              suggestions=did_you_mean(text, PRESETS))
        data = read_yaml(source)
        if not isinstance(data, Mapping) or "search" not in data:
            raise ConfigError("search", text, "a YAML file with a top-level `search:` mapping",
                              hint="see configs/search_*.yaml")
        base = data.get("optim")
        return SearchSpace.from_dict(data["search"]), dict(base) if isinstance(base, Mapping) else None
    raise ConfigError("search", source, "a SearchSpace, a dict, a YAML path or a preset name")

