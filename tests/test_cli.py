"""The optkit command, run in-process through ``main([...])``: real Trainer, real TensorBoard files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_optkit.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows(text: str) -> dict[str, tuple[float, str, float]]:
    """``group -> (peak, warm-up end, final)`` from the table ``optkit schedule`` prints."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^(lr-\S+)\s+(\S+)\s+(step \d+|none)\s+(\S+)$", line)
        if m:
            rows[m.group(1)] = (float(m.group(2)), m.group(3), float(m.group(4)))
    return rows


def test_fit_digits_logs_to_tensorboard(tmp_path, capsys):
    rc = main(["fit", "--example", "digits", "--max-epochs", "2", "--log-dir", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    acc = re.search(r"^val_acc: (\d\.\d{4})$", out, re.M)
    assert acc and 0.5 < float(acc.group(1)) <= 1.0  # two epochs of the preset already get most digits right
    assert f"tensorboard --logdir {tmp_path}" in out

    events = sorted(tmp_path.rglob("events.out.tfevents.*"))
    assert events, list(tmp_path.rglob("*"))
    ea = EventAccumulator(str(events[0].parent))
    ea.Reload()
    tags = ea.Tags()["scalars"]
    assert "val_acc" in tags and "val_loss" in tags and "train_loss" in tags
    assert [e.step for e in ea.Scalars("val_acc")] == [22, 45]
    assert ea.Scalars("val_acc")[-1].value == pytest.approx(float(acc.group(1)), abs=1e-4)
    lr_tags = [t for t in tags if t.startswith("lr-AdamW")]
    assert lr_tags, tags
    lrs = [e.value for e in ea.Scalars(lr_tags[0])]
    assert len(lrs) == 46  # every optimizer step of 2 epochs x 23 batches
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(3e-3) and lrs[-1] == pytest.approx(3e-5)

    # `optkit schedule` over the same run draws what the Trainer actually used
    png = tmp_path / "lr.png"
    assert main(["schedule", "--example", "digits", "--epochs", "2", "--out", str(png)]) == 0
    peak, warm_end, final = _rows(capsys.readouterr().out)[lr_tags[0]]
    assert peak == pytest.approx(max(lrs), rel=1e-3) and final == pytest.approx(lrs[-1], rel=1e-3)
    assert warm_end == f"step {lrs.index(max(lrs))}"


def test_fit_is_deterministic_for_a_seed(tmp_path, capsys):
    outs = []
    for _ in range(2):
        assert main(["fit", "--example", "digits", "--max-epochs", "1", "--seed", "3", "--log-dir", str(tmp_path),
                     "-q", "--set", "scheduler.warmup=5"]) == 0
        outs.append(re.findall(r"^val_\w+: .*$", capsys.readouterr().out, re.M))
    assert outs[0] == outs[1] and len(outs[0]) == 2


def test_schedule_writes_png_and_prints_peak_warmup_final(tmp_path, capsys):
    out = tmp_path / "plots" / "lr.png"
    assert main(["schedule", "--example", "digits", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert "peak LR" in text and "warm-up ends" in text and "final LR" in text
    rows = _rows(text)
    assert set(rows) == {"lr-AdamW/default", "lr-AdamW/default/no_decay"}
    assert rows["lr-AdamW/default"] == (3e-3, "step 23", 3e-5)  # 10% of 10 epochs x 23 steps; 1% floor


def test_schedule_without_a_model_draws_each_rule(tmp_path, capsys):
    out = tmp_path / "ft.png"
    rc = main(["schedule", str(CONFIGS / "finetune_layer_decay.yaml"), "--epochs", "5", "--steps-per-epoch", "20",
               "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and out.read_bytes()[:8] == PNG_MAGIC
    rows = _rows(text)
    assert rows["lr-AdamW/default"] == (1e-3, "step 10", 0.0)
    assert rows["lr-AdamW/backbone"][0] == pytest.approx(5e-4)
    assert "layer_decay" in text  # says it cannot be drawn without the model


def test_schedule_onecycle_and_plateau(tmp_path, capsys):
    assert main(["schedule", str(CONFIGS / "sgd_onecycle.yaml"), "--steps", "100",
                 "--out", str(tmp_path / "a.png")]) == 0
    peak, warm_end, final = _rows(capsys.readouterr().out)["lr-SGD/default"]
    assert peak == pytest.approx(0.1) and warm_end == "step 24" and final < 1e-5

    assert main(["schedule", str(CONFIGS / "adam_plateau.yaml"), "--epochs", "12", "--steps-per-epoch", "10",
                 "--out", str(tmp_path / "b.png")]) == 0
    text = capsys.readouterr().out
    assert "constant metric" in text
    peak, warm_end, final = _rows(text)["lr-Adam/default"]
    # best after epoch 0, cut after 4 bad epochs (end of epoch 4), 1 epoch cooldown, cut after epoch 9
    assert (peak, warm_end) == (1e-3, "step 10") and final == pytest.approx(2.5e-4)


def test_bad_override_exits_2_with_the_key_path(tmp_path, capsys):
    rc = main(["fit", "--example", "digits", "--set", "optimizer.lr=-1", "--log-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: optimizer.lr:") and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # failed before any Trainer or logger existed


def test_config_errors_name_the_key_and_suggest(tmp_path, capsys):
    rc = main(["schedule", "--example", "digits", "--set", "scheduler.name=cosin", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: scheduler.name:") and "Did you mean" in err

    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer: {name: adamw, lr: 1.0e-3}\nschedulr: {name: constant}\n")
    assert main(["schedule", str(bad), "--steps", "10", "--out", str(tmp_path / "y.png")]) == 2
    assert "schedulr" in capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["schedule", str(CONFIGS / "adam_plateau.yaml"), "--steps", "50"]) == 2
    assert "--steps-per-epoch" in capsys.readouterr().err
    assert main(["fit", "--example", "digits", "--model", "x.Y"]) == 2
    assert main(["fit", str(CONFIGS / "digits.yaml"), "--model", "no_such_module.Net", "--data", "x.Y"]) == 2
    assert "no_such_module" in capsys.readouterr().err
    assert main(["fit", "--example", "digits", "--data-args", "[1]"]) == 2
    assert main(["fit", "--max-epochs", "0"]) == 2


def test_help(capsys):
    assert main(["--help"]) == 0
    assert "fit" in capsys.readouterr().out
    for command in ("fit", "schedule"):
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "--example" in text and "--set" in text and "examples:" in text
    assert main([]) == 2


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["fit", "--help"], ["schedule", "--help"]])
def test_version_and_help_import_no_training_stack(argv):
    """``optkit --version``/``--help`` start fast: no torch, Lightning or Optuna in a fresh process."""
    import subprocess
    import sys

    code = ("import sys, contextlib, io\n"
            "import lightning_optkit.cli as cli\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            f"    rc = cli.main({argv!r})\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'optuna'))\n"
            "print(rc, len(out.getvalue()) > 0, heavy)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0 True []", done.stdout


def test_help_lists_every_command_and_the_lazy_ones_still_parse(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("fit", "schedule", "lr-find", "tune"):
        assert command in text
    assert main(["tune", "--help"]) == 0 and "--search" in capsys.readouterr().out
    assert main(["lr-find", "--help"]) == 0 and "--num-steps" in capsys.readouterr().out
    assert main(["tune", "--sampler", "tpee", "--example", "digits"]) == 2
    assert "Did you mean 'tpe'" in capsys.readouterr().err


BACKBONE = '{"hidden": 6, "backbone": {"class_path": "torch.nn.Sequential", "init_args": {"args": []}}}'
LINEAR = ('{"hidden": 6, "backbone": {"class_path": "torch.nn.Linear", '
          '"init_args": {"in_features": 4, "out_features": 6}}}')


def test_model_args_build_class_path_objects(tmp_path, capsys):
    """A module taking an nn.Module argument (Hydra style): --model-args gives it as class_path/init_args."""
    import lightningcli_project as project

    project.RUNS.clear()
    rc = main(["fit", str(CONFIGS / "digits.yaml"), "--model", "lightningcli_project.Backboned", "--data",
               "lightningcli_project.Data", "--model-args", LINEAR, "--data-args", '{"batch_size": 16}',
               "--max-epochs", "1", "--accelerator", "cpu", "--log-dir", str(tmp_path), "-q"])
    assert rc == 0, capsys.readouterr().err
    run = project.RUNS[-1]
    assert run["backbone"] == "Linear" and run["backbone_params"] == 4 * 6 + 6 and run["backbone_moved"]
    rc = main(["fit", str(CONFIGS / "digits.yaml"), "--model", "lightningcli_project.Backboned", "--data",
               "lightningcli_project.Data", "--model-args", LINEAR.replace("torch.nn.Linear", "torch.nn.Lineer"),
               "--log-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --model-args.backbone.class_path: got 'torch.nn.Lineer'"), err
