"""Where a trial's model and data come from: a factory, a LightningCLI YAML, classes, or a built-in example.

Every source turns the trial's complete ``optim:`` block (a plain dict) into
``(LightningModule, LightningDataModule)``, knows the base config and trainer arguments it comes
with, and says how to reproduce the best trial outside the study. A source is described by
strings (:meth:`ModelSource.describe`), so a process launcher can rebuild it in a fresh process.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..config import ConfigError, merge_nested

__all__ = [
    "ClassSource",
    "ExampleSource",
    "FactorySource",
    "LightningCLISource",
    "ModelSource",
    "as_source",
    "is_lightningcli_yaml",
    "positional_count",
    "source_from_description",
]

Factory = Callable[[dict[str, Any]], Any]


def positional_count(fn: Any) -> int:
    """How many positional arguments ``fn`` takes (a large number for ``*args``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 99
    return sum(p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in params)


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
    from .._internal.imports import import_object

    return import_object(path, label)


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

    def build(self, optim: dict[str, Any], targets: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
        """A two-parameter factory also gets the sampled ``{"model": {...}, "data": {...}}`` (see _targets.py)."""
        who = f"the factory {getattr(self.factory, '__name__', '')}()"
        if positional_count(self.factory) >= 2:
            extra = {k: copy.deepcopy(dict((targets or {}).get(k) or {})) for k in ("model", "data")}
            return _check_pair(self.factory(copy.deepcopy(optim), extra), who)
        return _check_pair(self.factory(copy.deepcopy(optim)), who)

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

    def build(self, optim: dict[str, Any], targets: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
        from ..demo import make_example

        targets = targets or {}
        return make_example(self.name, optim, model_args=merge_nested(self.model_args, targets.get("model") or {}),
                            data_args=merge_nested(self.data_args, targets.get("data") or {}))

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

    def build(self, optim: dict[str, Any], targets: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
        targets = targets or {}
        model_args = merge_nested(self.model_args, targets.get("model") or {})
        data_args = merge_nested(self.data_args, targets.get("data") or {})
        # class_path objects (a backbone nn.Module...) are built afresh for every trial, as LightningCLI does
        from .._internal.imports import instantiate_objects

        model_args = instantiate_objects(model_args, "model_args")
        data_args = instantiate_objects(data_args, "data_args")
        return self.model_cls(optim=copy.deepcopy(optim), **model_args), self.data_cls(**data_args)

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
    """A LightningCLI config: a ``model:`` mapping, with ``class_path`` or the init arguments of a fixed class."""
    from ..lightningcli import is_lightningcli_config

    return is_lightningcli_config(data)


class LightningCLISource(ModelSource):
    """A LightningCLI config file, as ``--print_config`` writes it: the base config is the model's ``optim``
    argument (``model.init_args.optim``, or ``model.optim`` for a fixed-class ``LightningCLI(Model, Data)``).

    Every trial is parsed and instantiated by a LightningCLI parser (:class:`lightning_optkit.lightningcli.LightningCLIConfig`):
    the project's own with ``cli=`` (its ``cli_main`` or ``LightningCLI`` subclass), so the sections it
    adds (``parser.add_lightning_class_args(BackboneFinetuning, "finetuning")``), its links and defaults
    all take part; else the parser of ``LightningCLI(Model, Data)`` (``model=``/``data=`` name the classes
    of a fixed-class file). ``trainer.callbacks`` and callback sections run in every trial (fresh copies),
    the other ``trainer:`` arguments are the trials' defaults, ``trainer.logger`` gives way to the study's
    TensorBoard logger. A section the parser does not know, ``optimizer``/``lr_scheduler`` and
    ``ckpt_path`` are ConfigErrors naming them. The best trial is written as ``best_lightningcli.yaml``,
    dumped by that parser, so the project's CLI reads it unchanged.

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

    def __init__(self, config: str | os.PathLike[str] | Mapping[str, Any], *, cli: Any = None,
                 model: str | None = None, data: str | None = None) -> None:
        from lightning.pytorch.callbacks import Checkpoint

        from ..lightningcli import LightningCLIConfig

        self.cli_config = LightningCLIConfig(config, cli=cli, model=model, data=data)
        self.path = self.cli_config.path
        self.data = self.cli_config.raw
        self.name = self.cli_config.name
        trainer = self.data.get("trainer")
        self.dropped = [k for k in self._DROPPED if isinstance(trainer, Mapping) and trainer.get(k) is not None]
        run = self.cli_config.instantiate(self.cli_config.base_optim())  # builds once: callbacks, trainer arguments
        if run.ckpt_path:
            raise ConfigError("ckpt_path", run.ckpt_path, "null when tuning: every trial starts from the model's own "
                              "initialization", hint="load pretrained weights in the model's __init__ instead "
                              "(optkit fit --cli ... resumes from ckpt_path)")
        self.model_cls, self.data_cls = type(run.model), (type(run.data) if run.data is not None else None)
        self._callbacks = run.callbacks
        self._trainer = run.trainer_kwargs
        if any(isinstance(cb, Checkpoint) for cb in run.callbacks):  # the file's ModelCheckpoint saves, as it asks
            self._trainer.setdefault("enable_checkpointing", True)

    def base_config(self) -> dict[str, Any] | None:
        return self.cli_config.base_optim()

    def trainer_defaults(self) -> dict[str, Any]:
        out = copy.deepcopy(self._trainer)
        if self._callbacks:
            out["callbacks"] = list(self._callbacks)  # tune deep-copies them for every trial
        return out

    def seed(self) -> int | None:
        return self.cli_config.seed()

    def init_args(self, section: str) -> dict[str, Any]:
        """The constructor arguments the file gives ``model`` (without ``optim``) or ``data``."""
        block = self.data.get(section)
        if not isinstance(block, Mapping):
            return {}
        args = (block.get("init_args") or {}) if "class_path" in block else block
        return {k: copy.deepcopy(v) for k, v in args.items() if k != "optim"}

    def build(self, optim: dict[str, Any], targets: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
        run = self.cli_config.instantiate(optim, targets)
        if run.data is None:
            import lightning as L

            if not isinstance(run.model, L.LightningModule):
                raise TypeError(f"the LightningCLI config must give a LightningModule, got {type(run.model).__name__}")
            return run.model, None
        return _check_pair((run.model, run.data), "the LightningCLI config")

    def full_config(self, optim: dict[str, Any], seed: int) -> dict[str, Any]:
        """The file's config with ``optim`` in place and ``seed_everything: seed`` (as written, not dumped)."""
        return self.cli_config.with_optim(optim, seed=seed)

    def write_extras(self, out_dir: Path, optim: dict[str, Any], trainer_kwargs: Mapping[str, Any], seed: int,
                     targets: Mapping[str, Any] | None = None) -> list[Path]:
        from .._internal.io import atomic_write_bytes

        path = out_dir / "best_lightningcli.yaml"
        head = (f"# The LightningCLI config of the best trial: the original with {self.cli_config.optim_key} replaced,\n"
                "# as the project's LightningCLI parser prints it (its `fit --config` reads it unchanged).\n")
        atomic_write_bytes(path, (head + self.cli_config.dump(optim, seed, targets)).encode())
        return [path]

    def reproduce(self, best_yaml: Path, trainer_kwargs: Mapping[str, Any], seed: int) -> list[str]:
        full = best_yaml.parent / "best_lightningcli.yaml"
        lines = [f"python YOUR_LIGHTNINGCLI_SCRIPT.py fit --config {full}"]
        cmd = ["optkit", "fit", str(full)]
        if self.cli_config.cli_path:
            cmd += ["--cli", self.cli_config.cli_path]
        elif self.cli_config.model_path:
            cmd += ["--model", self.cli_config.model_path] + (["--data", self.cli_config.data_path]
                                                               if self.cli_config.data_path else [])
        lines.append("or: " + shlex.join(cmd))
        model, data = self.data["model"], self.data.get("data") or {}
        if "class_path" in model and "class_path" in data and not self.cli_config.explicit_cli:
            margs = self.init_args("model")
            cmd = ["optkit", "fit", str(best_yaml), "--model", str(model["class_path"]), "--data", str(data["class_path"])]
            if margs:
                cmd += ["--model-args", _json(margs)]
            if data.get("init_args"):
                cmd += ["--data-args", _json(data["init_args"])]
            if trainer_kwargs.get("max_epochs") is not None:
                cmd += ["--max-epochs", str(trainer_kwargs["max_epochs"])]
            cmd += ["--seed", str(seed)]
            lines.append("or (the optim block alone): " + shlex.join(cmd))
        return lines

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.cli_config.describe(), "model": self.model_cls.__module__ + "."
                + self.model_cls.__qualname__}


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
        return LightningCLISource(desc["config"], cli=desc.get("cli"), model=desc.get("model_class"),
                                  data=desc.get("data_class"))
    raise ConfigError("source", dict(desc), "a source a new process can rebuild: an example, model/data classes, "
                      "an importable factory path (not one defined in __main__) or a LightningCLI YAML file")
