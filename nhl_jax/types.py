"""Shared types: the `HashLoss` protocol every base loss follows."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

Array = jax.Array
PRNGKey = jax.Array
Bits = tuple[int, ...]
LossState = Any  # a pytree of arrays (a NamedTuple), or EmptyState()


class EmptyState(NamedTuple):
    """State of a loss that keeps none (DTSH, LCDSH, DCH)."""


class HashLoss(NamedTuple):
    """A base hashing loss as a pair of pure functions (the optax pattern).

    Attributes:
      init: ``init(key, *, num_train, num_classes, bits) -> state``; ``bits``
        is the code length K of this one loss copy.
      apply: ``apply(state, codes, labels, index) -> (loss, new_state)`` with
        ``codes`` [B, K] float (continuous, pre-sign), ``labels`` [B, C]
        multi-hot float, ``index`` [B] int (row of each sample in the training
        set) and ``loss`` a float32 scalar. ``apply`` is jit-compatible and
        never changes the shapes or dtypes of ``state``.
    """

    init: Callable[..., LossState]
    apply: Callable[[LossState, Array, Array, Array], tuple[Array, LossState]]
