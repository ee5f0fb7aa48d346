"""NonFiniteGuard's policy: what to do about the events of one check, as a pure function of counters.

:func:`decide` takes the policy and the facts a check has gathered (were there events, are the
parameters finite, how many flagged steps in a row, is there a snapshot, when was the last LR
reduction) and returns the actions to take. It touches no Trainer, so every branch of the policy
can be tested directly; the guard then makes the ranks agree on the result and carries it out.
"""

from __future__ import annotations

__all__ = ["ACTIONS", "POLICIES", "decide"]

POLICIES = ("skip", "reduce_lr", "rollback", "stop", "raise")
# the actions a check may take, in the order they are agreed on across ranks
ACTIONS = ("restore", "rollback", "reduce", "stop", "raise")


def decide(
    policy: str,
    *,
    has_events: bool,
    params_ok: bool,
    escalate: bool,
    has_snapshot: bool,
    restored_in_run: bool,
    last_step: int,
    last_reduction_step: int | None,
    cooldown: int,
) -> dict[str, bool]:
    """The actions for one check: a dict with every key of :data:`ACTIONS`.

    ``escalate`` means ``max_consecutive`` flagged steps in a row. Non-finite parameters or an
    escalation cannot be repaired by skipping: the guard restores its snapshot once per run of
    events, else stops. ``rollback`` restores the snapshot at every event; ``raise`` raises (after
    restoring non-finite parameters); ``reduce_lr`` reduces at most once per ``cooldown`` steps.

    Example:
        >>> facts = dict(has_events=True, params_ok=True, escalate=False, has_snapshot=False,
        ...              restored_in_run=False, last_step=120, last_reduction_step=50, cooldown=100)
        >>> decide("reduce_lr", **facts)
        {'restore': False, 'rollback': False, 'reduce': False, 'stop': False, 'raise': False}
        >>> decide("reduce_lr", **{**facts, "last_step": 150})["reduce"]
        True
        >>> decide("skip", **{**facts, "params_ok": False})["stop"]
        True
    """
    want = dict.fromkeys(ACTIONS, False)
    if not has_events:
        return want
    unrecoverable = not params_ok or escalate
    if policy == "raise":
        want["raise"] = True
        want["restore"] = not params_ok and has_snapshot
    elif policy == "rollback":
        want["rollback"] = has_snapshot
        want["stop"] = escalate or (not params_ok and not has_snapshot)
    elif unrecoverable:
        if has_snapshot and not restored_in_run:
            want["restore"] = True
        else:
            want["stop"] = True
    if policy == "reduce_lr" and not want["stop"] and (
            last_reduction_step is None or last_step - last_reduction_step >= cooldown):
        want["reduce"] = True
    if policy == "stop":
        want["stop"] = True
    return want
