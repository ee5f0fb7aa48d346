"""``optkit diagnose`` end to end: the digits example with every analysis (small settings), and its errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_optkit.cli import main


def test_diagnose_digits_writes_a_readable_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    status = main(["diagnose", "--example", "digits", "--labels", "--sharpness", "--capacity", "--landscape",
                   "--max-epochs", "3", "--folds", "2", "--landscape-dims", "1", "--landscape-steps", "5",
                   "--out", str(out)])
    assert status == 0
    captured = capsys.readouterr()
    for step in ("fitting digits for 3 epochs", "cross-fitting 2 fresh models", "loss landscape (1-D, 5 points)"):
        assert f"[diagnose] {step}" in captured.err  # one progress line per long step
    assert f"report: {out / 'report.md'}" in captured.out
    text = (out / "report.md").read_text()
    for topic in ("| Capacity | **", "| Convergence | **", "| Sharpness | **", "| Labels | **"):
        assert topic in text
    assert "## Suspect labels" in text and "## Loss landscape" in text and "![landscape](landscape.png)" in text
    assert "--example digits" in text.splitlines()[2]  # the command that reproduces it
    for name in ("label_issues.csv", "label_issues.png", "sharpness.png", "landscape.png", "doctor.json"):
        assert (out / name).stat().st_size > 0, name
        assert f"`{name}`" in text
    rows = list(csv.DictReader((out / "label_issues.csv").open()))
    assert all({"rank", "index", "given_label", "predicted_label"} <= set(r) for r in rows)
    assert f"{len(rows)} suspect label(s)" in text
    doctor = json.loads((out / "doctor.json").read_text())
    assert doctor["capacity"]["metric"] == "accuracy" and doctor["capacity"]["verdict"] in text
    assert doctor["convergence"]["state"] in text
    assert (out / "sharpness.png").read_bytes()[:4] == b"\x89PNG"


def test_diagnose_errors_are_one_line_with_status_2(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "lightning_optkit.cli"]
    proc = subprocess.run([*run, "diagnose", "--example", "digitz", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "error: example" in proc.stderr and "digits" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert main(["diagnose", "--capacity"]) == 2  # neither an example nor a model
    help_proc = subprocess.run([*run, "diagnose", "--help"], capture_output=True, text=True, timeout=120)
    assert help_proc.returncode == 0 and "--labels" in help_proc.stdout and "--landscape" in help_proc.stdout


def test_report_docstring_example_runs() -> None:
    import doctest

    from lightning_optkit.diagnostics import _report

    result = doctest.testmod(_report)
    assert result.attempted > 0 and result.failed == 0


def test_diagnose_your_own_model_and_datamodule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import lightningcli_project as project

    configs = Path(__file__).resolve().parents[1] / "configs"
    linear = ('{"hidden": 6, "backbone": {"class_path": "torch.nn.Linear", '
              '"init_args": {"in_features": 4, "out_features": 6}}}')
    project.RUNS.clear()
    status = main(["diagnose", str(configs / "digits.yaml"), "--model", "lightningcli_project.Backboned",
                   "--data", "lightningcli_project.Data", "--model-args", linear, "--capacity", "--labels",
                   "--folds", "2", "--max-epochs", "2", "--accelerator", "cpu", "--out", str(tmp_path)])
    assert status == 0, capsys.readouterr().err
    assert len(project.RUNS) == 3  # the diagnosed fit and one fresh model per fold
    text = (tmp_path / "report.md").read_text()
    assert "# Diagnosis of `Backboned`" in text and "| Capacity | **" in text and "| Labels | **" in text
    assert main(["diagnose", str(configs / "digits.yaml"), "--model", "lightningcli_project.Backboned",
                 "--capacity"]) == 2  # --model without --data
