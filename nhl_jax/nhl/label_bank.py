"""One label bank for every length of a nested objective.

A bank loss (DPSH, DSH, DSDH, ...) keeps the label of every training row,
[N, C], beside its codes [N, K]. The NHL objective gives each length its
own copy of the loss, so M lengths would keep M identical label banks:
every length writes the same labels into the same rows at every step.
At N = 20k, C = 100 and five lengths that is 40 of the banks' 60 MB.

``share_labels`` wraps an ``NHLObjective`` so that its state keeps the
labels once: the first length's state holds them, the other lengths'
``labels`` field is None (no pytree leaf). ``apply`` and ``epoch_update``
hand the loss each length's full state and drop the copies again, so the
loss itself and its numbers are unchanged.
"""

from typing import Any

from nhl_jax.types import LossState


def _has_labels(state: LossState) -> bool:
    return 'labels' in getattr(state, '_fields', ())


def shares_labels(states: tuple[LossState, ...]) -> bool:
    """Whether ``states`` (one per length) hold a label bank to share."""
    return len(states) > 1 and all(_has_labels(s) for s in states)


def detach(states: tuple[LossState, ...]) -> tuple[LossState, ...]:
    """The per-length states with the labels kept in the first one only.

    Args:
      states: one loss state per length, each with its own ``labels``
        [N, C] (identical ones), or states without a label bank (returned
        as they are).

    Returns:
      The same states, ``labels=None`` from the second length on.
    """
    if not shares_labels(states):
        return states
    return (states[0],) + tuple(s._replace(labels=None) for s in states[1:])


def attach(states: tuple[LossState, ...]) -> tuple[LossState, ...]:
    """Inverse of ``detach``: every length's state with the shared labels."""
    if not shares_labels(states):
        return states
    labels = states[0].labels  # [N, C]
    return (states[0],) + tuple(s._replace(labels=labels) for s in states[1:])


def share_labels(objective: Any) -> Any:
    """``objective`` (an ``NHLObjective``) whose state stores labels once.

    Args:
      objective: an ``NHLObjective``; its ``init`` returns one state per
        length.

    Returns:
      The same objective, its ``init``, ``apply`` and ``epoch_update``
      reading and returning the ``detach``-ed states.
    """

    def init(key, **sizes):
        return detach(objective.init(key, **sizes))

    def apply(states, h, labels, index, **kwargs):
        total, (new_states, metrics) = objective.apply(
            attach(states), h, labels, index, **kwargs)
        return total, (detach(tuple(new_states)), metrics)

    def epoch_update(states, loss_params):
        return detach(objective.epoch_update(attach(states), loss_params))

    return objective._replace(
        init=init, apply=apply,
        epoch_update=(None if objective.epoch_update is None
                      else epoch_update))
