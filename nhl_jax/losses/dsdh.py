"""DSDH: pairwise likelihood with a bank, discrete codes B and W per epoch."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from nhl_jax.hparams import Count, Weight
from nhl_jax.losses import _common
from nhl_jax.types import Array, HashLoss


class DSDHState(NamedTuple):
    """Banks over the training set and the closed-form B and W.

    Rows of ``codes`` / ``labels`` not yet written are zero (as in the
    reference); ``binary`` and ``w`` are zero until the first
    ``epoch_update``, which is what the reference's update before epoch 0
    produces from its zero banks.

    Attributes:
      codes: [N, K] float32, U: the latest continuous code of every sample.
      labels: [N, C] float32, Y: its label.
      binary: [N, K] float32 in {-1, 0, +1}, B: the discrete codes.
      w: [K, C] float32, W: the linear classifier of B.
      count: [] int32 steps taken, only with a ``warmup`` (else None).
    """

    codes: Array  # [N, K]
    labels: Array  # [N, C]
    binary: Array  # [N, K]
    w: Array  # [K, C]
    count: Array | None = None  # []


def dsdh(mu: Weight = 1.0, nu: Weight = 1.0, eta: Weight = 55.0,
         dcc_iter: Count = 10, *, warmup: _common.Steps = 0,
         bank_codes: _common.BankCodes = 'relaxed') -> HashLoss:
    """Pairwise likelihood over a bank, plus the discrete classification.

    Each step first writes the batch into the banks (U[index] <- sg(u),
    Y[index] <- y); then, with theta_ij = u_i . U_j / 2 over all N rows and
    s_ij = 1[y_i . Y_j > 0]:

      L_l = mean_ij [ log(1 + e^{-|theta_ij|}) + max(theta_ij, 0)
                      - s_ij theta_ij ],
      L = L_l + mu * mean_ic (y_ic - (B_index W)_ic)^2 + nu * mean W^2.

    B and W are the state, so the last two terms are constants for the
    gradient (as in the reference). After every epoch ``epoch_update``
    alternates ``dcc_iter`` times (discrete cyclic coordinate descent):

      W <- (B^T B + nu/mu I)^{-1} B^T Y,                  [K, C]
      P  = Y W^T + (eta/mu) U,                            [N, K]
      B[:, k] <- sign(P[:, k] - B_{:,-k} W_{-k} W_k^T)  for k = 1..K,

    one bit column at a time, each using the columns already updated.

    Shapes: codes u [B, K], labels y [B, C], banks [N, K] and [N, C].

    Args:
      mu: weight of the classification term (DeepHash-pytorch DSDH.py:21).
      nu: weight of the W regulariser (DSDH.py:20).
      eta: weight of U in the B-step (DSDH.py:22).
      dcc_iter: W/B alternations per update (DSDH.py:23).
      warmup: steps of in-batch pairs before the bank is used, a remedy
        for the bank's collapse at large learning rates (0: the paper).
      bank_codes: what the bank stores: ``'relaxed'`` codes (the paper) or
        their ``'sign'``.

    Returns:
      A ``HashLoss`` whose state is a ``DSDHState``, with ``epoch_update``.

    Note:
      The reference (DSDH.py:114) updates B and W before every epoch; the
      first of those sees zero banks and gives B = W = 0, the state this
      ``init`` builds, so updating after every epoch is the same schedule.
      The paper's eta ||b_i - u_i||^2 term is not in the reference's
      network loss (DSDH.py:80) and is not here.

    References:
      Li, Sun, He and Tan, "Deep Supervised Discrete Hashing", NeurIPS 2017;
      DeepHash-pytorch ``DSDH.py`` ``DSDHLoss`` (lines 53-98).
    """

    options = _common.bank_options('dsdh', warmup, bank_codes)

    def init_fn(key, *, num_train, num_classes, bits):
        bank = _common.bank_init_fn(options)(
            key, num_train=num_train, num_classes=num_classes, bits=bits)
        return DSDHState(bank.codes, bank.labels,
                         binary=jnp.zeros((num_train, bits), jnp.float32),
                         w=jnp.zeros((bits, num_classes), jnp.float32),
                         count=bank.count)

    def pair_term(u, labels, others, other_labels):
        theta = 0.5 * u @ others.T  # [B, R]
        s = _common.similarity(labels, other_labels)  # [B, R]
        return jnp.mean(jnp.log1p(jnp.exp(-jnp.abs(theta)))
                        + jnp.maximum(theta, 0.0) - s * theta)

    def apply_fn(state, codes, labels, index):
        _common.check_batch(codes, labels, index)
        likelihood, state = _common.bank_pairs(state, codes, labels, index,
                                               pair_term, options)
        cl = jnp.mean((labels - state.binary[index] @ state.w) ** 2)
        reg = jnp.mean(state.w ** 2)
        return likelihood + mu * cl + nu * reg, state

    def epoch_update(state, params):
        del params
        u, y = state.codes, state.labels
        k = u.shape[1]

        def w_step(b):
            gram = b.T @ b + (nu / mu) * jnp.eye(k, dtype=b.dtype)
            return jnp.linalg.solve(gram, b.T @ y)  # [K, C]

        def b_step(b, w):
            p = y @ w.T + (eta / mu) * u  # [N, K]

            def bit(i, b):
                # B_{:,-i} W_{-i} w_i^T: every other column's contribution.
                q = (w @ w[i]).at[i].set(0.0)  # [K]
                return b.at[:, i].set(jnp.sign(p[:, i] - b @ q))

            return jax.lax.fori_loop(0, k, bit, b)

        def alternate(_, bw):
            b, _ = bw
            w = w_step(b)
            return b_step(b, w), w

        b, w = jax.lax.fori_loop(0, dcc_iter, alternate,
                                 (state.binary, state.w))
        return state._replace(binary=b, w=w)

    return HashLoss(init_fn, apply_fn, epoch_update=epoch_update)
