"""DBDH: Deep Balanced Discrete Hashing, pairwise likelihood + balance."""

from typing import Literal

import jax.numpy as jnp

from nhl_jax.hparams import Weight
from nhl_jax.losses import _common
from nhl_jax.types import HashLoss


def dbdh(alpha: Weight = 0.1, p: Literal[1, 2] = 2, *,
         warmup: _common.Steps = 0,
         bank_codes: _common.BankCodes = 'relaxed') -> HashLoss:
    """DPSH-style likelihood on clipped codes with a bit-balance penalty.

    The codes are clipped, v = clip(u, -1, 1) (straight pass inside the box,
    zero gradient outside). Each step writes v into the bank (U[index] <-
    sg(v), Y[index] <- y), then, with theta_ij = v_i . U_j / 2 over all N
    rows and s_ij = 1[y_i . Y_j > 0]:

      L = mean_ij [ log(1 + e^theta_ij) - s_ij theta_ij ]
          + alpha * mean_i | mean_k v_ik |^p,

    where the second term pushes every code towards as many +1 as -1 bits.

    Args:
      alpha: weight of the balance term.
      p: 1 (absolute value) or 2 (square) in the balance term.
      warmup: steps of in-batch pairs before the bank is used, a remedy
        for the bank's collapse at large learning rates (0: the paper).
      bank_codes: what the bank stores: ``'relaxed'`` codes (the paper) or
        their ``'sign'``.

    Returns:
      A ``HashLoss`` whose state is a ``BankState`` ([N, K] codes, [N, C]
      labels).

    References:
      Zheng et al., "Deep Balanced Discrete Hashing for Image Retrieval",
      Neurocomputing 2020; defaults of hly1998/NHL ``bit_length/DBDH.py``.
    """
    if p not in (1, 2):
        raise ValueError(f'dbdh: p must be 1 or 2, got {p!r}.')

    options = _common.bank_options('dbdh', warmup, bank_codes)

    def apply_fn(state, codes, labels, index):
        _common.check_batch(codes, labels, index)
        v = jnp.clip(codes, -1.0, 1.0)
        likelihood, bank = _common.bank_pair_likelihood(state, v, labels,
                                                        index, options)
        balance = jnp.mean(jnp.abs(jnp.mean(v, axis=1)) ** p)
        return likelihood + alpha * balance, bank

    return HashLoss(_common.bank_init_fn(options), apply_fn)
