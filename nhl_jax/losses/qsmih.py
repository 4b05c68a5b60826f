"""QSMIH: hashing by quadratic spherical mutual information."""

import jax.numpy as jnp

from nhl_jax.hparams import Weight
from nhl_jax.losses import _common
from nhl_jax.types import HashLoss


def qsmih(alpha: Weight = 0.01, use_square_clamp: bool = True) -> HashLoss:
    """Quadratic spherical mutual information between codes and labels.

    With the unit-norm codes v_i = u_i / (||u_i|| + 1e-8), the batch
    similarities P_ij = (1 + v_i . v_j) / 2, D_ij = 1[y_i . y_j > 0] and
    the prior ratio M = B^2 / sum_ij D_ij:

      clamped (default):  L_q = mean_ij [ (D_ij P_ij - 1)^2 + P_ij^2 / M ],
      plain QSMI:         L_q = mean_ij [ P_ij / M - D_ij P_ij ],
      L = L_q + alpha * mean_ik | |v_ik| - 1 |.

    The quantisation term acts on the normalised codes v, as in the
    reference code.

    Args:
      alpha: weight of the quantisation term.
      use_square_clamp: the squared (clamped) surrogate instead of the
        plain QSMI difference.

    Returns:
      A ``HashLoss`` with ``EmptyState``.

    References:
      Passalis and Tefas, "Deep supervised hashing using quadratic spherical
      mutual information for efficient image retrieval", Signal Processing:
      Image Communication 2021; defaults of swuxyj/DeepHash-pytorch
      ``QSMIH.py``.
    """

    def apply_fn(state, codes, labels, index):
        _common.check_batch(codes, labels, index)
        v = codes / (_common.safe_norm(codes, keepdims=True) + 1e-8)
        p = 0.5 * (v @ v.T + 1.0)  # [B, B]
        d = _common.similarity(labels, labels)  # [B, B]
        inv_m = jnp.sum(d) / d.size  # 1 / M; >= 1 / B from the diagonal
        if use_square_clamp:
            mi = (d * p - 1.0) ** 2 + inv_m * p**2
        else:
            mi = inv_m * p - d * p
        quant = jnp.mean(jnp.abs(jnp.abs(v) - 1.0))
        return jnp.mean(mi) + alpha * quant, state

    return HashLoss(_common.stateless_init, apply_fn)
