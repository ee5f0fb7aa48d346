"""OptimMixin under LightningCLI: the optim block from a YAML config or the command line, trained for real."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning as L
import lightningcli_project as project  # tests/ is on sys.path, as for training_helpers
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_optkit import ConfigError, OptimMixin, load_config
from lightning_optkit.cli import main as optkit

pytest.importorskip("jsonargparse")


class Net(OptimMixin, L.LightningModule):
    """A user's module: the optim block is an ordinary init argument."""

    def __init__(self, optim: dict, hidden: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(nn.Linear(4, hidden), nn.LayerNorm(hidden), nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.backbone(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", self.loss_fn(self(x), y))


class RandomData(L.LightningDataModule):
    def __init__(self, n: int = 48, batch_size: int = 8) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.n, 4, generator=g)
        self.data = TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size)


OPTIM = {
    "optimizer": {"name": "AdamW", "lr": 3.0e-3, "weight_decay": 0.05},
    "param_groups": [{"params": "backbone.*", "lr_scale": 0.1}],
    "scheduler": {"name": "warmup_cosine", "warmup": 2, "min_lr_ratio": 0.1},
    "loss": {"name": "cross_entropy", "label_smoothing": 0.1},
}


def _trainer_section(tmp_path) -> dict:
    return {
        "max_epochs": 1,
        "accelerator": "cpu",
        "devices": 1,
        "default_root_dir": str(tmp_path),
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}},
        "callbacks": [{"class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
                       "init_args": {"logging_interval": "step"}}],
    }


def _fit_and_check(cli: LightningCLI) -> None:
    cfg = cli.model.get_optim_config()
    assert cfg == load_config(OPTIM)
    assert cli.model.hparams.hidden == 8
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 6
    monitor = next(cb for cb in cli.trainer.callbacks if isinstance(cb, LearningRateMonitor))
    names = set(monitor.lrs)
    assert "lr-AdamW/backbone" in names, names
    assert {"lr-AdamW/default", "lr-AdamW/backbone/no_decay", "lr-AdamW/default/no_decay"} <= names
    backbone, default = monitor.lrs["lr-AdamW/backbone"], monitor.lrs["lr-AdamW/default"]
    assert len(backbone) == 6
    assert backbone[0] == 0.0, "the warm-up starts at 0"
    assert default[2] == pytest.approx(3e-3), "peak at the end of the 2-step warm-up"
    assert backbone[2] == pytest.approx(3e-4), "lr_scale 0.1"
    assert default[-1] == pytest.approx(3e-4), "decayed to min_lr_ratio at the last step"
    assert isinstance(cli.model.loss_fn, nn.CrossEntropyLoss)
    assert cli.model.loss_fn.label_smoothing == 0.1


def test_lightningcli_yaml_config(tmp_path):
    config = {"model": {"optim": OPTIM, "hidden": 8}, "trainer": _trainer_section(tmp_path)}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LightningCLI(Net, RandomData, run=False, args=["--config", str(path)], save_config_callback=None)
    _fit_and_check(cli)


def test_lightningcli_subclass_mode_init_args(tmp_path):
    config = {
        "model": {"class_path": f"{__name__}.Net", "init_args": {"optim": OPTIM}},
        "data": {"class_path": f"{__name__}.RandomData"},
        "trainer": _trainer_section(tmp_path),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LightningCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       run=False, args=["--config", str(path)], save_config_callback=None)
    assert isinstance(cli.model, Net)
    _fit_and_check(cli)


def test_lightningcli_command_line_override(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": {"optim": OPTIM}, "trainer": _trainer_section(tmp_path)}))
    optim = dict(OPTIM, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9})
    cli = LightningCLI(Net, RandomData, run=False, save_config_callback=None,
                       args=["--config", str(path), "--model.optim", json.dumps(optim), "--model.hidden", "4"])
    cfg = cli.model.get_optim_config()
    assert cfg.optimizer.name == "sgd"
    assert cfg.optimizer.kwargs == {"momentum": 0.9}
    assert cli.model.hparams.hidden == 4
    cli.trainer.fit(cli.model, cli.datamodule)
    assert type(cli.trainer.optimizers[0]).__name__ == "SGD"


def test_lightningcli_bad_optim_block_is_a_config_error(tmp_path):
    bad = dict(OPTIM, scheduler={"name": "warmup_cosin"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": {"optim": bad}, "trainer": _trainer_section(tmp_path)}))
    cli = LightningCLI(Net, RandomData, run=False, args=["--config", str(path)], save_config_callback=None)
    with pytest.raises(ConfigError) as info:
        cli.trainer.fit(cli.model, cli.datamodule)
    assert info.value.path == "scheduler.name"
    assert "warmup_cosine" in info.value.suggestions


# -- optkit tune/fit/lr-find on the config a LightningCLI prints ---------------------------------------------

PROJECT_CLI = "lightningcli_project:cli_main"


def _printed_config(tmp_path, capsys, **extra) -> str:
    """What `python train.py fit --config base.yaml --print_config` prints for the project's fixed-class CLI."""
    base = {"model": {"optim": {"optimizer": {"name": "adamw", "lr": 1e-2},
                                "scheduler": {"name": "warmup_cosine", "warmup": 2}}},
            "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1,
                        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                   "init_args": {"save_dir": str(tmp_path / "csv")}},
                        "callbacks": [{"class_path": "lightningcli_project.EpochCounter"},
                                      {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                       "init_args": {"monitor": "val_loss", "filename": "best-{epoch}"}}]},
            **extra}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        project.cli_main(["fit", "--config", str(tmp_path / "base.yaml"), "--print_config"])
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    assert "class_path: lightningcli_project.Backboned" not in printed.read_text()  # the fixed-class form
    assert "finetuning:" in printed.read_text()
    return str(printed)


def test_tune_a_printed_fixed_class_config_through_the_projects_cli(tmp_path, capsys):
    import optuna

    printed = _printed_config(tmp_path, capsys)
    project.RUNS.clear()
    rc = optkit(["tune", printed, "--cli", PROJECT_CLI, "--search", "adamw", "--trials", "2", "--reeval", "0", "--out",
                 str(tmp_path / "out"), "--no-plots", "--no-tensorboard", "-q"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert len(project.RUNS) == 2
    for run in project.RUNS:  # BackboneFinetuning (the `finetuning:` section) froze the backbone in every trial
        assert run["backbone_frozen"] and not run["backbone_moved"] and run["head_moved"], run
        assert {"BackboneFinetuning", "EpochCounter", "ModelCheckpoint"} <= set(run["callbacks"])
    assert list((tmp_path / "out" / "Backboned").rglob("best-epoch=1.ckpt"))  # the file's ModelCheckpoint saved
    study = optuna.load_study(study_name="Backboned", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}")
    best = tmp_path / "out" / "Backboned" / "best_lightningcli.yaml"
    written = yaml.safe_load(best.read_text())
    assert "init_args" not in written["model"] and written["finetuning"]["unfreeze_backbone_at_epoch"] == 10
    assert written["model"]["optim"] == study.best_trial.user_attrs["optkit.config"]

    # the project's own CLI trains the best config unchanged (its own parser, its fit subcommand)
    project.RUNS.clear()
    project.cli_main(["fit", "--config", str(best), "--trainer.default_root_dir", str(tmp_path / "refit")])
    assert len(project.RUNS) == 1 and project.RUNS[0]["backbone_frozen"]
    assert project.RUNS[0]["optim"] == written["model"]["optim"]


def test_a_section_only_the_projects_cli_knows_is_an_error_without_it(tmp_path, capsys):
    printed = _printed_config(tmp_path, capsys)
    rc = optkit(["tune", printed, "--model", "lightningcli_project.Backboned", "--data", "lightningcli_project.Data",
                 "--search", "adamw", "--trials", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: finetuning:") and "--cli" in err, err
    rc = optkit(["tune", printed, "--search", "adamw", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "model.class_path" in err and "--cli" in err, err
    assert not (tmp_path / "out" / "Backboned").exists()


def test_ckpt_path_cannot_be_tuned_and_is_named(tmp_path, capsys):
    printed = yaml.safe_load(Path(_printed_config(tmp_path, capsys)).read_text())
    printed["ckpt_path"] = str(tmp_path / "some.ckpt")
    path = tmp_path / "with_ckpt.yaml"
    path.write_text(yaml.safe_dump(printed))
    rc = optkit(["tune", str(path), "--cli", PROJECT_CLI, "--search", "adamw", "--out", str(tmp_path / "out")])
    assert rc == 2 and "error: ckpt_path:" in capsys.readouterr().err


def test_fit_and_lr_find_take_the_printed_config_too(tmp_path, capsys):
    printed = _printed_config(tmp_path, capsys)
    project.RUNS.clear()
    rc = optkit(["fit", printed, "--cli", PROJECT_CLI, "--max-epochs", "1", "--log-dir", str(tmp_path / "tb"), "-q",
                 "--set", "optimizer.lr=0.05"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "val_loss:" in out.out and "trainer.logger" in out.out  # the YAML's CSVLogger gives way, and says so
    run = project.RUNS[-1]
    assert run["backbone_frozen"] and not run["backbone_moved"] and run["optim"]["optimizer"]["lr"] == 0.05
    assert {"BackboneFinetuning", "EpochCounter"} <= set(run["callbacks"])
    project.TRAINABLE.clear()
    rc = optkit(["lr-find", printed, "--cli", PROJECT_CLI, "--num-steps", "12", "--out", str(tmp_path / "lr.png"),
                 "--log-dir", ""])
    out = capsys.readouterr()
    assert rc in (0, 1) and "Traceback" not in out.err, out.err  # 1: no suggestion on 12 steps is a valid answer
    assert "ModelCheckpoint" in out.out and "left out" in out.out  # said, not silently dropped
    assert project.TRAINABLE == [8 * 3 + 3], "the finetuning section froze the backbone for the range test too"
    assert (tmp_path / "lr.png").is_file()


def test_the_cli_as_a_lightningcli_subclass_and_fit_resumes_from_ckpt_path(tmp_path, capsys):
    printed = _printed_config(tmp_path, capsys)
    project.RUNS.clear()
    rc = optkit(["fit", printed, "--cli", "lightningcli_project.FixedProjectCLI", "--max-epochs", "1",
                 "--log-dir", str(tmp_path / "tb"), "-q"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    ckpt = re.search(r"^checkpoint: (.+)$", out.out, re.M).group(1)
    assert project.RUNS[-1]["backbone_frozen"]
    data = yaml.safe_load(Path(printed).read_text())
    data["ckpt_path"] = ckpt  # optkit fit honours ckpt_path: the run resumes after epoch 1 and trains epoch 2
    (tmp_path / "resume.yaml").write_text(yaml.safe_dump(data))
    rc = optkit(["fit", str(tmp_path / "resume.yaml"), "--cli", PROJECT_CLI, "--max-epochs", "2",
                 "--log-dir", str(tmp_path / "tb"), "-q"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert re.search(r"^checkpoint: .*best-epoch=1\.ckpt$", out.out, re.M), out.out
    assert project.RUNS[-1]["steps"] == (6, 12), project.RUNS[-1]  # 48 samples / 8 = 6 steps per epoch
