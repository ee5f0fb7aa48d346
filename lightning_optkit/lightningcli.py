"""A LightningCLI config file read the way the project's own LightningCLI reads it.

``optkit tune/fit/lr-find`` take the config a ``LightningCLI`` prints (``--print_config``): with
``model.class_path`` (subclass mode) or without it (a fixed-class ``LightningCLI(Model, Data)``
prints ``model:`` with the init arguments directly). The file is parsed and instantiated by a
LightningCLI parser: the project's own when ``cli=`` names its ``cli_main`` function or its
``LightningCLI`` subclass (so every section it adds -- ``parser.add_lightning_class_args(...)``
callbacks, links, defaults -- takes part), else the parser of a plain ``LightningCLI(Model, Data)``.
A section that parser does not know is a :class:`~lightning_optkit.config.ConfigError` naming it.

The parser is taken from the project's CLI without running it: while ``cli_main()`` (or the
subclass) is called, ``LightningCLI.setup_parser`` stops the construction right after the parser
is complete, before any argument is parsed or any class is built.

Example:
    >>> cfg = LightningCLIConfig({"model": {"class_path": "lightning_optkit.demo.DigitsClassifier",
    ...                                     "init_args": {"optim": {"optimizer": {"name": "adamw"}}}},
    ...                           "data": {"class_path": "lightning_optkit.demo.DigitsDataModule"},
    ...                           "trainer": {"max_epochs": 3}})
    >>> cfg.optim_key, cfg.base_optim()["optimizer"]
    ('model.init_args.optim', {'name': 'adamw'})
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._internal.errors import ConfigError
from .config import merge_nested, read_yaml

__all__ = ["CLIRun", "LightningCLIConfig", "is_lightningcli_config"]

# LightningCLI's own optimizer sections: the optim block replaces them
_REPLACED = ("optimizer", "lr_scheduler")


def is_lightningcli_config(data: Any) -> bool:
    """A LightningCLI config (a ``model:`` mapping), not an optim block (which has no ``model`` key).

    Example:
        >>> is_lightningcli_config({"model": {"optim": {"optimizer": {"name": "sgd"}}}, "trainer": {}})
        True
        >>> is_lightningcli_config({"optimizer": {"name": "sgd"}})
        False
    """
    return isinstance(data, Mapping) and isinstance(data.get("model"), Mapping)


@dataclass
class CLIRun:
    """What one instantiation of the config gives: the model, the datamodule (``None`` when the CLI
    has none), the Trainer arguments it sets (logger left out), its callbacks and ``ckpt_path``."""

    model: Any
    data: Any
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    callbacks: list[Any] = field(default_factory=list)
    ckpt_path: str | None = None


class _Captured(Exception):
    def __init__(self, cli: Any) -> None:
        super().__init__("LightningCLI parser captured")
        self.cli = cli


@contextlib.contextmanager
def _capture_parser() -> Iterator[None]:
    """Stop every ``LightningCLI`` built inside at the end of ``setup_parser`` (nothing parsed or built)."""
    from lightning.pytorch.cli import LightningCLI

    original = LightningCLI.setup_parser

    def setup_parser(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        raise _Captured(self)

    LightningCLI.setup_parser = setup_parser  # type: ignore[method-assign]
    try:
        yield
    finally:
        LightningCLI.setup_parser = original  # type: ignore[method-assign]


def _project_cli(make: Callable[[], Any], label: str, value: Any) -> Any:
    """The LightningCLI object ``make()`` creates, stopped before it parses anything."""
    try:
        with _capture_parser():
            make()
    except _Captured as captured:
        return captured.cli
    except SystemExit as exc:
        raise ConfigError(label, value, f"a function or LightningCLI subclass that builds a LightningCLI (it exited: {exc})") \
            from None
    raise ConfigError(label, value, "a function (cli_main) or LightningCLI subclass that creates a LightningCLI",
                      hint="it returned without creating one")


def _load_object(path: str, label: str) -> Any:
    from ._internal.imports import import_object

    return import_object(path, label)


def _reason(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith("- Problem with given class_path"):
            detail = lines[i + 1] if i + 1 < len(lines) else ""
            return (ln.removeprefix("- ").rstrip(":") + (": " + detail if detail else "")).strip()
    return lines[0] if lines else "invalid"


def _error_key(text: str) -> str | None:
    """The config key a jsonargparse message is about (``finetuning``, ``model.hiddenx``), if it names one."""
    m = re.search(r"Group '([^']+)' does not accept option '([^']+)'", text)
    if m:
        return f"{m.group(1)}.{m.group(2)}"
    m = re.search(r"(?:Option|key) ['\"]([^'\"]+)['\"]", text)
    return m.group(1) if m else None


class LightningCLIConfig:
    """A LightningCLI config file with the parser that reads it (see the module docstring).

    Args:
        config: the YAML path or the config as a dict.
        cli: the project's LightningCLI: its ``cli_main`` function or its ``LightningCLI`` subclass
            (``"pkg.mod:cli_main"``, ``"pkg.mod.MyCLI"`` or the object itself).
        model / data: the classes of a fixed-class CLI (``LightningCLI(Model, Data)``), when the file
            has no ``class_path`` and no ``cli`` is given.
    """

    def __init__(self, config: str | os.PathLike[str] | Mapping[str, Any], *, cli: Any = None,
                 model: str | None = None, data: str | None = None) -> None:
        self.path = None if isinstance(config, Mapping) else str(config)
        raw = copy.deepcopy(dict(config)) if isinstance(config, Mapping) else read_yaml(config)
        if not is_lightningcli_config(raw):
            raise ConfigError("model", (raw or {}).get("model") if isinstance(raw, Mapping) else raw,
                              "a LightningCLI config: a model: section (class_path/init_args, or the init "
                              "arguments of a fixed model class)")
        self.raw: dict[str, Any] = dict(raw)
        self.cli_path = cli if isinstance(cli, str) else None
        self.explicit_cli = cli is not None
        self.model_path, self.data_path = model, data
        for section in _REPLACED:
            if self.raw.get(section):
                raise ConfigError(section, self.raw[section], "nothing: the optim block replaces LightningCLI's "
                                  f"{section} section", hint="move it into the model's optim argument")
        self.optim_key = "model.init_args.optim" if "class_path" in self.raw["model"] else "model.optim"
        if not isinstance(self._model_args().get("optim"), Mapping):
            raise ConfigError(self.optim_key, self._model_args().get("optim"),
                              "the optim block (the base config to tune)")
        self.cli = self._make_cli(cli)
        self.parser = self._pick_parser(self.cli)
        self.name = self._model_name()
        self.check()

    # -- the parser ------------------------------------------------------------------------------------
    def _make_cli(self, cli: Any) -> Any:
        import lightning as L
        from lightning.pytorch.cli import LightningCLI

        if cli is not None:
            obj = _load_object(cli, "cli") if isinstance(cli, str) else cli
            if inspect.isclass(obj) and issubclass(obj, LightningCLI):
                return _project_cli(obj, "cli", cli)
            if callable(obj):
                return _project_cli(obj, "cli", cli)
            raise ConfigError("cli", cli, "the project's cli_main function or its LightningCLI subclass")
        model_cls = _load_object(self.model_path, "model") if self.model_path else None
        data_cls = _load_object(self.data_path, "data") if self.data_path else None
        model_sub = "class_path" in self.raw["model"]
        if model_cls is None and not model_sub:
            raise ConfigError("model.class_path", None, "the model class: this config was printed by a fixed-class "
                              "LightningCLI(Model, ...), which leaves it out",
                              hint="give the project's CLI with --cli pkg.mod:cli_main (or its LightningCLI "
                                   "subclass), or the classes with --model pkg.mod.Model --data pkg.mod.Data")
        data_section = self.raw.get("data")
        data_sub = isinstance(data_section, Mapping) and "class_path" in data_section
        if data_section is not None and data_cls is None and not data_sub:
            raise ConfigError("data.class_path", None, "the datamodule class (the config has data: without class_path)",
                              hint="give --cli pkg.mod:cli_main, or --data pkg.mod.DataModule")
        if data_cls is None and data_sub:
            data_cls = L.LightningDataModule
        return _project_cli(lambda: LightningCLI(model_cls or L.LightningModule, data_cls,
                                                 subclass_mode_model=model_sub, subclass_mode_data=data_sub),
                            "model", self.model_path)

    @staticmethod
    def _pick_parser(cli: Any) -> Any:
        # a CLI with subcommands reads a printed `fit` config with its fit parser (which has ckpt_path)
        parser = (getattr(cli, "_subcommand_parsers", None) or {}).get("fit") or cli.parser
        parser.exit_on_error = False
        return parser

    def _model_args(self, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        model = (data if data is not None else self.raw)["model"]
        return model.setdefault("init_args", {}) if "class_path" in model else model

    def _model_name(self) -> str:
        model = self.raw["model"]
        if "class_path" in model:
            return str(model["class_path"]).replace(":", ".").rsplit(".", 1)[-1]
        cls = getattr(self.cli, "model_class", None)
        return getattr(cls, "__name__", None) or (self.model_path or "model").replace(":", ".").rsplit(".", 1)[-1]

    # -- configs ---------------------------------------------------------------------------------------
    def base_optim(self) -> dict[str, Any]:
        """The optim block of the file (the base config)."""
        return copy.deepcopy(dict(self._model_args()["optim"]))

    def with_optim(self, optim: Mapping[str, Any], targets: Mapping[str, Any] | None = None,
                   seed: int | None = None) -> dict[str, Any]:
        """The file's config with ``optim`` in place (and sampled ``model``/``data`` arguments merged in)."""
        out = copy.deepcopy(self.raw)
        args = self._model_args(out)
        args.update(merge_nested(args, (targets or {}).get("model") or {}))
        args["optim"] = copy.deepcopy(dict(optim))
        extra_data = (targets or {}).get("data")
        if extra_data:
            data = out.setdefault("data", {})
            block = data.setdefault("init_args", {}) if "class_path" in data else data
            block.update(merge_nested(block, extra_data))
        extra_trainer = (targets or {}).get("trainer")
        if extra_trainer:  # sampled Trainer arguments: the written config trains as the trial did
            trainer = out.setdefault("trainer", {})
            trainer.update(merge_nested(trainer, extra_trainer))
        if seed is not None:
            out["seed_everything"] = seed
        return out

    def parse(self, config: Mapping[str, Any]) -> Any:
        """The parsed (not instantiated) namespace; every mistake is a ConfigError naming its key."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return self.parser.parse_object(copy.deepcopy(dict(config)))
        except Exception as exc:  # jsonargparse's ArgumentError, NSKeyError...
            raise self._config_error(str(exc)) from None

    def _config_error(self, text: str) -> ConfigError:
        key = _error_key(text) or "model"
        section = key.split(".", 1)[0]
        known = sorted({a.dest.split(".", 1)[0] for a in self.parser._actions
                        if a.dest not in ("help", "config", "print_config")})
        if section not in known:
            if self.explicit_cli:
                hint = "the project's LightningCLI (--cli) does not define it either: remove it from the file"
            else:
                hint = ("a section added by the project's own LightningCLI (parser.add_lightning_class_args...) "
                        "needs that CLI: give --cli pkg.mod:cli_main or its LightningCLI subclass, so that nothing "
                        "in the file is left out")
            return ConfigError(section, self.raw.get(section),
                               "a section the LightningCLI parser knows: " + ", ".join(known), hint=hint)
        block = self.raw.get(section)
        if "Problem with given class_path" in text and isinstance(block, Mapping) and "class_path" in block:
            cp = str(block["class_path"])
            hint = "name the class by an importable module path" if cp.startswith("__main__.") else ""
            return ConfigError(f"{section}.class_path", cp, "an importable class whose init_args match its signature "
                               f"({_reason(text)})", hint=hint)
        value: Any = self.raw
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        return ConfigError(key, value, f"what the LightningCLI parser accepts ({_reason(text)})")

    def check(self) -> None:
        """Parse the file once (nothing is built): a wrong class_path, argument or section fails here."""
        ns = self.parse(self.raw)
        for section in _REPLACED:
            if ns.get(section):
                raise ConfigError(section, ns.get(section), "nothing: the optim block replaces LightningCLI's "
                                  f"{section} section", hint="move it into the model's optim argument")

    def seed(self) -> int | None:
        """``seed_everything`` of the file, or the CLI's default (``None`` when random or off)."""
        value = self.parse(self.raw).get("seed_everything")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    # -- building --------------------------------------------------------------------------------------
    def instantiate(self, optim: Mapping[str, Any], targets: Mapping[str, Any] | None = None) -> CLIRun:
        """Build the model, the datamodule, the callbacks and the Trainer arguments, as the project's CLI does."""
        config = self.with_optim(optim, targets)
        trainer = config.get("trainer")
        if isinstance(trainer, dict):
            trainer.pop("logger", None)  # the caller logs (optkit tune: one TensorBoard run per trial)
        ns = self.parse(config)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                instantiate = getattr(self.parser, "instantiate", None) or self.parser.instantiate_classes
                init = instantiate(ns)
        except Exception as exc:
            key = (_error_key(str(exc)) or "").split(".", 1)[0]  # the section that failed (model, data, finetuning...)
            section = key if key in config else ("data" if 'key "data"' in str(exc) else "model")
            block = config.get(section)
            raise ConfigError(section, block.get("class_path", block) if isinstance(block, Mapping) else block,
                              f"a class whose arguments match its signature ({_reason(str(exc))})") from None
        trainer_ns = init.get("trainer")
        values = {k: trainer_ns[k] for k in (trainer_ns.keys() if trainer_ns is not None else [])}
        from ._internal.imports import signature_defaults

        defaults = signature_defaults(getattr(self.cli, "trainer_class", None))
        callbacks = values.pop("callbacks", None) or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        callbacks += [init.get(k) for k in getattr(self.parser, "callback_keys", [])]
        persistent = (getattr(self.cli, "trainer_defaults", None) or {}).get("callbacks") or []
        callbacks += list(persistent) if isinstance(persistent, (list, tuple)) else [persistent]
        kwargs = {k: v for k, v in values.items() if k != "logger" and "." not in k and v is not None
                  and not (k in defaults and _same(v, defaults[k]))}
        return CLIRun(model=init.get("model"), data=init.get("data"), trainer_kwargs=kwargs, callbacks=callbacks,
                      ckpt_path=ns.get("ckpt_path"))

    def dump(self, optim: Mapping[str, Any], seed: int, targets: Mapping[str, Any] | None = None) -> str:
        """The whole config with ``optim`` in place, as the project's CLI prints it; it parses it back unchanged."""
        ns = self.parse(self.with_optim(optim, targets, seed=seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            text = self.parser.dump(ns, skip_none=False)
        self.parse(_yaml_load(text))  # what we write, the project's parser reads (else: a bug here, loudly)
        return text

    def describe(self) -> dict[str, Any]:
        """Strings that rebuild this config in a new process."""
        return {"config": self.path, "cli": self.cli_path, "model_class": self.model_path, "data_class": self.data_path}


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return False


def _yaml_load(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)
