"""Long-to-short self-distillation between the nested codes.

Similarity-preserving KD (Tung & Mori, ICCV 2019) on the batch Gram matrices
of the continuous head outputs; the teacher side is always stop-gradient.

The [B, B] Gram matrices pair every row of the batch with every other, so
a batch split over devices would have to gather its codes on each. With
``batch_shards > 1`` the loss is computed instead from [K, K] products
summed over the rows (H_t^T H_t, H_s^T H_s, H_t^T H_s), which a sharded
batch all-reduces without gathering any row (issue 32).
"""

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp

from nhl_jax import parallel
from nhl_jax.losses import l2_normalize
from nhl_jax.types import Array

_EPS = 1e-12  # of l2_normalize, torch F.normalize's


def similarity_distill(short: Array, long: Array, *,
                       batch_shards: int = 1) -> Array:
    """SP-KD loss of a student code on a (stop-gradient) teacher code.

    With G_s = H_s H_s^T, G_t = sg(H_t) sg(H_t)^T, each row-normalised
    (torch ``F.normalize``, eps 1e-12):

      L = sum_ab (G^_t - G^_s)_ab^2 / B^2.

    Args:
      short: [B, K_s] student outputs (pre-sign).
      long: [B, K_t] teacher outputs; no gradient flows into it.
      batch_shards: devices the batch's rows are split over. 1: the Gram
        matrices as written; more: the same loss to float rounding from
        [K, K] row sums (``_from_row_sums``), no row leaves its device.

    Returns:
      Scalar loss.

    References:
      Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019,
      Eq. (2)-(4); NHL cascade distillation.
    """
    chex.assert_rank([short, long], 2)
    chex.assert_equal_shape_prefix([short, long], 1)
    parallel.check_batch_shards(batch_shards)
    long = jax.lax.stop_gradient(long)
    if batch_shards > 1:
        return _from_row_sums(short, long)
    g_s = l2_normalize(short @ short.T)  # [B, B]
    g_t = l2_normalize(long @ long.T)  # [B, B]
    return jnp.sum((g_t - g_s) ** 2) / short.shape[0] ** 2


def _from_row_sums(short: Array, long: Array) -> Array:
    """``similarity_distill`` through [K, K] sums over the batch's rows.

    Row a of G_s = S S^T has squared norm s_a^T (S^T S) s_a, and
    sum_b G_t[a, b] G_s[a, b] = t_a^T (T^T S) s_a, so

      L B^2 = sum_a |G_t[a]|^2 / m_t,a^2 + |G_s[a]|^2 / m_s,a^2
              - 2 t_a^T (T^T S) s_a / (m_t,a m_s,a),

    with m = max(|G[a]|, eps) as in ``l2_normalize``. S^T S, T^T T and
    T^T S are sums over rows, so a sharded batch all-reduces them instead
    of gathering S and T; the rest is per row.
    """
    sq_s = _row_gram_norms_sq(short, short.T @ short)  # [B]
    sq_t = _row_gram_norms_sq(long, long.T @ long)  # [B]
    cross = jnp.sum((long @ (long.T @ short)) * short, axis=-1)  # [B]
    norm_s, norm_t = _safe_sqrt(sq_s), _safe_sqrt(sq_t)
    m_s, m_t = jnp.maximum(norm_s, _EPS), jnp.maximum(norm_t, _EPS)
    # |G[a]|^2 / m_a^2 = min(|G[a]| / eps, 1)^2: 1 with gradient exactly 0
    # for every row but the (near) zero ones, as for the Gram matrices.
    rows = (_unit_or_less(norm_t) + _unit_or_less(norm_s)
            - 2 * cross / (m_t * m_s))  # [B]
    return jnp.sum(rows) / short.shape[0] ** 2


def _unit_or_less(norm: Array) -> Array:
    return jnp.square(jnp.minimum(norm / _EPS, 1.0))


def _row_gram_norms_sq(h: Array, gram: Array) -> Array:
    """[B] squared norms of the rows of H H^T, from H^T H [K, K]."""
    return jnp.maximum(jnp.sum((h @ gram) * h, axis=-1), 0.0)


def _safe_sqrt(x: Array) -> Array:
    """sqrt with gradient 0 (not inf) at 0, as ``losses.safe_norm``."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _adjacent(k: int, m: int) -> tuple[int, ...]:
    del m
    return (k + 1,)


def _all_longer(k: int, m: int) -> tuple[int, ...]:
    return tuple(range(k + 1, m))


def _longest_only(k: int, m: int) -> tuple[int, ...]:
    del k
    return (m - 1,)


TOPOLOGIES = {
    'adjacent': _adjacent,
    'all_longer': _all_longer,
    'longest_only': _longest_only,
}


def cascade_distill(
    outputs: Sequence[Array], *, topology: str = 'adjacent',
    batch_shards: int = 1,
) -> Array:
    """Distillation terms L_dis(k) for every length but the longest.

    Args:
      outputs: M per-length outputs, short to long, each [B, b_k].
      topology: teachers of length k. ``'adjacent'`` (NHL: k+1, giving
        128 -> 64 -> ... -> 8), ``'all_longer'`` (mean over every longer
        length) or ``'longest_only'`` (the longest length).
      batch_shards: see ``similarity_distill``.

    Returns:
      [M-1] array; entry k is length k's distillation loss (M = 1 gives an
      empty array).

    Raises:
      ValueError: for an unknown topology.
    """
    if topology not in TOPOLOGIES:
        raise ValueError(
            f'Unknown distillation topology {topology!r}; choose one of '
            f'{sorted(TOPOLOGIES)}.'
        )
    m = len(outputs)
    terms = [length_distill(outputs[k], outputs, k, topology=topology,
                            batch_shards=batch_shards)
             for k in range(m - 1)]
    return jnp.stack(terms) if terms else jnp.zeros((0,), jnp.float32)


def length_distill(student: Array, outputs: Sequence[Array], k: int, *,
                   topology: str = 'adjacent', batch_shards: int = 1) -> Array:
    """L_dis(k): the term of length k < M - 1 of ``cascade_distill``.

    Args:
      student: [B, b_k] length k's outputs (the gradient flows into it).
      outputs: M per-length outputs, short to long; only the teachers of
        length k are read, with no gradient.
      k: the student's length index.
      topology: a key of ``TOPOLOGIES``.
      batch_shards: see ``similarity_distill``.

    Returns:
      Scalar loss.
    """
    teachers = TOPOLOGIES[topology](k, len(outputs))
    return jnp.mean(jnp.stack([
        similarity_distill(student, outputs[t], batch_shards=batch_shards)
        for t in teachers]))
