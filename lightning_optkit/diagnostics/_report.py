"""The report folder of ``optkit diagnose``: a Markdown summary readable without the code, plus figures.

:class:`DiagnoseReport` collects verdicts (one line each, with a remedy) and sections (Markdown
bodies) as the analyses finish, and writes ``report.md`` atomically. Figures are drawn with the Agg
canvas directly (no pyplot state, no display).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._internal.io import atomic_write_bytes, atomic_write_figure

__all__ = ["CAPACITY_REMEDIES", "CONVERGENCE_REMEDIES", "DiagnoseReport", "plot_sharpness_history"]

CAPACITY_REMEDIES = {
    "overfitting": "regularize (weight decay, dropout, augmentation), stop early on the validation metric, "
                   "get more data or use a smaller model",
    "underfitting": "add capacity (wider/deeper model), train longer or at a higher learning rate, lower the "
                    "regularization, and check that the inputs carry the signal",
    "good fit": "nothing to change for capacity",
    "inconclusive": "watch the train/validation gap over a longer run; the thresholds are the guide's "
                    "(train > 0.9 and validation < 0.7: overfitting; both < 0.7: underfitting)",
}
CONVERGENCE_REMEDIES = {
    "converging fast": "train longer: the loss is still falling quickly",
    "converging slowly": "most of the progress is made; a longer decay of the learning rate gains a little more",
    "converged": "more epochs at this learning rate will not help; change the model, data or schedule instead",
    "stalled": "the loss barely moved from its start: raise the learning rate (optkit lr-find), check that "
               "the trained parameters reach the optimizer and that labels match inputs",
    "worsening": "lower the learning rate or lengthen the warm-up; add gradient clipping",
}


@dataclass
class DiagnoseReport:
    """What ``optkit diagnose`` found, written as ``report.md`` in ``folder``.

    Example:
        >>> import tempfile
        >>> report = DiagnoseReport(Path(tempfile.mkdtemp()), "digits", "optkit diagnose --example digits")
        >>> report.verdict("Capacity", "good fit", "train 0.99, validation 0.97", "nothing to change")
        >>> report.section("Notes", "All good.")
        >>> "| Capacity | **good fit**" in report.markdown()
        True
    """

    folder: Path
    name: str
    command: str
    verdicts: list[tuple[str, str, str, str]] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)
    timings: list[tuple[str, float]] = field(default_factory=list)
    files: list[tuple[str, str]] = field(default_factory=list)

    def verdict(self, topic: str, verdict: str, evidence: str, remedy: str) -> None:
        """One row of the verdict table."""
        self.verdicts.append((topic, verdict, evidence, remedy))

    def section(self, title: str, body: str) -> None:
        """A Markdown section after the verdicts."""
        self.sections.append((title, body))

    def file(self, name: str, what: str) -> None:
        """List a file written into the folder."""
        self.files.append((name, what))

    def markdown(self) -> str:
        """The whole report as Markdown."""
        out = [f"# Diagnosis of `{self.name}`", "", f"Command: `{self.command}`", ""]
        out += ["## Verdicts", "", "| topic | verdict | evidence | what to do |", "|---|---|---|---|"]
        for topic, verdict, evidence, remedy in self.verdicts:
            out.append(f"| {topic} | **{verdict}** | {_cell(evidence)} | {_cell(remedy)} |")
        if not self.verdicts:
            out.append("| - | no analysis ran | | |")
        for title, body in self.sections:
            out += ["", f"## {title}", "", body.rstrip()]
        if self.timings:
            out += ["", "## Cost", "", "| step | seconds |", "|---|---|"]
            out += [f"| {step} | {seconds:.1f} |" for step, seconds in self.timings]
        if self.files:
            out += ["", "## Files", ""] + [f"- `{name}`: {what}" for name, what in self.files]
        return "\n".join(out) + "\n"

    def write(self) -> Path:
        """Write ``report.md`` (atomically) and return its path."""
        path = self.folder / "report.md"
        atomic_write_bytes(path, self.markdown().encode("utf-8"))
        return path


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def plot_sharpness_history(history: list[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """PNG of the monitored top eigenvalue (preconditioned when the edge is Adam's) and the edge per check."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    steps = [h["step"] for h in history]
    raw = [h["lambda_max"] for h in history]
    ax.plot(steps, raw, marker="o", label="lambda_max(H)")
    pre = [(s, h["lambda_max_preconditioned"]) for s, h in zip(steps, history) if h.get("lambda_max_preconditioned")]
    if pre:
        ax.plot([s for s, _ in pre], [v for _, v in pre], marker="s", label="lambda_max(P^-1 H)")
    edge = [(s, h["edge"]) for s, h in zip(steps, history) if h.get("edge")]
    if edge:
        ax.plot([s for s, _ in edge], [v for _, v in edge], linestyle="--", color="red",
                label=f"stability edge ({history[-1].get('edge_kind')})")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("eigenvalue")
    ax.set_title("sharpness during training")
    ax.legend(fontsize=8)
    atomic_write_figure(path, fig)
