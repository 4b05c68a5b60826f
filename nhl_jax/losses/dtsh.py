"""DTSH: Deep Supervised Hashing with Triplet Labels, vectorised."""

import jax
import jax.numpy as jnp

from nhl_jax.hparams import Margin, Weight
from nhl_jax.losses import _common
from nhl_jax.types import HashLoss


def dtsh(alpha: Margin = 5.0, lam: Weight = 1.0) -> HashLoss:
    """Triplet loss over every (anchor, positive, negative) of the batch.

    With Theta = u u^T (no 1/2 factor, as in the port), P_i = {j : s_ij = 1}
    (i included) and N_i = {j : s_ij = 0}:

      t_ipn = clip(Theta_ip - Theta_in - alpha, -100, 50),
      l_i = mean_{p in P_i, n in N_i} softplus(-t_ipn),
      L = mean_{i valid} l_i + lam * mean_ik (u_ik - sign(u_ik))^2,

    where anchor i is valid if P_i and N_i are both non-empty (L1 = 0 if no
    anchor is). All B^3 triplets are evaluated at once with a [B, B, B] mask
    instead of the reference's Python loop over rows.

    Args:
      alpha: triplet margin.
      lam: weight of the quantisation term.

    Returns:
      A ``HashLoss`` with ``EmptyState``.

    References:
      Wang et al., "Deep Supervised Hashing with Triplet Labels", ACCV 2016.
    """

    def apply_fn(state, codes, labels, index):
        _common.check_batch(codes, labels, index)
        theta = codes @ codes.T  # [B, B]
        pos = _common.similarity(labels, labels)  # [B, B]
        neg = 1.0 - pos
        t = jnp.clip(
            theta[:, :, None] - theta[:, None, :] - alpha, -100.0, 50.0
        )  # [B, P, N]
        mask = pos[:, :, None] * neg[:, None, :]  # [B, P, N]
        count = jnp.sum(mask, axis=(1, 2))  # [B] = |P_i| |N_i|
        per_anchor = jnp.sum(mask * jax.nn.softplus(-t), axis=(1, 2))
        valid = count > 0
        per_anchor = per_anchor / jnp.where(valid, count, 1.0)
        num_valid = jnp.sum(valid)
        triplet = jnp.where(
            num_valid > 0,
            jnp.sum(jnp.where(valid, per_anchor, 0.0))
            / jnp.maximum(num_valid, 1),
            0.0,
        )
        quant = jnp.mean((codes - jnp.sign(codes)) ** 2)
        return triplet + lam * quant, state

    return HashLoss(_common.stateless_init, apply_fn)
