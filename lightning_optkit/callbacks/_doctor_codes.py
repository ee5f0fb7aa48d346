"""The TrainingDoctor's vocabulary: the diagnosis codes, their remedies, the rule thresholds and the
:class:`Diagnosis` record every rule produces.

Codes are stable (new ones are only ever added), so scripts can match on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["CODES", "DEFAULT_THRESHOLDS", "LOSS_CAPACITY_THRESHOLDS", "REMEDIES", "Diagnosis", "Finding"]

#: Every diagnosis code: (severity, title). Codes are stable; new ones are only ever added.
CODES: dict[str, tuple[str, str]] = {
    "NONFINITE_LOSS": ("error", "the loss became NaN or infinite"),
    "LOSS_NOT_DECREASING": ("warning", "the loss does not decrease after the warm-up"),
    "LOSS_DIVERGING": ("error", "the loss is rising (diverging)"),
    "LOSS_OSCILLATING": ("warning", "the loss oscillates without making progress"),
    "OVERFITTING": ("warning", "the validation loss rises while the training loss falls"),
    "EXPLODING_GRADIENTS": ("error", "gradients explode"),
    "VANISHING_GRADIENTS": ("warning", "gradients vanish in some layer groups"),
    "ZERO_GRADIENTS": ("warning", "some trainable parameters never receive a gradient"),
    "LR_NEVER_DECAYS": ("warning", "the learning rate never decays by the end of training"),
    "WARMUP_TOO_LONG": ("warning", "the warm-up takes most of training"),
    "SCHEDULE_INTERVAL_MISMATCH": ("warning", "a schedule is stepped in the wrong unit (step vs epoch)"),
    "PLATEAU_NEVER_FIRES": ("warning", "the plateau scheduler never reduces the learning rate"),
    "UNDERFITTING": ("warning", "training and validation are both poor and no longer improving"),
    "ABOVE_STABILITY_EDGE": ("warning", "the sharpness is above the optimizer's stability edge"),
}

#: Thresholds of the rules; override any of them with ``TrainingDoctor(thresholds={...})``.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "min_steps": 30,             # post-warm-up steps before loss-trend rules speak
    "not_decreasing": 0.05,      # relative decrease below which the loss "does not decrease"
    "diverging_ratio": 2.0,      # end / best running median for "diverging"
    "oscillation": 0.3,          # 10-90% spread of the smoothed loss, over the initial loss, for "oscillating"
    "overfit_rise": 0.10,        # relative rise of the validation loss above its minimum
    "overfit_train_fall": 0.05,  # relative fall of the training loss over the same span
    "explode_depth": 50.0,       # input-side / output-side gradient norm for "exploding"
    "explode_growth": 1e3,       # late / early total gradient norm for "exploding"
    "vanish_depth": 1e-4,        # input-side / output-side gradient norm for "vanishing"
    "zero_grad_steps": 20,       # optimizer steps without a gradient before "zero gradients"
    "lr_decay": 0.9,             # final / peak LR above which "never decays"
    "warmup_fraction": 0.5,      # warm-up / training above which "too long"
    "capacity_high": 0.9,        # train score above which a low validation score means "overfitting"
    "capacity_low": 0.7,         # score below which train / validation count as "poor"
    "capacity_fit_gap": 0.05,    # |train - validation| score gap below which the model "fits"
    "convergence_window": 0.2,   # fraction of the recorded steps compared with the same span before
    "converging_fast": 0.1,      # relative improvement over the window for "converging fast"
    "converged": 0.01,           # relative improvement below which the loss has "converged"
}
#: Optional thresholds of the loss-score capacity verdict (``1 - loss / initial loss``), unset by default:
#: a converged regression at its noise floor keeps much of its initial loss, so the accuracy
#: thresholds mean nothing there. Unset, that verdict is information only (no UNDERFITTING code);
#: set any of them to act on it (the others then default to their ``capacity_*`` counterparts).
LOSS_CAPACITY_THRESHOLDS: tuple[str, ...] = ("capacity_loss_high", "capacity_loss_low", "capacity_loss_fit_gap")

REMEDIES: dict[str, str] = {
    "NONFINITE_LOSS": "lower the learning rate; add gradient clipping (AutoClip, or Trainer(gradient_clip_val=1.0)); "
                      "check the data for NaN/inf and bad labels; with fp16 AMP try bf16; NonFiniteGuard skips or "
                      "rolls back such steps",
    "LOSS_NOT_DECREASING": "raise the learning rate (run find_lr / LRFinder); check that the parameters you train have "
                           "requires_grad=True and reach the optimizer; check labels and inputs (shuffled or "
                           "mismatched labels, unnormalized inputs, a detached graph)",
    "LOSS_DIVERGING": "lower the learning rate (or lengthen the warm-up); add gradient clipping (AutoClip); use a "
                      "larger batch",
    "LOSS_OSCILLATING": "lower the learning rate; use a larger batch (or gradient accumulation); add momentum "
                        "damping / Adam's beta2 closer to 1",
    "OVERFITTING": "regularize (weight decay, dropout, data augmentation), stop early (EarlyStopping on the "
                   "validation loss, keep the best checkpoint), get more data or use a smaller model",
    "EXPLODING_GRADIENTS": "add normalization layers or residual connections, use a smaller initialization, clip "
                           "gradients (AutoClip), lower the learning rate",
    "VANISHING_GRADIENTS": "use ReLU/GELU instead of sigmoid/tanh, add residual connections and normalization, use "
                           "He/Xavier initialization, or make the network shallower",
    "ZERO_GRADIENTS": "parameters not used in forward (remove them, or freeze them with requires_grad=False), a "
                      "detached graph (.detach(), torch.no_grad() in forward), or dead ReLUs (lower LR, LeakyReLU/GELU)",
    "LR_NEVER_DECAYS": "make the schedule's length match training (T_max / total_steps = the run's optimizer steps), "
                       "or let an optim: scheduler block resolve it from the trainer",
    "WARMUP_TOO_LONG": "shorten the warm-up to 1-10% of training (warmup: 5%)",
    "SCHEDULE_INTERVAL_MISMATCH": "step the scheduler in the unit its length is in: interval='step' for lengths in "
                                  "optimizer steps, interval='epoch' for lengths in epochs",
    "PLATEAU_NEVER_FIRES": "lower patience (or threshold) so it can fire within the run, check mode ('min' for a "
                           "loss) and that the monitored metric is logged, or use a fixed schedule",
    "UNDERFITTING": "add capacity (wider/deeper model, fewer constraints: less weight decay, dropout or "
                    "augmentation), train longer or at a higher learning rate, and check the features carry the signal",
    "ABOVE_STABILITY_EDGE": "lower the learning rate below the edge (for SGD 2 / lambda_max; see the evidence), or "
                            "lengthen the warm-up so sharpness adapts; add gradient clipping if the loss spikes",
}


@dataclass
class Diagnosis:
    """One finding: a stable ``code``, its ``severity``, the step range, the evidence and a remedy.

    Example:
        >>> d = Diagnosis("ZERO_GRADIENTS", "warning", "some trainable parameters never receive a gradient",
        ...               0, 99, {"count": 2}, "2 of 8 parameters had no gradient", "remove unused layers")
        >>> d.line()
        '[ZERO_GRADIENTS] some trainable parameters never receive a gradient (steps 0-99): 2 of 8 parameters had no gradient. Remedy: remove unused layers.'
    """

    code: str
    severity: str
    title: str
    first_step: int
    last_step: int
    evidence: dict[str, Any]
    message: str
    remedy: str

    def line(self) -> str:
        return f"[{self.code}] {self.title} (steps {self.first_step}-{self.last_step}): {self.message}. " \
               f"Remedy: {self.remedy}."


class Finding(NamedTuple):
    """What a rule found, before the doctor turns it into a :class:`Diagnosis` (severity, title, remedy).

    Example:
        >>> Finding("ZERO_GRADIENTS", 0, 99, {"count": 2}, "2 of 8 parameters had no gradient").diagnosis().severity
        'warning'
    """

    code: str
    first: int
    last: int
    evidence: dict[str, Any]
    message: str

    def diagnosis(self, first: int | None = None) -> Diagnosis:
        """The :class:`Diagnosis` of this finding, its code's severity, title and remedy filled in;
        ``first`` overrides the first step (an earlier finding of the same code)."""
        severity, title = CODES[self.code]
        return Diagnosis(self.code, severity, title, int(self.first if first is None else first), int(self.last),
                         self.evidence, self.message, REMEDIES[self.code])
