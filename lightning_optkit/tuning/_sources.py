"""Where a trial's model and data come from: a factory, a LightningCLI YAML, classes, or a built-in example.

Every source turns the trial's complete ``optim:`` block (a plain dict) into
``(LightningModule, LightningDataModule)``, knows the base config and trainer arguments it comes
with, and says how to reproduce the best trial outside the study. A source is described by
strings (:meth:`ModelSource.describe`), so a process launcher can rebuild it in a fresh process.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..config import ConfigError, read_yaml

__all__ = [
    "ClassSource",
    "ExampleSource",
    "FactorySource",
    "LightningCLISource",
    "ModelSource",
    "as_source",
    "is_lightningcli_yaml",
    "source_from_description",
]

Factory = Callable[[dict[str, Any]], Any]


def _check_pair(out: Any, who: str) -> tuple[Any, Any]:
    import lightning as L

    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"{who} must return (LightningModule, LightningDataModule), got {type(out).__name__}")
    module, data = out
    if not isinstance(module, L.LightningModule):
        raise TypeError(f"{who} must return a LightningModule first, got {type(module).__name__}")
    if not isinstance(data, L.LightningDataModule):
        raise TypeError(f"{who} must return a LightningDataModule second, got {type(data).__name__}")
    return module, data


def _import_object(path: str, label: str) -> Any:
    """``pkg.mod:attr`` or ``pkg.mod.attr`` -> the object; the current folder is importable, as with ``python -m``."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(label, path, "a dotted path pkg.module.name (or pkg.module:name)")
    if module_name == "__main__":
        main = sys.modules.get("__main__")
        if main is not None and hasattr(main, attr):
            return getattr(main, attr)
        raise ConfigError(label, path, "an importable path, not __main__",
                          hint="name the class by the module it is defined in, e.g. mypkg.models.Net")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(label, path, f"an importable module ({exc})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        from ..config import did_you_mean

        names = [n for n in dir(module) if not n.startswith("_")]
        raise ConfigError(label, path, f"a name defined in {module_name}", suggestions=did_you_mean(attr, names)) from None


def _module_stem(module: str) -> str:
    """``pkg.models`` -> ``models``; ``__main__`` -> the script's file name without ``.py``."""
    if module == "__main__":
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        return Path(main_file).stem if main_file else ""
    return module.rsplit(".", 1)[-1]


def _qualname(obj: Any) -> str | None:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None)
    if not module or not name or "<" in name:
        return None
    return f"{module}:{name}"


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(", ", ": "))


class ModelSource:
    """Where a trial's model and data come from; subclass it for a source of your own.

    ``tune(model=...)`` picks :class:`FactorySource`, :class:`LightningCLISource`,
    :class:`ClassSource` or :class:`ExampleSource` (see :func:`as_source`); a subclass needs only
    :meth:`build`, and may add a base config, trainer defaults and reproduction hints.

    Example:
        >>> from lightning_optkit.demo import DigitsClassifier, DigitsDataModule
        >>> class Digits(ModelSource):
        ...     name = "my-digits"
        ...     def build(self, optim):
        ...         return DigitsClassifier(optim, hidden_sizes=[32]), DigitsDataModule()
        >>> model, data = Digits().build({"optimizer": {"name": "adamw"}})
        >>> Digits().describe()
        {'kind': 'source', 'name': 'my-digits'}
    """

    kind = "source"
    name = "model"

    def base_config(self) -> dict[str, Any] | None:
        """The ``optim:`` block this source comes with, if any."""
        return None

    def trainer_defaults(self) -> dict[str, Any]:
        """Trainer arguments this source comes with (the caller's ``trainer_kwargs`` win)."""
        return {}

    def seed(self) -> int | None:
        """The seed this source comes with (LightningCLI's ``seed_everything``), if any."""
        return None

    def build(self, optim: dict[str, Any]) -> tuple[Any, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def reproduce(self, best_yaml: Path, trainer_kwargs: Mapping[str, Any], seed: int) -> list[str]:
        """Lines saying how to train the best config again outside the study."""
        return []

    def write_extras(self, out_dir: Path, optim: dict[str, Any], trainer_kwargs: Mapping[str, Any], seed: int
                     ) -> list[Path]:
        """More files for the best trial (LightningCLI: the whole config); returns their paths."""
        return []

    def describe(self) -> dict[str, Any]:
        """A JSON-safe description (stored in the study's user attributes)."""
        return {"kind": self.kind, "name": self.name}


class FactorySource(ModelSource):
    """``build(optim: dict) -> (LightningModule, LightningDataModule)``, a callable or a dotted path.

    Example:
        >>> from lightning_optkit.demo import make_example
        >>> src = FactorySource(lambda optim: make_example("digits", optim))
        >>> type(src.build({"optimizer": {"name": "sgd", "lr": 0.1}})[0]).__name__
        'DigitsClassifier'
    """

    kind = "factory"

    def __init__(self, factory: Factory | str) -> None:
        self.path = factory if isinstance(factory, str) else _qualname(factory)
        fn = _import_object(factory, "model") if isinstance(factory, str) else factory
        if not callable(fn):
            raise ConfigError("model", factory, "a callable build(config) -> (LightningModule, LightningDataModule)")
        self.factory = fn
        self.name = getattr(fn, "__name__", "build")
        if self.name in ("<lambda>", "build", "make", "factory"):  # a generic name: use its module's
            self.name = _module_stem(getattr(fn, "__module__", "") or "") or "study"

    def build(self, optim: dict[str, Any]) -> tuple[Any, Any]:
        return _check_pair(self.factory(copy.deepcopy(optim)), f"the factory {getattr(self.factory, '__name__', '')}()")

    def reproduce(self, best_yaml: Path, trainer_kwargs: Mapping[str, Any], seed: int) -> list[str]:
        fn = (self.path or "build").replace(":", ".")
        if fn.startswith("__main__."):
            fn = fn.removeprefix("__main__.")
        return [f"L.seed_everything({seed}, workers=True); model, data = {fn}"
                f"(load_config({str(best_yaml)!r}).to_dict()); L.Trainer(**{_trainer_repr(trainer_kwargs)}).fit(model, datamodule=data)"]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "factory": self.path}


class ExampleSource(ModelSource):
    """A built-in example (``"digits"``), as ``optkit fit --example NAME`` trains it.

    Example:
        >>> src = ExampleSource("digits")
        >>> src.trainer_defaults()["max_epochs"], src.base_config()["optimizer"]["name"]
        (10, 'adamw')
    """

    kind = "example"

    def __init__(self, name: str, model_args: Mapping[str, Any] | None = None,
                 data_args: Mapping[str, Any] | None = None) -> None:
        from ..demo import get_example

        self.info = get_example(name)
        self.name = self.info.name
        self.model_args = dict(model_args or {})
        self.data_args = dict(data_args or {})

    def base_config(self) -> dict[str, Any] | None:
        from ..demo import example_config

        return example_config(self.name)

    def trainer_defaults(self) -> dict[str, Any]:
        # exactly what `optkit fit --example` uses, so the best config trains again to the same value
        return {"max_epochs": self.info.max_epochs, "accelerator": "cpu", "devices": 1, "deterministic": True}

    def build(self, optim: dict[str, Any]) -> tuple[Any, Any]:
        from ..demo import make_example

        return make_example(self.name, optim, model_args=self.model_args, data_args=self.data_args)

    def reproduce(self, best_yaml: Path, trainer_kwargs: Mapping[str, Any], seed: int) -> list[str]:
        cmd = ["optkit", "fit", "--example", self.name, str(best_yaml)]
        if trainer_kwargs.get("max_epochs") is not None:
            cmd += ["--max-epochs", str(trainer_kwargs["max_epochs"])]
        cmd += ["--seed", str(seed)]
        if self.model_args:
            cmd += ["--model-args", _json(self.model_args)]
        if self.data_args:
            cmd += ["--data-args", _json(self.data_args)]
        lines = [shlex.join(cmd)]
        extra = sorted(set(trainer_kwargs) - {"max_epochs", "accelerator", "devices", "deterministic"})
        if extra:
            lines.append(f"(the study also set {', '.join(extra)}, which optkit fit does not take: "
                         "the refit may differ)")
        return lines

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "example": self.name, "model_args": self.model_args, "data_args": self.data_args}


class ClassSource(ModelSource):
    """A LightningModule class taking ``optim=`` and a LightningDataModule class, as ``optkit fit --model/--data``.

    Example:
        >>> src = ClassSource("lightning_optkit.demo.DigitsClassifier", "lightning_optkit.demo.DigitsDataModule",
        ...                   model_args={"hidden_sizes": [16]})
        >>> model, data = src.build({"optimizer": {"name": "adamw"}})
        >>> model.hparams["hidden_sizes"]
        [16]
    """

    kind = "classes"

    def __init__(self, model: str, data: str, model_args: Mapping[str, Any] | None = None,
                 data_args: Mapping[str, Any] | None = None) -> None:
        import lightning as L

        self.model_path, self.data_path = model, data
        self.model_cls = _import_object(model, "model")
        self.data_cls = _import_object(data, "data")
        if not (inspect.isclass(self.model_cls) and issubclass(self.model_cls, L.LightningModule)):
            raise ConfigError("model", model, "a LightningModule subclass")
        if not (inspect.isclass(self.data_cls) and issubclass(self.data_cls, L.LightningDataModule)):
            raise ConfigError("data", data, "a LightningDataModule subclass")
        params = inspect.signature(self.model_cls.__init__).parameters
        if "optim" not in params and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            raise ConfigError("model", model, "a LightningModule whose __init__ takes `optim` (a dict)",
                              hint="add `optim: dict` and call self.save_hyperparameters(), with OptimMixin")
        self.model_args = dict(model_args or {})
        self.data_args = dict(data_args or {})
        if "optim" in self.model_args:
            raise ConfigError("model_args.optim", self.model_args["optim"], "no `optim` here: it is the tuned config")
        self.name = self.model_cls.__name__

    def build(self, optim: dict[str, Any]) -> tuple[Any, Any]:
        return self.model_cls(optim=copy.deepcopy(optim), **self.model_args), self.data_cls(**self.data_args)

    def reproduce(self, best_yaml: Path, trainer_kwargs: Mapping[str, Any], seed: int) -> list[str]:
        cmd = ["optkit", "fit", str(best_yaml), "--model", self.model_path, "--data", self.data_path]
        if self.model_args:
            cmd += ["--model-args", _json(self.model_args)]
        if self.data_args:
            cmd += ["--data-args", _json(self.data_args)]
        if trainer_kwargs.get("max_epochs") is not None:
            cmd += ["--max-epochs", str(trainer_kwargs["max_epochs"])]
        cmd += ["--seed", str(seed)]
        return [shlex.join(cmd)]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model_path, "data": self.data_path,
                "model_args": self.model_args, "data_args": self.data_args}


def is_lightningcli_yaml(data: Any) -> bool:
    """A LightningCLI config: a ``model:`` mapping with ``class_path`` (and usually ``data:``, ``trainer:``)."""
    return isinstance(data, Mapping) and isinstance(data.get("model"), Mapping) and "class_path" in data["model"]


class LightningCLISource(ModelSource):
    """A LightningCLI config file: ``model`` and ``data`` as ``class_path``/``init_args``, the base
    config under ``model.init_args.optim``, trainer arguments under ``trainer:``.

    The model and data are instantiated by jsonargparse as LightningCLI does (types from the
    signatures, nested ``class_path`` arguments); ``trainer.callbacks`` are instantiated too, and
    ``trainer.logger`` is replaced by the study's TensorBoard logger.

    Example:
        >>> src = LightningCLISource({"model": {"class_path": "lightning_optkit.demo.DigitsClassifier",
        ...                                     "init_args": {"optim": {"optimizer": {"name": "adamw"}}}},
        ...                           "data": {"class_path": "lightning_optkit.demo.DigitsDataModule"},
        ...                           "trainer": {"max_epochs": 3}})
        >>> src.base_config(), src.trainer_defaults()["max_epochs"]
        ({'optimizer': {'name': 'adamw'}}, 3)
    """

    kind = "lightningcli"
    _DROPPED = ("logger",)

    def __init__(self, config: str | os.PathLike[str] | Mapping[str, Any]) -> None:
        self.path = None if isinstance(config, Mapping) else str(config)
        data = copy.deepcopy(dict(config)) if isinstance(config, Mapping) else read_yaml(config)
        if not is_lightningcli_yaml(data):
            raise ConfigError("model", (data or {}).get("model") if isinstance(data, Mapping) else data,
                              "a LightningCLI config with model.class_path and model.init_args")
        self.data = data
        for section in ("model", "data"):
            block = data.get(section)
            if not isinstance(block, Mapping) or "class_path" not in block:
                raise ConfigError(f"{section}.class_path", block, f"the {section} class as class_path/init_args",
                                  hint=f"a LightningCLI script with a fixed {section} class leaves it out of the YAML; "
                                       f"add {section}: {{class_path: pkg.module.Class, init_args: {{...}}}}")
        for section in ("optimizer", "lr_scheduler"):
            if data.get(section):
                raise ConfigError(section, data[section], "nothing: the optim block replaces LightningCLI's "
                                  f"{section} section", hint="move it into model.init_args.optim")
        init = data["model"].get("init_args") or {}
        if not isinstance(init.get("optim"), Mapping):
            raise ConfigError("model.init_args.optim", init.get("optim"), "the optim block (the base config to tune)")
        self.name = str(data["model"]["class_path"]).rsplit(".", 1)[-1]
        self._parser = self._make_parser()
        self._check_instantiable()
        trainer = dict(data.get("trainer") or {})
        self.dropped = [k for k in self._DROPPED if trainer.pop(k, None) is not None]
        callbacks = trainer.pop("callbacks", None)
        self._callbacks = self._instantiate_callbacks(callbacks) if callbacks else []
        self._trainer = trainer

    @staticmethod
    def _make_parser() -> Any:
        import lightning as L
        from jsonargparse import ArgumentParser

        parser = ArgumentParser(exit_on_error=False)
        parser.add_subclass_arguments(L.LightningModule, "model", required=True)
        parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
        return parser

    def _parse(self, model: Mapping[str, Any], data: Mapping[str, Any]) -> Any:
        import warnings

        try:
            cfg = self._parser.parse_object({"model": copy.deepcopy(dict(model)), "data": copy.deepcopy(dict(data))})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                instantiate = getattr(self._parser, "instantiate", None) or self._parser.instantiate_classes
                return instantiate(cfg)
        except Exception as exc:  # jsonargparse's ArgumentError / NSKeyError, the class's own TypeError
            text = str(exc)
            section = "data" if 'key "data"' in text else "model"
            reason = _jsonargparse_reason(text)
            raise ConfigError(f"{section}.class_path", (self.data.get(section) or {}).get("class_path"),
                              f"an importable class whose init_args match its signature ({reason})") from None

    def _check_instantiable(self) -> None:
        # parse (do not build) once, so a wrong class_path or argument fails before any trial
        try:
            self._parser.parse_object({"model": copy.deepcopy(dict(self.data["model"])),
                                       "data": copy.deepcopy(dict(self.data["data"]))})
        except Exception as exc:
            text = str(exc)
            section = "data" if 'key "data"' in text else "model"
            cp = str((self.data.get(section) or {}).get("class_path"))
            hint = "name the class by an importable module path" if cp.startswith("__main__.") else ""
            raise ConfigError(f"{section}.class_path", cp, "an importable class whose init_args match its signature "
                              f"({_jsonargparse_reason(text)})", hint=hint) from None

    @staticmethod
    def _instantiate_callbacks(spec: Any) -> list[Any]:
        from typing import Optional

        from jsonargparse import ArgumentParser
        from lightning.pytorch import Callback

        items = spec if isinstance(spec, list) else [spec]
        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--callbacks", type=Optional[list[Callback]])  # noqa: UP045 (jsonargparse reads it)
        try:
            cfg = parser.parse_object({"callbacks": items})
            instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
            return list(instantiate(cfg).callbacks or [])
        except Exception as exc:
            raise ConfigError("trainer.callbacks", items, f"Lightning callbacks as class_path/init_args "
                              f"({_jsonargparse_reason(str(exc))})") from None

    def base_config(self) -> dict[str, Any] | None:
        return copy.deepcopy(dict(self.data["model"]["init_args"]["optim"]))

    def trainer_defaults(self) -> dict[str, Any]:
        out = copy.deepcopy(self._trainer)
        if self._callbacks:
            out["callbacks"] = list(self._callbacks)  # tune deep-copies them for every trial
        return out

    def seed(self) -> int | None:
        s = self.data.get("seed_everything")
        return s if isinstance(s, int) and not isinstance(s, bool) else None

    def build(self, optim: dict[str, Any]) -> tuple[Any, Any]:
        model = copy.deepcopy(dict(self.data["model"]))
        model["init_args"] = {**(model.get("init_args") or {}), "optim": copy.deepcopy(optim)}
        init = self._parse(model, self.data["data"])
        return _check_pair((init.model, init.data), "the LightningCLI config")

    def full_config(self, optim: dict[str, Any], seed: int) -> dict[str, Any]:
        out = copy.deepcopy(self.data)
        out["model"]["init_args"]["optim"] = copy.deepcopy(optim)
        out["seed_everything"] = seed
        return out

    def write_extras(self, out_dir: Path, optim: dict[str, Any], trainer_kwargs: Mapping[str, Any], seed: int
                     ) -> list[Path]:
        import yaml

        from .._io import atomic_write_bytes

        path = out_dir / "best_lightningcli.yaml"
        head = "# The LightningCLI config of the best trial: the original with model.init_args.optim replaced.\n"
        atomic_write_bytes(path, (head + yaml.safe_dump(self.full_config(optim, seed), sort_keys=False)).encode())
        return [path]

    def reproduce(self, best_yaml: Path, trainer_kwargs: Mapping[str, Any], seed: int) -> list[str]:
        lines = [f"python YOUR_LIGHTNINGCLI_SCRIPT.py fit --config {best_yaml.parent / 'best_lightningcli.yaml'}"]
        model, data = self.data["model"], self.data["data"]
        margs = {k: v for k, v in (model.get("init_args") or {}).items() if k != "optim"}
        cmd = ["optkit", "fit", str(best_yaml), "--model", str(model["class_path"]), "--data", str(data["class_path"])]
        if margs:
            cmd += ["--model-args", _json(margs)]
        if data.get("init_args"):
            cmd += ["--data-args", _json(data["init_args"])]
        if trainer_kwargs.get("max_epochs") is not None:
            cmd += ["--max-epochs", str(trainer_kwargs["max_epochs"])]
        cmd += ["--seed", str(seed)]
        lines.append("or: " + shlex.join(cmd))
        return lines

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "config": self.path, "model": self.data["model"]["class_path"],
                "data": self.data["data"]["class_path"]}


def _jsonargparse_reason(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith("- Problem with given class_path"):
            detail = lines[i + 1] if i + 1 < len(lines) else ""
            return (ln.removeprefix("- ").rstrip(":") + (": " + detail if detail else "")).strip()
    return lines[0] if lines else "invalid"


def _trainer_repr(kwargs: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in kwargs.items() if k != "callbacks" and isinstance(v, (int, float, str, bool, type(None)))}
    return "{" + ", ".join(f"{k!r}: {v!r}" for k, v in shown.items()) + "}"


def as_source(model: Any = None, *, example: str | None = None, model_args: Mapping[str, Any] | None = None,
              data_args: Mapping[str, Any] | None = None) -> ModelSource:
    """Choose the source: ``example=`` (built-in), a :class:`ModelSource`, a callable factory or
    ``"pkg.mod:build"``, or a LightningCLI YAML (path or dict).

    Raises:
        ConfigError: ``model``, when none or two are given or the value fits none of them.
    """
    if example is not None:
        if model is not None:
            raise ConfigError("model", model, "nothing when example= is given (the example brings its model)")
        return ExampleSource(example, model_args=model_args, data_args=data_args)
    if model is None:
        raise ConfigError("model", None, "a factory build(config) -> (module, datamodule), a LightningCLI YAML, "
                          "or example='digits'")
    if isinstance(model, ModelSource):
        return model
    if isinstance(model, Mapping):
        return LightningCLISource(model)
    if isinstance(model, (str, os.PathLike)):
        text = os.fspath(model)
        if text.endswith((".yaml", ".yml")) or Path(text).is_file():
            return LightningCLISource(text)
        return FactorySource(text)
    if callable(model):
        return FactorySource(model)
    raise ConfigError("model", model, "a factory, a 'pkg.mod:build' path, or a LightningCLI YAML path")


def source_from_description(desc: Mapping[str, Any]) -> ModelSource:
    """Rebuild a source from :meth:`ModelSource.describe` (e.g. in a fresh worker process).

    Example:
        >>> source_from_description(ExampleSource("digits").describe()).name
        'digits'
    """
    kind = desc.get("kind")
    if kind == "example":
        return ExampleSource(desc["example"], desc.get("model_args"), desc.get("data_args"))
    if kind == "classes":
        return ClassSource(desc["model"], desc["data"], desc.get("model_args"), desc.get("data_args"))
    if kind == "factory" and desc.get("factory") and not str(desc["factory"]).startswith("__main__"):
        return FactorySource(desc["factory"])
    if kind == "lightningcli" and desc.get("config"):
        return LightningCLISource(desc["config"])
    raise ConfigError("source", dict(desc), "a source a new process can rebuild: an example, model/data classes, "
                      "an importable factory path (not one defined in __main__) or a LightningCLI YAML file")
