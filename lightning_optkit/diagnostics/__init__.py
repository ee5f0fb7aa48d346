"""Diagnostics: suspect labels, Hessian sharpness probes and the callbacks that run them during training.

* Suspect labels: :func:`label_issues_from_probs` ranks samples from out-of-sample probabilities
  (confident learning, Northcutt et al. 2021, or the simple confident-wrong rule);
  :func:`find_label_issues` produces those probabilities by K-fold cross-fitting with Lightning;
  :class:`LabelIssueFinder` is the cheap in-run screen on the validation set.
* Sharpness: :func:`hessian_eigenvalues` (Lanczos or power iteration on Hessian-vector products),
  :func:`hessian_trace` (Hutchinson) and :class:`SharpnessMonitor`, which compares the top
  eigenvalue with the optimizer's stability edge during training.
* The guide's random-perturbation probe: :func:`perturbation_sharpness` (loss std / mean under
  weight noise).
* Landscape: :func:`loss_landscape` along filter-normalized random directions (Li et al. 2018),
  with ``.plot()``.
* Result types: :class:`LabelIssues`, :class:`HessianEigenvalues`, :class:`HessianTrace`,
  :class:`PerturbationResult`, :class:`LossLandscape`.
* ``optkit diagnose`` runs these analyses (and the doctor's capacity and convergence verdicts) on a
  model and writes one report folder.

Every probe restores the model's parameters, buffers, train/eval modes and the RNG states exactly.
Names are imported on first use, so ``import lightning_optkit.diagnostics`` loads nothing heavy.

Example:
    >>> import numpy as np
    >>> from lightning_optkit.diagnostics import label_issues_from_probs
    >>> probs = np.array([[0.95, 0.05], [0.97, 0.03], [0.1, 0.9], [0.2, 0.8]])
    >>> label_issues_from_probs(probs, [0, 1, 1, 1], method="confident_wrong").indices.tolist()
    [1]
    >>> from lightning_optkit.diagnostics import LabelIssues, perturbation_sharpness
    >>> perturbation_sharpness.__name__, LabelIssues.__name__
    ('perturbation_sharpness', 'LabelIssues')
"""

from __future__ import annotations

from .._internal.lazy import lazy_exports

_MODULES = {
    "label_issues_from_probs": "._label_issues",
    "find_label_issues": "._cross_fit",
    "LabelIssueFinder": "._label_callback",
    "LabelIssues": "._label_issues",
    "hessian_eigenvalues": "._hessian",
    "hessian_trace": "._hessian",
    "HessianEigenvalues": "._hessian",
    "HessianTrace": "._hessian",
    "perturbation_sharpness": "._perturb",
    "PerturbationResult": "._perturb",
    "loss_landscape": "._landscape",
    "LossLandscape": "._landscape",
    "SharpnessMonitor": "._sharpness_monitor",
}

__all__ = sorted(_MODULES)


__getattr__, __dir__ = lazy_exports(__name__, _MODULES, globals())
