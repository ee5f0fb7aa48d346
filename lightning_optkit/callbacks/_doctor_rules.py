"""The TrainingDoctor's rules: pure functions over what was recorded (a :class:`Series`, the validation
history, the schedule facts), each returning its :class:`Finding` (or ``None``) for the doctor to keep.

They need no Trainer, so they are tested on constructed series. Where one rule defers to another
finding (a stalled loss already explained by a gradient finding, say), the caller says so in an
argument; the order in which the doctor runs them is :meth:`TrainingDoctor._run_rules`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from .._internal.text import fmt
from ._doctor_codes import LOSS_CAPACITY_THRESHOLDS, Diagnosis, Finding
from ._doctor_recorder import Series
from ._doctor_schedule import ScheduleFacts
from ._verdicts import Capacity, Convergence, capacity_verdict, sharpness_summary

__all__ = [
    "capacity", "gradients", "loss_trends", "nonfinite", "overfitting", "schedules_at_end", "schedules_at_start",
    "score_key", "sharpness", "underfitting", "warmup_end", "zero_gradients",
]

#: One validation: (optimizer step, epoch, validation loss, median training loss since the last one).
Validation = tuple[int, int, float, float]


def warmup_end(lr: Sequence[float]) -> int:
    """Index into the series where the LR first reaches its peak, when it started well below it.

    Example:
        >>> warmup_end([0.0, 0.5, 1.0, 1.0])
        2
    """
    lr = [v for v in lr if math.isfinite(v)]
    if len(lr) < 2:
        return 0
    peak = max(lr)
    if peak <= 0 or lr[0] >= 0.5 * peak:
        return 0
    return next(i for i, v in enumerate(lr) if v >= 0.98 * peak)


def nonfinite(s: Series) -> Finding | None:
    """A non-finite loss, or a non-finite gradient with a finite loss here (under DDP: another rank's
    loss; or a backward op such as sqrt at 0)."""
    bad = [i for i, (v, g) in enumerate(zip(s.loss, s.gnorm)) if not (math.isfinite(v) and math.isfinite(g))]
    if not bad:
        return None
    i = bad[0]
    before = [v for v in s.loss[:i] if math.isfinite(v)]
    loss_bad = sum(not math.isfinite(s.loss[j]) for j in bad)
    ev = {"first_step": s.steps[i], "nonfinite_steps": len(bad) * s.stride, "nonfinite_loss_steps": loss_bad * s.stride,
          "lr_at_first": s.lr[i], "last_finite_loss": before[-1] if before else None,
          "grad_norm_before": s.gnorm[i - 1] if i > 0 else None}
    what = "the loss is non-finite" if not math.isfinite(s.loss[i]) else (
        "the gradient is non-finite although this rank's loss is finite (another rank's batch, or an op "
        "whose backward is not finite)")
    msg = f"{what} at step {s.steps[i]} (and {len(bad) * s.stride - 1} more steps) with lr={fmt(s.lr[i])}"
    if before:
        msg += f"; the last finite loss was {fmt(before[-1])}"
        first_loss = before[0]
        if before[-1] > 10 * abs(first_loss) + 1e-12:
            msg += f" (up from {fmt(first_loss)}: it diverged first)"
    return Finding("NONFINITE_LOSS", s.steps[i], s.steps[bad[-1]], ev, msg)


def loss_trends(s: Series, th: Mapping[str, float], warm: int, end: bool, explained: bool,
                ever_grad: Mapping[str, bool]) -> Finding | None:
    """Diverging (a sustained rise well above the best), oscillating (large swings of the smoothed
    loss without a trend) and, at the ``end``, not decreasing (no progress after the warm-up) unless a
    gradient finding already ``explained`` it.

    The per-step loss is smoothed by running medians over 5% of the post-warm-up steps (at least
    5), which removes the batch-to-batch noise that small batches have even when all is well.
    """
    skip = max(warm, len(s.loss) // 20)
    idx = [i for i in range(skip, len(s.loss)) if math.isfinite(s.loss[i])]
    if len(idx) < th["min_steps"] / s.stride:
        return None
    vals = [s.loss[i] for i in idx]
    n = len(vals)
    w = max(5, n // 20)
    hop = max(1, w // 2)
    starts = list(range(0, n - w + 1, hop))
    smooth = [statistics.median(vals[j:j + w]) for j in starts]
    head = [v for v in s.loss[:5] if math.isfinite(v)]
    initial = statistics.median(head) if head else smooth[0]
    start, final = smooth[0], smooth[-1]
    k_best = min(range(len(smooth)), key=smooth.__getitem__)
    best = smooth[k_best]
    trend = _spearman(vals[n // 2:])
    half = sorted(smooth[len(smooth) // 2:])
    amp = (half[int(0.9 * (len(half) - 1))] - half[int(0.1 * (len(half) - 1))]) / max(abs(initial), 1e-12)
    first, last = s.steps[idx[0]], s.steps[idx[-1]]
    best_step = s.steps[idx[starts[k_best]]]
    lr_now = s.lr[idx[-1]]
    if final - best > (th["diverging_ratio"] - 1.0) * abs(best) and trend > 0.5 and final > start:
        return Finding("LOSS_DIVERGING", best_step, last,
                       {"best_median": best, "best_step": best_step, "final_median": final, "start_median": start,
                        "trend": trend, "lr": lr_now},
                       f"the loss fell to a median of {fmt(best)} around step {best_step} and has been rising since, "
                       f"to {fmt(final)} (x{final / max(abs(best), 1e-12):.3g}) at lr={fmt(lr_now)}")
    if amp > th["oscillation"] and -0.5 < trend <= 0.5:
        return Finding("LOSS_OSCILLATING", s.steps[idx[n // 2]], last,
                       {"swing_over_initial": amp, "initial": initial, "final_median": final, "trend": trend,
                        "lr": lr_now},
                       f"over the second half the smoothed loss swings by {amp:.2f}x the initial loss "
                       f"({fmt(initial)}) without a downward trend (ends at {fmt(final)}), at lr={fmt(lr_now)}")
    if not end or explained:
        return None  # the gradient finding already explains a stalled loss
    ref = max(start, initial)
    drop = (ref - final) / max(abs(ref), 1e-12)
    if not drop < th["not_decreasing"]:
        return None
    frozen = [n for n, seen in ever_grad.items() if not seen]
    ev = {"initial_median": initial, "start_median": start, "final_median": final, "relative_drop": drop,
          "lr": lr_now, "warmup_steps": s.steps[warm] if warm else 0}
    msg = (f"after the warm-up the loss went from {fmt(start)} to {fmt(final)} "
           f"({drop * 100:.1f}% lower; {fmt(initial)} at the start) at lr={fmt(lr_now)}")
    if frozen:
        msg += f"; {len(frozen)} trainable parameters never got a gradient"
        ev["no_gradient"] = frozen[:10]
    return Finding("LOSS_NOT_DECREASING", first, last, ev, msg)


def gradients(s: Series, th: Mapping[str, float], warm: int, names: Sequence[str]) -> Finding | None:
    """Exploding gradients (the total norm grows by orders of magnitude, or the input side gets far larger
    gradients than the output side) or vanishing ones (the input side gets next to nothing)."""
    stop = next((i for i, v in enumerate(s.loss) if not math.isfinite(v)), len(s.loss))  # before any NaN
    rows = [(i, g) for i, g in enumerate(s.groups[:stop]) if i >= warm and len(g) == len(names)]
    if len(rows) < max(5, th["min_steps"] / 3 / s.stride):
        return None
    first, last = s.steps[rows[0][0]], s.steps[rows[-1][0]]
    # growth over time of the total norm
    norms = [s.gnorm[i] for i, _ in rows if math.isfinite(s.gnorm[i]) and s.gnorm[i] > 0]
    if len(norms) >= 10:
        q = max(3, len(norms) // 5)
        early, late = statistics.median(norms[:q]), statistics.median(norms[-q:])
        if late > th["explode_growth"] * early:
            return Finding("EXPLODING_GRADIENTS", first, last, {"early_median": early, "late_median": late},
                           f"the total gradient norm grew from a median of {fmt(early)} to {fmt(late)} "
                           f"(x{late / early:.3g})")
    # depth profile: median norm per group, input side vs output side
    med = []
    for j, name in enumerate(names):
        vals = [g[j] for _, g in rows if math.isfinite(g[j]) and g[j] > 0]
        if vals:
            med.append((name, statistics.median(vals)))
    if len(med) < 3:
        return None
    third = max(1, len(med) // 3)
    inp = statistics.median(v for _, v in med[:third])
    out = statistics.median(v for _, v in med[-third:])
    ratio = inp / max(out, 1e-30)
    ev = {"input_side": inp, "output_side": out, "ratio": ratio, "group_medians": {n: v for n, v in med}}
    if ratio > th["explode_depth"]:
        top = max(med, key=lambda t: t[1])
        return Finding("EXPLODING_GRADIENTS", first, last, ev,
                       f"input-side layer groups get x{ratio:.3g} larger gradients than the output side "
                       f"({fmt(inp)} vs {fmt(out)}; largest: {top[0]} at {fmt(top[1])})")
    if ratio < th["vanish_depth"]:
        low = min(med, key=lambda t: t[1])
        return Finding("VANISHING_GRADIENTS", first, last, ev,
                       f"input-side layer groups get x{ratio:.3g} the gradient of the output side "
                       f"({fmt(inp)} vs {fmt(out)}; smallest: {low[0]} at {fmt(low[1])})")
    return None


def zero_gradients(ever_grad: Mapping[str, bool], optimizer_steps: int, steps: Sequence[int],
                   th: Mapping[str, float]) -> Finding | None:
    """Trainable parameters that had no non-zero gradient in ``zero_grad_steps`` optimizer steps or more."""
    if optimizer_steps < th["zero_grad_steps"]:
        return None
    never = [n for n, seen in ever_grad.items() if not seen]
    if not never:
        return None
    shown = ", ".join(never[:5]) + (f" and {len(never) - 5} more" if len(never) > 5 else "")
    return Finding("ZERO_GRADIENTS", 0, steps[-1] if steps else 0,
                   {"parameters": never, "count": len(never), "trainable": len(ever_grad), "steps": optimizer_steps},
                   f"{len(never)} of {len(ever_grad)} trainable parameters had no non-zero gradient in "
                   f"{optimizer_steps} steps: {shown}")


def overfitting(val: Sequence[Validation], val_key: str | None, th: Mapping[str, float],
                old: Diagnosis | None) -> tuple[str, Finding | Diagnosis | None]:
    """The OVERFITTING rule, given the finding so far (``old``). Returns what to do with it:
    ``("drop", None)`` at a new validation minimum (the rise did not last), ``("add", finding)``,
    ``("replace", diagnosis)`` (an old rise that later validations no longer show) or ``("keep", None)``.
    """
    if len(val) < 3:
        return "keep", None
    values = [v for _, _, v, _ in val]
    i_min = min(range(len(values)), key=values.__getitem__)
    if i_min == len(values) - 1 and old is not None:
        return "drop", None  # a new validation minimum: whatever rise was seen before did not last
    if i_min < len(values) - 2:
        v_min, v_now = values[i_min], values[-1]
        rising = all(v > v_min for v in values[-2:]) and v_now > v_min + th["overfit_rise"] * abs(v_min) + 1e-12
        t_min, t_now = val[i_min][3], val[-1][3]
        falling = math.isfinite(t_min) and math.isfinite(t_now) and t_now < t_min - th["overfit_train_fall"] * abs(t_min)
        if rising and falling:
            return "add", Finding(
                "OVERFITTING", val[i_min][0], val[-1][0],
                {"val_key": val_key, "val_min": v_min, "val_min_epoch": val[i_min][1],
                 "val_now": v_now, "train_at_min": t_min, "train_now": t_now},
                f"{val_key} was lowest at {fmt(v_min)} (epoch {val[i_min][1]}) and is now {fmt(v_now)}, "
                f"while the training loss fell from {fmt(t_min)} to {fmt(t_now)}")
    passed = _overfitting_passed(old, val[-1], val_key)
    return ("keep", None) if passed is None else ("replace", passed)


def _overfitting_passed(old: Diagnosis | None, last: Validation, val_key: str | None) -> Diagnosis | None:
    """A rise diagnosed earlier that the later validations no longer show (but no new minimum either):
    keep it, saying so, with the last value (``None``: nothing to change)."""
    if old is None or ("val_peak" in old.evidence and old.evidence.get("val_now") == last[2]):
        return None
    ev = dict(old.evidence)
    ev.setdefault("val_peak", ev["val_now"])
    ev.setdefault("val_peak_step", old.last_step)
    _step, epoch, v_now, _t = last
    ev["val_now"] = v_now
    return replace(old, evidence=ev, message=(
        f"{val_key} rose from its lowest {fmt(ev['val_min'])} (epoch {ev['val_min_epoch']}) to "
        f"{fmt(ev['val_peak'])} at step {ev['val_peak_step']} while the training loss fell; it is now "
        f"{fmt(v_now)} (epoch {epoch}), so the rise did not last"))


def score_key(keys: Sequence[str], split: str) -> str | None:
    """The logged accuracy key of ``split`` (``train``/``val``), preferring the epoch value over ``*_step``.

    Example:
        >>> score_key(["train_acc_step", "train_acc", "val_loss"], "train")
        'train_acc'
    """
    found = [k for k in keys if split in k.lower() and "acc" in k.lower()]
    found.sort(key=lambda k: (k.endswith("_step"), len(k)))
    return found[0] if found else None


def capacity(score_metrics: Mapping[str, Any], capacity_keys: str | tuple[str, str], loss: Sequence[float],
             val: Sequence[Validation], val_key: str | None, th: Mapping[str, float]) -> Capacity | None:
    """The capacity verdict: on the logged scores when there are any, else on loss scores (information
    only unless a ``capacity_loss_*`` threshold is set)."""
    limits = {"high": th["capacity_high"], "low": th["capacity_low"], "fit_gap": th["capacity_fit_gap"]}
    sm = score_metrics
    if sm:
        metric = "accuracy" if capacity_keys == "auto" else "score"
        return capacity_verdict(sm["train"], sm["val"], metric=metric, train_key=sm["train_key"],
                                val_key=sm["val_key"], **limits)
    head = [v for v in loss[:5] if math.isfinite(v)]
    if not val or not head or not math.isfinite(val[-1][3]):
        return None
    initial = max(abs(statistics.median(head)), 1e-12)
    _, _, v_last, train = val[-1]
    acts = any(k in th for k in LOSS_CAPACITY_THRESHOLDS)
    limits = {k: th.get(f"capacity_loss_{k}", v) for k, v in limits.items()}
    cap = capacity_verdict(1 - train / initial, 1 - v_last / initial, metric="loss", train_key="train loss",
                           val_key=val_key, **limits)
    if not acts:
        cap.informational = True
        cap.message += (" (information only: loss scores have no universal scale; set thresholds "
                        "capacity_loss_low / capacity_loss_high / capacity_loss_fit_gap to act on them)")
    return cap


def underfitting(cap: Capacity | None, conv: Convergence | None, steps: Sequence[int],
                 not_decreasing: bool) -> Finding | None:
    """UNDERFITTING when the capacity verdict says so and the loss is no longer improving fast (nor
    stuck from the start, which ``not_decreasing`` -- LOSS_NOT_DECREASING found -- explains)."""
    if cap is None or conv is None or cap.verdict != "underfitting" or cap.informational:
        return None
    if conv.state in ("converging fast", "stalled") or not_decreasing:
        return None  # still improving fast: train longer first; no progress at all: LOSS_NOT_DECREASING says why
    ev = {"metric": cap.metric, "train": cap.train, "val": cap.val, "convergence": conv.state,
          "recent_improvement": conv.recent_improvement}
    return Finding("UNDERFITTING", steps[-conv.window_steps] if conv.window_steps <= len(steps) else 0,
                   steps[-1], ev, f"{cap.message}, and the training loss is {conv.state} "
                   f"({conv.recent_improvement * 100:+.1f}% over the last {conv.window_steps} recorded steps)")


def sharpness(monitors: Sequence[Any]) -> list[Finding]:
    """ABOVE_STABILITY_EDGE for each ``SharpnessMonitor`` that flagged training above its edge."""
    out = []
    for monitor in monitors:
        ev = sharpness_summary(monitor)
        if ev is None:
            continue
        compared = ev["lambda_max_preconditioned"] if ev["lambda_max_preconditioned"] is not None else ev["lambda_max"]
        ratio = f"{ev['worst_ratio']:.3g}" if ev["worst_ratio"] is not None else "?"
        out.append(Finding("ABOVE_STABILITY_EDGE", ev["first_step"] or 0, ev["last_step"] or 0, ev,
                           f"{ev['checks_above']} of {ev['checks']} sharpness checks were above the {ev['edge_kind']} "
                           f"edge (first at step {ev['first_step']}; worst: sharpness {fmt(compared)} vs edge "
                           f"{fmt(ev['edge'])}, ratio {ratio})"))
    return out


def schedules_at_start(schedules: Sequence[ScheduleFacts], steps: int | None, epochs: int | None,
                       th: Mapping[str, float]) -> tuple[list[Finding], list[ScheduleFacts]]:
    """What the planned run says about its schedules before it starts: the findings, and the schedules
    with ``mismatch`` set where one is stepped in the wrong unit."""
    found: list[Finding] = []
    out = []
    for sc in schedules:
        mismatch = _interval_mismatch(sc, steps, epochs)
        if mismatch is not None:
            found.append(mismatch)
            sc = replace(sc, mismatch=True)
        out.append(sc)
        fn = sc.fn
        if (fn is not None and steps and sc.interval == "step" and not sc.mismatch
                and fn.warmup > th["warmup_fraction"] * steps):
            found.append(Finding("WARMUP_TOO_LONG", 0, fn.warmup,
                                 {"warmup_steps": fn.warmup, "planned_steps": steps, "fraction": fn.warmup / steps},
                                 f"the {fn.kind} warm-up is {fn.warmup} of {steps} steps "
                                 f"({100 * fn.warmup / steps:.0f}%)"))
        if sc.plateau and sc.interval == "epoch" and epochs:
            checks = epochs // max(1, sc.frequency)
            if sc.patience >= checks - 1:
                found.append(Finding("PLATEAU_NEVER_FIRES", 0, steps or 0,
                                     {"patience": sc.patience, "checks": checks, "monitor": sc.monitor},
                                     f"ReduceLROnPlateau(patience={sc.patience}) needs {sc.patience + 1} checks "
                                     f"without improvement but this run has {checks}"))
        if sc.plateau and sc.mode == "max" and "loss" in str(sc.monitor or "").lower():
            found.append(Finding("PLATEAU_NEVER_FIRES", 0, steps or 0, {"mode": "max", "monitor": sc.monitor},
                                 f"ReduceLROnPlateau(mode='max') monitors {sc.monitor!r}, a loss: it reduces when "
                                 "the loss stops rising"))
    return found, out


def _interval_mismatch(sc: ScheduleFacts, steps: int | None, epochs: int | None) -> Finding | None:
    """SCHEDULE_INTERVAL_MISMATCH when ``sc``'s length matches the run in the other unit than it is stepped in."""
    h = sc.horizon
    if not (h and steps and epochs):
        return None
    ev = {"scheduler": sc.kind, "horizon": h, "interval": sc.interval, "planned_epochs": epochs, "planned_steps": steps}
    if sc.interval == "epoch" and h >= 3 * epochs and h >= 0.5 * steps:
        return Finding("SCHEDULE_INTERVAL_MISMATCH", 0, steps, ev,
                       f"{sc.kind}'s length is {h}, about the {steps} optimizer steps of this run, but it is "
                       f"stepped once per epoch (interval='epoch'): it will cover {epochs} of its {h} steps")
    if sc.interval == "step" and h <= 1.5 * epochs and steps >= 4 * h:
        return Finding("SCHEDULE_INTERVAL_MISMATCH", 0, steps, ev,
                       f"{sc.kind}'s length is {h}, about the {epochs} epochs of this run, but it is stepped "
                       f"every optimizer step (interval='step'): it ends after {h} of {steps} steps")
    return None


def schedules_at_end(s: Series, th: Mapping[str, float], schedules: Sequence[ScheduleFacts],
                     planned_steps: int | None, monitored: Mapping[str, list[float]],
                     found: Collection[str]) -> list[Finding]:
    """What the recorded LR curve says about the schedules at the end: LR_NEVER_DECAYS, WARMUP_TOO_LONG
    (unless already ``found``) and PLATEAU_NEVER_FIRES (unless already found; the first plateau only)."""
    lr = [v for v in s.lr if math.isfinite(v)]
    if len(lr) < 10 or not schedules or any(sc.mismatch for sc in schedules):
        return []
    out = []
    peak = max(lr)
    stepped = [sc for sc in schedules if sc.stepped]
    if stepped and peak > 0 and lr[-1] >= th["lr_decay"] * peak:
        kinds = ", ".join(sc.kind for sc in stepped)
        horizon = next((sc.horizon for sc in stepped if sc.horizon), None)
        ev = {"scheduler": kinds, "peak_lr": peak, "final_lr": lr[-1], "steps": s.steps[-1] + 1}
        msg = f"{kinds} is set, but the LR ended at {fmt(lr[-1])}, {100 * lr[-1] / peak:.0f}% of its peak {fmt(peak)}"
        if horizon:
            ev["horizon"] = horizon
            msg += f" (its length is {horizon}; the run took {s.steps[-1] + 1} optimizer steps)"
        out.append(Finding("LR_NEVER_DECAYS", 0, s.steps[-1], ev, msg))
    total = planned_steps or (s.steps[-1] + 1)
    warm = warmup_end(s.lr)
    if warm and s.steps[warm] > th["warmup_fraction"] * total and "WARMUP_TOO_LONG" not in found:
        out.append(Finding("WARMUP_TOO_LONG", 0, s.steps[warm],
                           {"warmup_steps": s.steps[warm], "planned_steps": total, "fraction": s.steps[warm] / total},
                           f"the LR rose until step {s.steps[warm]} of {total} ({100 * s.steps[warm] / total:.0f}%)"))
    if "PLATEAU_NEVER_FIRES" not in found:
        plateau = next(filter(None, (_plateau_at_end(sc, s, monitored) for sc in schedules if sc.plateau)), None)
        if plateau is not None:
            out.append(plateau)
    return out


def _plateau_at_end(sc: ScheduleFacts, s: Series, monitored: Mapping[str, list[float]]) -> Finding | None:
    """PLATEAU_NEVER_FIRES for a plateau scheduler that never reduced the LR although it could have."""
    if sc.lr_reduced():
        return None
    checks = sc.checks()
    stale = _longest_stale(monitored.get(sc.monitor or "", []), sc.mode)
    if not (sc.patience >= checks - 1 or stale > sc.patience):
        return None
    return Finding("PLATEAU_NEVER_FIRES", 0, s.steps[-1],
                   {"patience": sc.patience, "checks": checks, "monitor": sc.monitor,
                    "longest_without_improvement": stale},
                   f"ReduceLROnPlateau(patience={sc.patience}) never reduced the LR in {checks} checks"
                   + (f" although {sc.monitor} did not improve for {stale} checks in a row"
                      if stale > sc.patience else ""))


def _spearman(values: list[float]) -> float:
    """Rank correlation of ``values`` with time: +1 steadily rising, -1 steadily falling."""
    n = len(values)
    if n < 3:
        return 0.0
    ranks = [0] * n
    for r, i in enumerate(sorted(range(n), key=values.__getitem__)):
        ranks[i] = r
    mean = (n - 1) / 2
    num = sum((t - mean) * (r - mean) for t, r in enumerate(ranks))
    den = sum((t - mean) ** 2 for t in range(n))
    return num / den


def _longest_stale(values: list[float], mode: str) -> int:
    """Longest run of checks without a new best value."""
    best, run, longest = None, 0, 0
    for v in values:
        if best is None or (v < best if mode == "min" else v > best):
            best, run = v, 0
        else:
            run += 1
            longest = max(longest, run)
    return longest
