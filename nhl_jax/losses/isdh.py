"""ISDH: Instance Similarity Deep Hashing for multi-label retrieval."""

import jax
import jax.numpy as jnp

from nhl_jax.hparams import Scale, Weight
from nhl_jax.losses import _common
from nhl_jax.types import HashLoss


def isdh(alpha: Scale = 0.5, gamma: Weight = 10.0, lam: Weight = 0.1, *,
         warmup: _common.Steps = 0,
         bank_codes: _common.BankCodes = 'relaxed') -> HashLoss:
    """Weighted cross-entropy on hard pairs, sigmoid MSE on soft pairs.

    The codes are squashed, v = u / (|u| + 1) elementwise. Each step writes
    v into the bank (U[index] <- sg(v), Y[index] <- y), then over all N
    rows, with the cosine label similarity s_ij = y_i . Y_j / (||y_i||
    ||Y_j|| + 1e-5), the hard-pair mask m_ij = 1[s_ij > 0.99] +
    1[s_ij < 0.01] and theta_ij = alpha v_i . U_j:

      l_ij = log(1 + e^theta_ij) - s_ij theta_ij,
      L = mean_ij [ gamma m_ij l_ij + (1 - m_ij) (s_ij - sigmoid(theta_ij))^2 ]
          + lam * mean_ik | |v_ik| - 1 |.

    Args:
      alpha: scale of the inner product.
      gamma: weight of the cross-entropy on the hard pairs.
      lam: weight of the quantisation term.
      warmup: steps of in-batch pairs before the bank is used, a remedy
        for the bank's collapse at large learning rates (0: the paper).
      bank_codes: what the bank stores: ``'relaxed'`` codes (the paper) or
        their ``'sign'``.

    Returns:
      A ``HashLoss`` whose state is a ``BankState`` ([N, K] squashed codes,
      [N, C] labels).

    References:
      Zhang et al., "Instance Similarity Deep Hashing for Multi-Label Image
      Retrieval", arXiv 1803.02987v1, 2018; defaults of
      swuxyj/DeepHash-pytorch ``ISDH.py``.
    """

    options = _common.bank_options('isdh', warmup, bank_codes)

    def pair_term(v, labels, others, other_labels):
        p = _common.soft_pairs(v, labels, others, other_labels, alpha)
        squared = (p.s - jax.nn.sigmoid(p.theta)) ** 2
        return jnp.mean(gamma * p.hard * p.cross + (1.0 - p.hard) * squared)

    return HashLoss(_common.bank_init_fn(options),
                    _common.squashed_bank_apply(pair_term, lam, options))
