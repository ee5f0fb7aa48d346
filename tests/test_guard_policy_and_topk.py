"""The pure pieces of NonFiniteGuard and Checkpoint, tested without a Trainer.

``decide`` is the guard's policy (events, parameters, counters -> actions); ``plan_top_k`` and
``ranking_score`` are Checkpoint's top-k planning. The Trainer-level behaviour is covered in
test_nonfinite.py and test_checkpoint.py; these pin every branch of the decisions themselves.
"""

from __future__ import annotations

import math

import pytest

from lightning_optkit.callbacks import NonFiniteError
from lightning_optkit.callbacks._ckpt_plan import best_of, missing_monitor, plan_top_k, ranking_score
from lightning_optkit.callbacks._nonfinite_events import GuardEvent, events_from_rows
from lightning_optkit.callbacks._nonfinite_policy import ACTIONS, POLICIES, decide

FACTS = dict(has_events=True, params_ok=True, escalate=False, has_snapshot=False, restored_in_run=False,
             last_step=10, last_reduction_step=None, cooldown=100)


def _taken(policy: str, **facts: object) -> set[str]:
    want = decide(policy, **{**FACTS, **facts})  # type: ignore[arg-type]
    assert list(want) == list(ACTIONS)
    return {k for k, v in want.items() if v}


@pytest.mark.parametrize("policy", POLICIES)
def test_no_events_means_no_action(policy: str) -> None:
    assert _taken(policy, has_events=False, params_ok=False, escalate=True, has_snapshot=True) == set()


@pytest.mark.parametrize(("policy", "expected"), [
    ("skip", set()), ("reduce_lr", {"reduce"}), ("rollback", set()), ("stop", {"stop"}), ("raise", {"raise"}),
])
def test_a_recoverable_event_without_snapshot(policy: str, expected: set[str]) -> None:
    assert _taken(policy) == expected


def test_rollback_restores_whenever_there_is_a_snapshot() -> None:
    assert _taken("rollback", has_snapshot=True) == {"rollback"}
    assert _taken("rollback", has_snapshot=True, escalate=True) == {"rollback", "stop"}
    assert _taken("rollback", params_ok=False) == {"stop"}


def test_unrecoverable_restores_once_per_run_of_events_then_stops() -> None:
    assert _taken("skip", params_ok=False, has_snapshot=True) == {"restore"}
    assert _taken("skip", escalate=True, has_snapshot=True, restored_in_run=True) == {"stop"}
    assert _taken("skip", escalate=True) == {"stop"}
    # reduce_lr does not also reduce when it stops
    assert _taken("reduce_lr", params_ok=False) == {"stop"}


def test_raise_restores_non_finite_parameters_first() -> None:
    assert _taken("raise", params_ok=False, has_snapshot=True) == {"raise", "restore"}
    assert _taken("raise", params_ok=False) == {"raise"}


def test_reduce_lr_waits_for_the_cooldown() -> None:
    assert _taken("reduce_lr", last_step=149, last_reduction_step=50) == set()
    assert _taken("reduce_lr", last_step=150, last_reduction_step=50) == {"reduce"}


def test_events_from_rows_counts_runs_and_names_kinds() -> None:
    nan = math.nan
    rows = [[nan, nan, nan, 0.0, 1.0, 1.0], [5.0, 1.0, 1.0, 1.0, 1.0, 0.0], [1.0, 1.0, nan, 0.0, 0.0, 0.0],
            [1.0, nan, nan, 0.0, 1.0, 1.0]]
    meta = [(1, 0, 1), (2, 0, 2), (3, 0, 3), (4, 0, 4)]
    events, consecutive, restored = events_from_rows(meta, rows, [], 3, True)
    assert [(e.step, e.kinds) for e in events] == [
        (1, ["nonfinite_loss", "nonfinite_grad"]), (2, ["loss_spike"]), (4, ["nonfinite_grad"])]
    assert events[1].loss_median == 1.0 and events[0].loss_median is None
    assert (consecutive, restored) == (1, False)  # the healthy step 3 reset both


def test_non_finite_error_is_public_and_carries_the_event() -> None:
    event = GuardEvent(3, 0, 3, ["nonfinite_loss"], math.nan, 1.0)
    with pytest.raises(RuntimeError) as info:
        raise NonFiniteError("boom", event)
    assert isinstance(info.value, NonFiniteError) and info.value.event is event


def test_top_k_keeps_the_best_and_removes_the_worst() -> None:
    assert plan_top_k({}, "a", 0.5, save_top_k=2, higher_better=False) == ("a", [], {"a": 0.5})
    assert plan_top_k({"a": 0.5, "b": 0.3}, "c", 0.2, save_top_k=2, higher_better=False) == (
        "c", ["a"], {"b": 0.3, "c": 0.2})
    assert plan_top_k({"a": 0.5, "b": 0.3}, "c", 0.2, save_top_k=2, higher_better=True) == (
        None, [], {"a": 0.5, "b": 0.3})
    assert plan_top_k({"a": 0.5}, "b", 9.0, save_top_k=-1, higher_better=False) == ("b", [], {"a": 0.5, "b": 9.0})


def test_top_k_reranks_a_name_it_already_holds() -> None:
    # the same file name again (a template without the step): ranked with its new score
    assert plan_top_k({"a": 0.5, "b": 0.3}, "b", 0.4, save_top_k=2, higher_better=False) == (
        "b", [], {"a": 0.5, "b": 0.4})
    # when it does not make it, it keeps its old place and score
    assert plan_top_k({"a": 0.1, "b": 0.3}, "b", 0.9, save_top_k=1, higher_better=False)[0] is None


def test_ranking_score_and_best() -> None:
    assert ranking_score(None, None, 7, higher_better=True) == 7.0
    assert ranking_score("acc", math.nan, 7, higher_better=True) == -math.inf
    assert ranking_score("loss", None, 7, higher_better=False) is None
    assert best_of({"a": 1.0, "b": 2.0}, higher_better=True) == "b"
    assert best_of({"a": 1.0, "b": 2.0}, higher_better=False) == "a"


def test_missing_monitor_only_for_validation_and_epoch_saves() -> None:
    assert missing_monitor("val_loss", None, "step", {"loss": 1.0}) is None
    assert missing_monitor("val_loss", None, "epoch", {}) is None
    path, value, expected, suggestions, hint = missing_monitor("val_los", None, "validation", {"val_loss": 1.0})
    assert (path, value) == ("Checkpoint.monitor", "val_los")
    assert "val_loss" in expected and "val_loss" in suggestions and "self.log('val_los'" in hint
