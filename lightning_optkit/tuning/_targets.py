"""Search keys beyond the optim block: ``model.``, ``data.`` and ``trainer.`` arguments.

A key ``model.<arg>`` sets a constructor argument of the model, ``data.<arg>`` one of the
datamodule and ``trainer.<arg>`` one of :class:`lightning.Trainer`. Before any training,
:func:`validate_targets` checks every such key against the signature of the class it lands in
(the model and datamodule classes of the source, ``lightning.Trainer.__init__``): the argument
must exist (with a did-you-mean), and every value the parameter can take (both ends of a range,
every choice) must fit the argument's annotation where there is one (``int``, ``float``,
``bool``, ``str``, ``Literal[...]``, ``Optional[...]``, ``list[int]``...). An element key
``model.units.1`` needs a list-typed argument and is checked against the element type.

A factory has no signature to check: a two-parameter factory ``build(optim, targets)`` receives
the sampled values as ``{"model": {...}, "data": {...}}`` and decides what they mean; a
one-parameter factory cannot take ``model.``/``data.`` keys. ``trainer.*`` values are applied
by the tuner to the Trainer arguments of each trial, for every source.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any

from .._internal.imports import signature_defaults
from ..config import ConfigError, did_you_mean
from ._sources import ClassSource, ExampleSource, FactorySource, LightningCLISource, ModelSource, positional_count
from ._space import Param, SearchSpace, target_section

__all__ = ["accepts_targets", "build_source", "target_classes", "target_defaults", "validate_targets"]

# Trainer arguments the tuner sets itself for every trial.
_RESERVED_TRAINER = {"logger": "each trial logs to its own TensorBoard run",
                     "callbacks": "give callbacks in trainer_kwargs (or the LightningCLI YAML), not as a search key",
                     "default_root_dir": "the study's folder holds every trial"}
_SEQUENCES = (list, tuple, cabc.Sequence, cabc.MutableSequence, typing.List, typing.Tuple, typing.Sequence)  # noqa: UP006


def accepts_targets(source: ModelSource) -> bool:
    """Whether ``source`` can receive sampled ``model.``/``data.`` values (its build takes a second argument).

    Example:
        >>> from lightning_optkit.tuning._sources import FactorySource
        >>> accepts_targets(FactorySource(lambda optim, targets: None)), accepts_targets(FactorySource(lambda optim: None))
        (True, False)
    """
    if isinstance(source, FactorySource):
        return positional_count(source.factory) >= 2
    return positional_count(source.build) >= 2


def build_source(source: ModelSource, optim: dict[str, Any], targets: Mapping[str, Any] | None = None
                 ) -> tuple[Any, Any]:
    """``(module, datamodule)`` of a trial: the source built with the optim block and the sampled model/data values.

    Example:
        >>> from lightning_optkit.tuning._sources import ExampleSource
        >>> model, data = build_source(ExampleSource("digits"), {"optimizer": {"name": "adamw"}},
        ...                            {"model": {"dropout": 0.3}, "data": {"batch_size": 16}})
        >>> model.hparams["dropout"], data.batch_size
        (0.3, 16)
    """
    extra = {k: dict((targets or {}).get(k) or {}) for k in ("model", "data")}
    if accepts_targets(source):
        return source.build(optim, extra)  # type: ignore[call-arg]
    if extra["model"] or extra["data"]:
        raise ConfigError("search", extra, f"no model./data. keys: {type(source).__name__}.build takes no second argument")
    return source.build(optim)


def target_classes(source: ModelSource) -> dict[str, Any]:
    """The classes whose ``__init__`` the ``model.``/``data.``/``trainer.`` keys set (``None``: not known)."""
    import lightning as L

    out: dict[str, Any] = {"model": None, "data": None, "trainer": L.Trainer}
    if isinstance(source, ClassSource):
        out["model"], out["data"] = source.model_cls, source.data_cls
    elif isinstance(source, ExampleSource):
        out["model"], out["data"] = source.info.model_cls, source.info.data_cls
    elif isinstance(source, LightningCLISource):
        out["model"], out["data"] = getattr(source, "model_cls", None), getattr(source, "data_cls", None)
    return out


def _source_args(source: ModelSource) -> dict[str, dict[str, Any]]:
    if isinstance(source, (ClassSource, ExampleSource)):
        return {"model": dict(source.model_args), "data": dict(source.data_args)}
    if isinstance(source, LightningCLISource):
        return {s: source.init_args(s) for s in ("model", "data")}
    return {"model": {}, "data": {}}


def target_defaults(source: ModelSource, trainer_kwargs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The values the keys have without a search: the source's arguments, else the signatures' defaults.

    Example:
        >>> from lightning_optkit.tuning._sources import ExampleSource
        >>> target_defaults(ExampleSource("digits", data_args={"batch_size": 32}), {})["data"]["batch_size"]
        32
    """
    classes = target_classes(source)
    args = _source_args(source)
    out: dict[str, dict[str, Any]] = {}
    for section in ("model", "data", "trainer"):
        defaults = {name: list(value) if isinstance(value, tuple) else value
                    for name, value in signature_defaults(classes[section]).items() if name != "optim"}
        given = dict(trainer_kwargs) if section == "trainer" else args.get(section, {})
        out[section] = {**defaults, **given}
    return out


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable forward references: use what inspect sees, strings are not checked
        return {n: p.annotation for n, p in inspect.signature(cls.__init__).parameters.items()}


def _unwrap_optional(ann: Any) -> Any:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(ann) if a is not type(None)]
        return arms[0] if len(arms) == 1 else ann
    return ann


def _element(ann: Any) -> Any:
    """The element annotation of a list-like annotation; ``Any`` when unknown; ``None`` when not a list."""
    ann = _unwrap_optional(ann)
    if ann in (inspect.Parameter.empty, Any) or isinstance(ann, str):
        return Any
    origin = typing.get_origin(ann) or ann
    if origin in _SEQUENCES or ann in _SEQUENCES:
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        return args[0] if len(set(args)) == 1 else Any
    return None


def _accepts(ann: Any, value: Any) -> bool:
    """Whether ``value`` fits the annotation ``ann`` (``True`` when the annotation cannot be checked)."""
    if ann in (inspect.Parameter.empty, Any) or isinstance(ann, (str, typing.TypeVar)):
        return True
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is type(None) or ann is None:
        return value is None
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)  # exact: the class compares exactly
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in args)
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ann is str:
        return isinstance(value, str)
    if isinstance(ann, type) and issubclass(ann, (int, float, str)) and not issubclass(ann, bool):
        return _accepts_restricted(ann, value)
    if (origin or ann) in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False
        elem = _element(ann)
        return all(_accepts(elem, v) for v in value)
    if (origin or ann) in (dict, cabc.Mapping, cabc.MutableMapping):
        return isinstance(value, Mapping)
    return True  # a class (a module, a callable...): jsonargparse or the constructor decide


def _accepts_restricted(ann: type, value: Any) -> bool:
    """A subclass of int/float/str that checks its value when built (jsonargparse's ``PositiveInt``,
    ``ClosedUnitInterval``...): the value must have the base type and pass the constructor."""
    base = next(b for b in (int, float, str) if issubclass(ann, b))
    if not _accepts(base, value):
        return False
    try:
        ann(value)
    except (TypeError, ValueError):
        return False
    return True


def _signature_of(cls: type) -> tuple[dict[str, Any], bool]:
    params = inspect.signature(cls.__init__).parameters
    hints = _hints(cls)
    names = {n: hints.get(n, p.annotation) for n, p in params.items()
             if n != "self" and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return names, var_kw


def _check_param(p: Param, cls: type, section: str) -> None:
    """One ``model.``/``data.``/``trainer.`` parameter against ``cls.__init__``'s signature."""
    where = f"search.{p.path}"
    parts = p.config_path.split(".")
    arg = parts[1]
    names, var_kw = _signature_of(cls)
    owner = f"{cls.__name__}.__init__"
    if section == "model" and arg == "optim":
        raise ConfigError(where, p.to_spec(), "a model argument other than `optim`: search the optim block by its "
                          "own keys (optimizer.lr, scheduler.warmup...)")
    if section == "trainer" and arg in _RESERVED_TRAINER:
        raise ConfigError(where, p.to_spec(), f"a Trainer argument other than {arg} ({_RESERVED_TRAINER[arg]})")
    if arg not in names:
        if var_kw:
            return  # **kwargs: any name goes through, unchecked
        shown = [n for n in names if not (section == "model" and n == "optim")]
        raise ConfigError(where, arg, f"an argument of {owner}: {', '.join(shown)}",
                          suggestions=[f"{section}.{s}" for s in did_you_mean(arg, shown)])
    ann = names[arg]
    if len(parts) > 2:
        if not parts[2].isdigit():
            return  # a key inside a dict argument: its own class checks it
        elem = _element(ann)
        if elem is None:
            raise ConfigError(where, p.to_spec(), f"no element keys: {section}.{arg} of {owner} is "
                              f"{inspect.formatannotation(ann)}, not a list", hint=f"search {section}.{arg} itself")
        ann = elem
    if p.kind == "int" and _unwrap_optional(ann) is float:
        raise ConfigError(where, p.to_spec(), f"a float range for {section}.{arg} ({owner} takes a float): write "
                          f"low: {float(p.low)}, high: {float(p.high)} (integer ends make an int parameter)")
    for value in p.probe_values():
        if value is None and p.kind == "fixed":
            continue  # null deletes the key: the default applies
        if not _accepts(ann, value):
            raise ConfigError(where, value, f"a value of type {inspect.formatannotation(ann)} (the annotation of "
                              f"`{arg}` in {owner})", suggestions=did_you_mean(str(value), _literal_names(ann)))


def _literal_names(ann: Any) -> list[str]:
    ann = _unwrap_optional(ann)
    return [str(a) for a in typing.get_args(ann)] if typing.get_origin(ann) is typing.Literal else []


def validate_targets(space: SearchSpace, source: ModelSource, trainer_kwargs: Mapping[str, Any]) -> SearchSpace:
    """Check every ``model.``/``data.``/``trainer.`` key of ``space`` before any training (see the module doc).

    Returns the space with ``lr_base`` filled in (from the source's arguments or the signature's
    default) where a parameter has ``lr_scaling`` without it.

    Raises:
        ConfigError: ``search.<key>``: an unknown argument (did-you-mean), a value that does not fit
            its annotation, element keys of an argument that is not a list, ``model.``/``data.`` keys
            with a one-argument factory, or ``lr_scaling`` without a known base value.
    """
    targets = space.target_params
    if not targets:
        return space
    classes = target_classes(source)
    for p in targets:
        section = target_section(p.config_path)
        assert section is not None
        cls = classes[section]
        if cls is not None:
            _check_param(p, cls, section)
        elif not accepts_targets(source):
            name = getattr(getattr(source, "factory", None), "__name__", type(source).__name__)
            raise ConfigError(f"search.{p.path}", p.to_spec(), f"a factory that takes the sampled model/data values: "
                              f"build(optim, targets) -> (module, datamodule) ({name} takes one argument)",
                              hint="add a second parameter; it receives {'model': {...}, 'data': {...}}")
    _check_condition_keys(space)
    space = _fill_lr_base(space, source, trainer_kwargs)
    space.target_base = target_defaults(source, trainer_kwargs)
    return space


def _check_condition_keys(space: SearchSpace) -> None:
    """A condition on a model./data./trainer. key must test a searched key (the base config has none)."""
    for p in space.params.values():
        for key, allowed in p.when:
            if target_section(key) is not None and key not in space.params:
                raise ConfigError(f"search.{p.path}.when.{key}", [getattr(a, "ops", a) for a in allowed],
                                  f"a condition on a searched key: {key} is not searched",
                                  suggestions=did_you_mean(key, list(space.params)))


def _fill_lr_base(space: SearchSpace, source: ModelSource, trainer_kwargs: Mapping[str, Any]) -> SearchSpace:
    from ._space import get_path

    missing = [p for p in space.target_params if p.lr_scaling is not None and p.lr_base is None]
    if not missing:
        return space
    defaults = target_defaults(source, trainer_kwargs)
    params = dict(space.params)
    for p in missing:
        base = get_path(defaults, p.config_path)
        if not isinstance(base, (int, float)) or isinstance(base, bool) or base <= 0:
            raise ConfigError(f"search.{p.path}.lr_base", base, "the value the base LR is tuned for (a positive "
                              f"number): {p.config_path} has no default to scale from",
                              hint=f"write lr_base: 64 (say) beside lr_scaling: {p.lr_scaling}")
        params[p.path] = dataclasses.replace(p, lr_base=base)
    return SearchSpace(params)


