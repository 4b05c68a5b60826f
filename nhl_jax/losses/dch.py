"""DCH: Deep Cauchy Hashing."""

import jax.numpy as jnp

from nhl_jax.hparams import Scale, Weight
from nhl_jax.losses import _common
from nhl_jax.types import Array, HashLoss


def dch(gamma: Scale = 20.0, lam: Weight = 0.1) -> HashLoss:
    """Cauchy cross-entropy on a cosine-based Hamming proxy, class-balanced.

    With cos_ij = u_i . u_j / max(||u_i|| ||u_j||, 1e-4) and
    d_ij = K/2 (1 - min(cos_ij, 0.99)):

      L_c = mean_ij w_ij [ s_ij log(d_ij / gamma) + log(1 + gamma / d_ij) ],
      L_q = mean_i log(1 + d(|u_i|, 1_K) / gamma),
      L = L_c + lam * L_q,

    where w_ij = s_ij B^2 / S + (1 - s_ij) B^2 / S' (S and S' the numbers of
    similar and dissimilar ordered pairs, diagonal included) when both are
    positive, and w_ij = 1 otherwise.

    Args:
      gamma: Cauchy scale.
      lam: weight of the quantisation term.

    Returns:
      A ``HashLoss`` with ``EmptyState``.

    References:
      Cao et al., "Deep Cauchy Hashing for Hamming Space Retrieval", CVPR
      2018, Eq. (2), (6)-(9).
    """

    def apply_fn(state, codes, labels, index):
        _common.check_batch(codes, labels, index)
        s = _common.similarity(labels, labels)  # [B, B]
        num_pos, num_neg = jnp.sum(s), jnp.sum(1.0 - s)
        balanced = (num_pos > 0) & (num_neg > 0)
        w = jnp.where(
            balanced,
            s * s.size / jnp.maximum(num_pos, 1.0)
            + (1.0 - s) * s.size / jnp.maximum(num_neg, 1.0),
            1.0,
        )
        d = _cauchy_distance(codes, codes)
        cauchy = w * (s * jnp.log(d / gamma) + jnp.log(1.0 + gamma / d))
        ones = jnp.ones((1, codes.shape[-1]), codes.dtype)
        quant = jnp.log(1.0 + _cauchy_distance(jnp.abs(codes), ones) / gamma)
        return jnp.mean(cauchy) + lam * jnp.mean(quant), state

    return HashLoss(_common.stateless_init, apply_fn)


def _cauchy_distance(a: Array, b: Array) -> Array:
    """K/2 (1 - min(cos, 0.99)) between rows of a [B, K] and b [N, K]."""
    norms = (
        _common.safe_norm(a, keepdims=True) * _common.safe_norm(b)[None, :]
    )
    cos = (a @ b.T) / jnp.maximum(norms, 1e-4)
    return 0.5 * a.shape[-1] * (1.0 - jnp.minimum(cos, 0.99))
