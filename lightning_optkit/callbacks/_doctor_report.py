"""The TrainingDoctor's report: the findings and verdicts as a console table, a Markdown table (for
TensorBoard) and the JSON document written to the log dir. Pure functions of the findings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from ._doctor_codes import Diagnosis
from ._verdicts import Capacity, Convergence

__all__ = ["markdown", "report_json", "table", "verdict_lines"]

_OWNER = "TrainingDoctor"


def verdict_lines(capacity: Capacity | None, convergence: Convergence | None) -> list[str]:
    """One ``name: verdict (why)`` line per verdict that was reached."""
    lines = []
    if capacity is not None:
        lines.append(f"capacity: {capacity.verdict} ({capacity.message})")
    if convergence is not None:
        lines.append(f"convergence: {convergence.state} ({convergence.message})")
    return lines


def table(diagnoses: Sequence[Diagnosis], verdicts: Sequence[str]) -> str:
    """The findings as a plain-text table, remedies under each row, then the verdict lines.

    Example:
        >>> print(table([], ["convergence: converged (flat)"]))
        TrainingDoctor: no problems found.
        convergence: converged (flat)
    """
    rows = [("code", "severity", "steps", "evidence (-> remedy)", "remedy")]
    for d in diagnoses:
        rows.append((d.code, d.severity, f"{d.first_step}-{d.last_step}", d.message, d.remedy))
    if len(rows) == 1:
        return "\n".join([f"{_OWNER}: no problems found.", *verdicts])
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{_OWNER}: {len(rows) - 1} finding(s)"]
    for r in rows:
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
        if r is not rows[0]:
            lines.append(" " * (sum(widths) + 6) + "-> " + r[4])
    return "\n".join(lines + list(verdicts))


def markdown(diagnoses: Sequence[Diagnosis], verdicts: Sequence[str]) -> str:
    """The findings as a Markdown table, then the verdicts as a bullet list (what goes to TensorBoard)."""
    bullets = [f"- **{line.split(':', 1)[0]}**:{line.split(':', 1)[1]}" for line in verdicts]
    if not diagnoses:
        return "\n\n".join([f"{_OWNER}: no problems found.", *(["\n".join(bullets)] if bullets else [])])
    lines = ["| code | severity | steps | evidence | remedy |", "|---|---|---|---|---|"]
    for d in diagnoses:
        lines.append(f"| {d.code} | {d.severity} | {d.first_step}-{d.last_step} | {d.message} | {d.remedy} |")
    return "\n".join(lines) + ("\n\n" + "\n".join(bullets) if bullets else "")


def report_json(diagnoses: Sequence[Diagnosis], optimizer_steps: int, planned_steps: int | None,
                capacity: Capacity | None, convergence: Convergence | None) -> dict[str, Any]:
    """The JSON document of the report (``doctor.json``)."""
    return {
        "callback": _OWNER,
        "optimizer_steps": optimizer_steps,
        "planned_steps": planned_steps,
        "diagnoses": [asdict(d) for d in diagnoses],
        "codes": [d.code for d in diagnoses],
        "capacity": asdict(capacity) if capacity is not None else None,
        "convergence": asdict(convergence) if convergence is not None else None,
    }
