"""Every length's objective traced once: a vmap over masked codes.

Length b_k's code is the prefix h[:, :b_k] of the nested output h [B, K].
A base loss that offers ``HashLoss.masked`` computes length k's value
from h itself with the columns beyond b_k masked out, from a state padded
with zeros to K columns. The M copies then have one shape and run as one
``jax.vmap`` over lengths: the loss, the cascade distillation and, for
the rules that read gradients, each length's vjp are traced once instead
of M times, and M small computations become batched ones. Values equal
those of the per-length path to float rounding: the sums run over K
columns, the masked ones contributing zeros, in another order.

The teacher of a length enters as the stop-gradient masked h, so the
distillation is the NHL cascade of arXiv 2412.08922 (SP-KD, Tung & Mori,
ICCV 2019, Eq. (2)-(4)), with the zero columns of both codes adding
nothing to the Gram matrices.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nhl_jax.nhl import distill
from nhl_jax.types import Array, HashLoss


class LengthValues(NamedTuple):
    """Per-length values of one step, lengths stacked on the first axis.

    Attributes:
      objectives: [M] L_k + lambda L_dis(k).
      losses: [M] L_k.
      distill: [M] L_dis(k), 0 for the longest length.
      out_grads: [M, B, K] gradient of objective k on h (zero beyond
        column b_k), or None when not asked for.
    """

    objectives: Array
    losses: Array
    distill: Array
    out_grads: Array | None


def supports(loss: HashLoss) -> bool:
    """Whether ``loss`` can take the stacked path.

    It needs ``masked``, and neither loss parameters nor features, which
    the per-length path differentiates as inputs of their own.
    """
    return (loss.masked is not None and loss.init_params is None
            and not loss.features)


def prefix_masks(bits: Sequence[int]) -> np.ndarray:
    """[M, K] float32: row k is 1 on the first b_k columns, else 0."""
    return (np.arange(bits[-1])[None, :]
            < np.asarray(bits)[:, None]).astype(np.float32)


def teacher_table(topology: str, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Teachers of each length as a padded table.

    Args:
      topology: a key of ``distill.TOPOLOGIES``.
      m: number of lengths M.

    Returns:
      ``(index, weight)``, each [M, T] with T the most teachers of any
      length: row k lists length k's teachers, each weighted 1 / |T(k)|
      (the mean of ``distill.length_distill``); padding entries point at
      k itself with weight 0, as does the longest length's row.
    """
    if topology not in distill.TOPOLOGIES:
        raise ValueError(
            f'Unknown distillation topology {topology!r}; choose one of '
            f'{sorted(distill.TOPOLOGIES)}.')
    rows = [distill.TOPOLOGIES[topology](k, m) if k < m - 1 else ()
            for k in range(m)]
    width = max(1, *(len(r) for r in rows))
    index = np.array([list(r) + [k] * (width - len(r))
                      for k, r in enumerate(rows)], np.int32)
    weight = np.array([[1.0 / max(len(r), 1)] * len(r)
                       + [0.0] * (width - len(r)) for r in rows], np.float32)
    return index, weight


def stack_states(states: Sequence[Any], width: int) -> Any:
    """M per-length states as one, padded with zeros to ``width`` columns.

    Every leaf's last axis is its bit axis (``HashLoss.masked``'s
    contract); the result has a leading [M] axis on every leaf.
    """
    def padded(x):
        pad = [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])]
        return jnp.pad(x, pad)
    return jax.tree.map(lambda *xs: jnp.stack([padded(x) for x in xs]),
                        *states)


def length_values(loss: HashLoss, h: Array, states: Sequence[Any],
                  labels: Array, index: Array, *, bits: Sequence[int],
                  topology: str, distill_weight, batch_shards: int = 1,
                  out_grads: bool = False) -> LengthValues:
    """Every length's objective in one vmap over lengths.

    Args:
      loss: a base loss that ``supports``.
      h: [B, K] nested outputs, K = bits[-1].
      states: M per-length loss states (unchanged by the loss).
      labels: [B, C] multi-hot labels.
      index: [B] training-set rows.
      bits: the sorted lengths.
      topology: distillation teachers (``distill.TOPOLOGIES``).
      distill_weight: lambda.
      batch_shards: see ``distill.similarity_distill``.
      out_grads: also return each objective's gradient on h, one vjp
        per length (the rules that read gradients).

    Returns:
      ``LengthValues``.
    """
    masks = jnp.asarray(prefix_masks(bits))
    teacher_index, teacher_weight = teacher_table(topology, len(bits))
    codes = jax.lax.stop_gradient(h)[None] * masks[:, None, :]  # [M, B, K]

    def objective(code, mask, state, teachers, weights):
        value = loss.masked(state, code, mask, labels, index)
        sp = jax.vmap(lambda t: distill.similarity_distill(
            code, codes[t], batch_shards=batch_shards))(teachers)
        dis = jnp.sum(weights * sp)
        return value + distill_weight * dis, (value, dis)

    def one(mask, state, teachers, weights):
        fn = _bound(objective, mask, state, teachers, weights)
        if not out_grads:
            obj, (value, dis) = fn(h * mask[None, :])
            return obj, value, dis, None
        obj, vjp_fn, (value, dis) = jax.vjp(fn, h * mask[None, :], has_aux=True)
        (grad,) = vjp_fn(jnp.ones_like(obj))
        return obj, value, dis, grad

    return LengthValues(*jax.vmap(one)(
        masks, stack_states(states, bits[-1]), jnp.asarray(teacher_index),
        jnp.asarray(teacher_weight)))


def _bound(objective: Callable, *args) -> Callable:
    return lambda code: objective(code, *args)


def linearised_total(weights: Array, values: LengthValues, h: Array) -> Array:
    """sum_k w_k L_k as a value whose gradient on h is sum_k w_k g_k.

    The per-length gradients are taken as given (stop-gradient), so the
    step's backward pass reads them instead of differentiating the losses
    a second time (the per-length path's ``_linearised``, in one product).
    """
    total = jax.lax.stop_gradient(jnp.sum(weights * values.objectives))
    grad = jax.lax.stop_gradient(
        jnp.einsum('m,mbk->bk', weights, values.out_grads))
    return total + jnp.vdot(grad, h - jax.lax.stop_gradient(h))
