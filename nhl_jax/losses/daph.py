"""DAPH: asymmetric pairwise likelihood with discrete codes per epoch."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from nhl_jax.hparams import Weight
from nhl_jax.losses import _common
from nhl_jax.types import Array, HashLoss


class DAPHState(NamedTuple):
    """The two branches' banks and their discrete codes B and H.

    Attributes:
      codes: [N, K] float32, U: the latest tanh code of every sample.
      other: [N, K] float32, Z: the other branch's codes (U at the end of
        the previous epoch; random signs before the first).
      labels: [N, C] float32, Y: the label of every sample.
      binary: [N, K] float32 in {-1, +1}, B: U's discrete codes.
      other_binary: [N, K] float32 in {-1, +1}, H: Z's discrete codes.
    """

    codes: Array  # [N, K]
    other: Array  # [N, K]
    labels: Array  # [N, C]
    binary: Array  # [N, K]
    other_binary: Array  # [N, K]


def daph(alpha: Weight = 10.0, gamma: Weight = 10.0, lam: Weight = 0.01,
         beta: Weight = 0.01) -> HashLoss:
    """DAPH's top-branch loss against the other branch's codes.

    With u = tanh(codes) [B, K], z = Z[index] (the other branch's codes of
    the same samples, a constant), theta_ij = u_i . z_j / 2 and s_ij =
    1[y_i . y_j > 0] over the batch:

      L = mean_ij [log(1 + e^theta_ij) - s_ij theta_ij]
          + alpha * mean (u - B[index])^2
          + lam * mean_kl (u^T u / B - I)^2_kl
          + beta * mean_k (sum_i u_ik)^2.

    After every epoch (``epoch_update``): B <- sign(alpha U + gamma H),
    H <- sign(alpha Z + gamma B) (the reference's ``update_B_and_H``), then
    Z <- U.

    Shapes: codes [B, K], labels [B, C], banks [N, K] and [N, C].

    Args:
      alpha: weight of the quantisation term and of U, Z in the B/H update
        (DeepHash-pytorch DAPH.py:19).
      gamma: weight of the other code in the B/H update (DAPH.py:20).
      lam: weight of the bit-independence term (DAPH.py:21).
      beta: weight of the bit-balance term (DAPH.py:22).

    Returns:
      A ``HashLoss`` whose state is a ``DAPHState``, with ``epoch_update``.

    Note:
      DAPH trains two networks in turn, each against the other's fixed
      codes. NHL trains one network, so here the other branch is that
      network as it was one epoch earlier: Z holds its codes from the
      previous epoch (random signs, the reference's initial H, before the
      first) and the alternation becomes the epoch update.

    References:
      Shen et al., "Deep Asymmetric Pairwise Hashing", ACM MM 2017;
      DeepHash-pytorch ``DAPH.py`` ``DAPHLoss`` (lines 57-115).
    """

    def init_fn(key, *, num_train, num_classes, bits):
        b_key, h_key = jax.random.split(key)
        h = _common.random_signs(h_key, (num_train, bits))
        return DAPHState(
            codes=jnp.zeros((num_train, bits), jnp.float32),
            other=h,
            labels=jnp.zeros((num_train, num_classes), jnp.float32),
            binary=_common.random_signs(b_key, (num_train, bits)),
            other_binary=h,
        )

    def apply_fn(state, codes, labels, index):
        _common.check_batch(codes, labels, index)
        u = jnp.tanh(codes)
        state = state._replace(
            codes=state.codes.at[index].set(jax.lax.stop_gradient(u)),
            labels=state.labels.at[index].set(labels),
        )
        theta = 0.5 * u @ state.other[index].T  # [B, B]
        s = _common.similarity(labels, labels)  # [B, B]
        likelihood = jnp.mean(_common.pair_nll(theta, s))
        quant = jnp.mean((u - state.binary[index]) ** 2)
        eye = jnp.eye(u.shape[1], dtype=u.dtype)
        independence = jnp.mean((u.T @ u / u.shape[0] - eye) ** 2)
        balance = jnp.mean(jnp.sum(u, axis=0) ** 2)
        return (likelihood + alpha * quant + lam * independence
                + beta * balance), state

    def epoch_update(state, params):
        del params
        b = jnp.sign(alpha * state.codes + gamma * state.other_binary)
        h = jnp.sign(alpha * state.other + gamma * b)
        return state._replace(binary=b, other_binary=h, other=state.codes)

    return HashLoss(init_fn, apply_fn, epoch_update=epoch_update)
