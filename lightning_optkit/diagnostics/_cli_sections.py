"""The analyses of ``optkit diagnose``, each adding its verdict, section and files to the report."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from .._internal.io import atomic_write_json
from ._report import CAPACITY_REMEDIES, CONVERGENCE_REMEDIES, plot_sharpness_history

__all__ = ["capacity_section", "labels_section", "landscape_section", "sharpness_section"]


@torch.no_grad()
def accuracy(model: Any, loader: Any) -> float | None:
    """Accuracy of ``model(x)`` on ``(x, y)`` batches in eval mode, or ``None`` when it is not a classifier."""
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for batch in loader:
            x, y = batch[0].to(model.device), batch[1].to(model.device)
            out = model(x)
            if out.ndim != 2 or y.ndim != 1 or y.dtype.is_floating_point:
                return None
            correct += int((out.argmax(1) == y).sum())
            total += int(y.numel())
    finally:
        model.train(was_training)
    return correct / total if total else None


def capacity_section(model: Any, data: Any, doctor: Any, report: Any, show_capacity: bool) -> None:
    """Capacity and convergence verdicts and the doctor's findings (accuracy measured after the fit)."""
    train_acc, val_acc = accuracy(model, data.train_dataloader()), accuracy(model, data.val_dataloader())
    if train_acc is not None and val_acc is not None:
        doctor.score_metrics = {"train_key": "train accuracy (end of fit, eval mode)",
                                "val_key": "validation accuracy", "train": train_acc, "val": val_acc}
    doctor.diagnose()
    atomic_write_json(report.folder / "doctor.json", doctor_payload(doctor), default=str)
    report.file("doctor.json", "the training doctor's findings, capacity verdict and convergence state")
    if show_capacity and doctor.capacity is not None:
        cap = doctor.capacity
        report.verdict("Capacity", cap.verdict, cap.message, CAPACITY_REMEDIES[cap.verdict])
    if show_capacity and doctor.convergence is not None:
        conv = doctor.convergence
        report.verdict("Convergence", conv.state, conv.message, CONVERGENCE_REMEDIES[conv.state])
    rows = ["| code | severity | steps | evidence | remedy |", "|---|---|---|---|---|"]
    rows += [f"| {d.code} | {d.severity} | {d.first_step}-{d.last_step} | {d.message} | {d.remedy} |"
             for d in doctor.diagnoses]
    body = "\n".join(rows) if doctor.diagnoses else "No problems found by the training doctor."
    report.section("Training doctor", body)


def sharpness_section(model: Any, data: Any, monitor: Any, report: Any, seed: int) -> None:
    """The eigenvalue history against the stability edge, its PNG, and the perturbation probe."""
    from ._perturb import perturbation_sharpness

    history = monitor.history
    if not history:
        return
    plot_sharpness_history(history, report.folder / "sharpness.png")
    report.file("sharpness.png", "top Hessian eigenvalue at each check and the optimizer's stability edge")
    last = history[-1]
    compared = last["lambda_max_preconditioned"] if last.get("lambda_max_preconditioned") else last["lambda_max"]
    ratio = last.get("ratio")
    evidence = (f"last check (step {last['step']}): sharpness {compared:.4g} vs edge "
                f"{last['edge']:.4g} ({last['edge_kind']}), ratio {ratio:.3g}" if ratio is not None and last.get("edge")
                else f"last check (step {last['step']}): lambda_max {last['lambda_max']:.4g}; no edge for this optimizer")
    above = sum(bool(h.get("above_edge")) for h in history)
    if monitor.flagged:
        report.verdict("Sharpness", "above the stability edge",
                       f"{above} of {len(history)} checks above, first at step {monitor.first_flag_step}; {evidence}",
                       "lower the learning rate below the edge or lengthen the warm-up; clip gradients")
    else:
        report.verdict("Sharpness", "below the stability edge", evidence, "nothing to change for stability")
    probe = perturbation_sharpness(model, data.train_dataloader(), model.loss_fn, sigma=0.01, samples=20, seed=seed)
    rows = ["| step | epoch | lambda_max(H) | rescaled (P^-1 H) | edge | ratio | above |", "|---|---|---|---|---|---|---|"]
    for h in history:
        pre = h.get("lambda_max_preconditioned")
        rows.append(f"| {h['step']} | {h['epoch']} | {h['lambda_max']:.4g} | {'' if pre is None else f'{pre:.4g}'} | "
                    f"{'' if h.get('edge') is None else format(h['edge'], '.4g')} | "
                    f"{'' if h.get('ratio') is None else format(h['ratio'], '.3g')} | {'yes' if h.get('above_edge') else ''} |")
    body = "\n".join(rows) + (
        "\n\nFor SGD the edge is 2/lr (heavy-ball momentum: (2 + 2 beta)/lr); for Adam the preconditioned "
        "sharpness is compared with (2 + 2 beta1)/((1 - beta1) lr). With parameter groups at different learning rates "
        "each direction is scaled by its group's lr / the largest (D), and lambda_max(D^1/2 H D^1/2) (Adam: D folded "
        "into P^-1) is compared with the edge at the largest lr. Above the edge, gradient descent on the local "
        f"quadratic model diverges along the top direction.\n\nRandom-perturbation probe at the end (relative "
        f"sigma {probe.sigma:g}, {probe.samples} samples): loss std / mean = {probe.ratio:.3g}, mean increase "
        f"{probe.increase:.3g} over the unperturbed {probe.base_loss:.4g}.\n\n![sharpness](sharpness.png)")
    report.section("Sharpness", body)


def landscape_section(model: Any, data: Any, report: Any, dims: int, steps: int, seed: int) -> None:
    """The loss around the trained weights along filter-normalized directions, as PNG and numbers."""
    from ._landscape import loss_landscape

    land = loss_landscape(model, data.train_dataloader(), model.loss_fn, dims=dims, steps=steps, seed=seed)
    land.plot(report.folder / "landscape.png", title=f"{report.name}: loss landscape ({dims}-D)")
    report.file("landscape.png", f"{dims}-D loss landscape around the trained weights (Li et al. 2018)")
    line = land.losses if dims == 1 else land.losses[:, steps // 2]
    edge = max(float(line[0]), float(line[-1]))
    report.section("Loss landscape", (
        f"Loss at the trained weights {land.base_loss:.4g}; along the first filter-normalized direction it reaches "
        f"{edge:.4g} at the ends (alpha = +-{land.alphas[-1]:g}, x{edge / max(land.base_loss, 1e-12):.3g}), "
        f"over {land.evaluations} evaluations in {land.seconds:.1f}s. A wide, flat basin generalizes better than "
        "a narrow one; compare runs (learning rates, batch sizes) on the same axes.\n\n![landscape](landscape.png)"))


def labels_section(build: Any, data: Any, report: Any, folds: int, epochs: int, seed: int, accelerator: str) -> None:
    """Suspect labels from cross-fitted probabilities: verdict, top of the ranking, CSV and image grid."""
    from ._cross_fit import find_label_issues

    dataset = data.train_dataloader().dataset
    issues = find_label_issues(build, dataset, folds=folds, seed=seed, batch_size=getattr(data, "batch_size", 64),
                               trainer_kwargs={"max_epochs": epochs, "accelerator": accelerator, "devices": 1})
    issues.to_csv(report.folder / "label_issues.csv")
    report.file("label_issues.csv", "every suspect sample: rank, index in the training set, given and predicted label")
    n = len(dataset)
    try:
        issues.plot_images(dataset, report.folder / "label_issues.png", max_images=32)
        report.file("label_issues.png", "the most suspect samples, titled given -> predicted")
        picture = "\n\n![suspect samples](label_issues.png)"
    except (ValueError, TypeError):
        picture = "\n\n(The samples are not images: no picture grid.)"
    share = 100.0 * len(issues) / max(n, 1)
    report.verdict("Labels", f"{len(issues)} suspect label(s)",
                   f"{len(issues)} of {n} training samples ({share:.1f}%) by {issues.method} on {folds}-fold "
                   "out-of-sample probabilities",
                   "inspect label_issues.csv / .png; relabel or drop the confirmed errors and retrain"
                   if len(issues) else "nothing to relabel")
    rows = ["| rank | index | given | predicted | self-confidence |", "|---|---|---|---|---|"]
    rows += [f"| {r['rank']} | {r['index']} | {r['given_label']} | {r['predicted_label']} | {r['self_confidence']:.3f} |"
             for r in issues.rows()[:15]]
    body = ("\n".join(rows) if len(issues) else "No sample was flagged.") + (
        f"\n\nCross-fitting trained {folds} fresh models ({epochs} epochs each) in {issues.info['seconds']:.1f}s; every "
        "sample was predicted by a model that never saw it. The in-run LabelIssueFinder callback is cheaper but "
        "scores the validation set with the model being trained." + picture)
    report.section("Suspect labels", body)


def doctor_payload(doctor: Any) -> dict[str, Any]:
    """The doctor's findings and verdicts as plain data."""
    return {"codes": doctor.codes, "diagnoses": [asdict(d) for d in doctor.diagnoses],
            "capacity": asdict(doctor.capacity) if doctor.capacity else None,
            "convergence": asdict(doctor.convergence) if doctor.convergence else None}
