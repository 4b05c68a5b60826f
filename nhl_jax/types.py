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
        never changes the shapes or dtypes of ``state``. A loss with
        trainable parameters receives them as ``apply(..., params=params)``.
      init_params: optional ``init_params(key, *, num_classes, bits) ->
        params``, a pytree of float32 arrays the optimizer trains with the
        network (a classifier, a projection W); None for a loss without.
      epoch_update: optional ``epoch_update(state, params) -> state``, a
        closed-form update run once after every epoch (DSDH's discrete
        codes B); None for a loss without.
      init_lengths: optional ``init_lengths(key, *, num_train, num_classes,
        bits) -> states`` with ``bits`` the sorted tuple of every length:
        one state per length drawn jointly (nested hash centres, where each
        length's table is a prefix of the longest one's). When present, the
        NHL objective calls it instead of ``init`` once per length.
      features: whether ``apply`` also takes ``features=`` [B, D], the
        backbone features the hash layer reads (PCDH's feature-level term).
      masked: optional ``masked(state, codes, mask, labels, index) ->
        loss``, for a loss whose ``apply`` returns its state unchanged:
        the loss of the length whose columns ``mask`` [K_max] (1.0 on the
        first K, else 0.0) selects, from ``codes`` [B, K_max] and a state
        whose leaves are zero-padded along their last (bit) axis to
        K_max; equal to ``apply`` on the first K columns to float
        rounding. With it the NHL objective runs every length in one
        ``vmap`` (``nhl_jax.nhl.stacked``).

    Example, a loss that owns a linear classifier ``W`` [K, C]::

        def init_params(key, *, num_classes, bits):
            return {'w': 0.01 * jax.random.normal(key, (bits, num_classes))}

        def apply(state, codes, labels, index, *, params):
            logits = jnp.tanh(codes) @ params['w']
            return optax.softmax_cross_entropy(logits, labels).mean(), state

        loss = HashLoss(stateless_init, apply, init_params)
    """

    init: Callable[..., LossState]
    apply: Callable[..., tuple[Array, LossState]]
    init_params: Callable[..., Any] | None = None
    epoch_update: Callable[[LossState, Any], LossState] | None = None
    init_lengths: Callable[..., tuple[LossState, ...]] | None = None
    features: bool = False
    masked: Callable[..., Array] | None = None
