"""Long-to-short self-distillation between the nested codes.

Similarity-preserving KD (Tung & Mori, ICCV 2019) on the batch Gram matrices
of the continuous head outputs; the teacher side is always stop-gradient.
"""

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp

from nhl_jax.losses import l2_normalize
from nhl_jax.types import Array


def similarity_distill(short: Array, long: Array) -> Array:
    """SP-KD loss of a student code on a (stop-gradient) teacher code.

    With G_s = H_s H_s^T, G_t = sg(H_t) sg(H_t)^T, each row-normalised
    (torch ``F.normalize``, eps 1e-12):

      L = sum_ab (G^_t - G^_s)_ab^2 / B^2.

    Args:
      short: [B, K_s] student outputs (pre-sign).
      long: [B, K_t] teacher outputs; no gradient flows into it.

    Returns:
      Scalar loss.

    References:
      Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019,
      Eq. (2)-(4); NHL cascade distillation.
    """
    chex.assert_rank([short, long], 2)
    chex.assert_equal_shape_prefix([short, long], 1)
    long = jax.lax.stop_gradient(long)
    g_s = l2_normalize(short @ short.T)  # [B, B]
    g_t = l2_normalize(long @ long.T)  # [B, B]
    return jnp.sum((g_t - g_s) ** 2) / short.shape[0] ** 2


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
    outputs: Sequence[Array], *, topology: str = 'adjacent'
) -> Array:
    """Distillation terms L_dis(k) for every length but the longest.

    Args:
      outputs: M per-length outputs, short to long, each [B, b_k].
      topology: teachers of length k. ``'adjacent'`` (NHL: k+1, giving
        128 -> 64 -> ... -> 8), ``'all_longer'`` (mean over every longer
        length) or ``'longest_only'`` (the longest length).

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
    terms = [length_distill(outputs[k], outputs, k, topology=topology)
             for k in range(m - 1)]
    return jnp.stack(terms) if terms else jnp.zeros((0,), jnp.float32)


def length_distill(student: Array, outputs: Sequence[Array], k: int, *,
                   topology: str = 'adjacent') -> Array:
    """L_dis(k): the term of length k < M - 1 of ``cascade_distill``.

    Args:
      student: [B, b_k] length k's outputs (the gradient flows into it).
      outputs: M per-length outputs, short to long; only the teachers of
        length k are read, with no gradient.
      k: the student's length index.
      topology: a key of ``TOPOLOGIES``.

    Returns:
      Scalar loss.
    """
    teachers = TOPOLOGIES[topology](k, len(outputs))
    return jnp.mean(jnp.stack([similarity_distill(student, outputs[t])
                               for t in teachers]))
