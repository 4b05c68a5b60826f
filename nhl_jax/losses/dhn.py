"""DHN: Deep Hashing Network, pairwise likelihood with a memory bank."""

import jax.numpy as jnp

from nhl_jax.hparams import Weight
from nhl_jax.losses import _common
from nhl_jax.types import Array, HashLoss


def dhn(alpha: Weight = 0.1, *, warmup: _common.Steps = 0,
        bank_codes: _common.BankCodes = 'relaxed') -> HashLoss:
    """Pairwise logistic likelihood against a bank, log-cosh quantisation.

    Each step first writes the batch into the bank (U[index] <- sg(u),
    Y[index] <- y), then, with theta_ij = u_i . U_j / 2 over all N rows and
    s_ij = 1[y_i . Y_j > 0]:

      L = mean_ij [ log(1 + e^theta_ij) - s_ij theta_ij ]
          + alpha * mean_ik log cosh(|u_ik| - 1).

    Args:
      alpha: weight of the log-cosh quantisation term.
      warmup: steps of in-batch pairs before the bank is used, a remedy
        for the bank's collapse at large learning rates (0: the paper).
      bank_codes: what the bank stores: ``'relaxed'`` codes (the paper) or
        their ``'sign'``.

    Returns:
      A ``HashLoss`` whose state is a ``BankState`` ([N, K] codes, [N, C]
      labels).

    References:
      Zhu et al., "Deep Hashing Network for Efficient Similarity Retrieval",
      AAAI 2016: the pairwise cross-entropy and the smooth (log cosh)
      quantisation loss of its objective; defaults of hly1998/NHL
      ``bit_length/DHN.py``.
    """

    options = _common.bank_options('dhn', warmup, bank_codes)

    def apply_fn(state, codes, labels, index):
        _common.check_batch(codes, labels, index)
        likelihood, bank = _common.bank_pair_likelihood(
            state, codes, labels, index, options)
        quant = jnp.mean(log_cosh(jnp.abs(codes) - 1.0))
        return likelihood + alpha * quant, bank

    return HashLoss(_common.bank_init_fn(options), apply_fn)


def log_cosh(x: Array) -> Array:
    """log cosh(x) = |x| + log(1 + e^(-2|x|)) - log 2, finite for any x."""
    a = jnp.abs(x)
    return a + jnp.log1p(jnp.exp(-2.0 * a)) - jnp.log(2.0)
