"""LCDSH: Locality-Constrained Deep Supervised Hashing."""

import jax
import jax.numpy as jnp

from nhl_jax.hparams import Weight
from nhl_jax.losses import _common
from nhl_jax.types import HashLoss


def lcdsh(lam: Weight = 3.0) -> HashLoss:
    """Pairwise likelihood plus a sigmoid-matched binary-code constraint.

    With s~_ij = 2 s_ij - 1, phi_ij = clip(u_i . u_j / 2, -50, 50),
    b = sign(u) (no gradient) and phi^_ij = b_i . b_j / 2:

      L = mean_ij log(1 + exp(-s~_ij phi_ij))
          + lam * mean_ij (sigmoid(phi_ij) - sigmoid(phi^_ij))^2.

    Args:
      lam: weight of the binary-code constraint.

    Returns:
      A ``HashLoss`` with ``EmptyState``.

    References:
      Zhu & Gao, "Locality Constrained Deep Supervised Hashing for Image
      Retrieval", IJCAI 2017.
    """

    def apply_fn(state, codes, labels, index):
        _common.check_batch(codes, labels, index)
        s = 2.0 * _common.similarity(labels, labels) - 1.0  # [B, B]
        phi = jnp.clip(0.5 * codes @ codes.T, -50.0, 50.0)  # [B, B]
        likelihood = jnp.mean(jax.nn.softplus(-s * phi))
        b = jax.lax.stop_gradient(jnp.sign(codes))
        phi_hat = 0.5 * b @ b.T
        match = jnp.mean(
            (jax.nn.sigmoid(phi) - jax.nn.sigmoid(phi_hat)) ** 2
        )
        return likelihood + lam * match, state

    return HashLoss(_common.stateless_init, apply_fn)
