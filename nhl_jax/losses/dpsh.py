"""DPSH: Deep Pairwise-Supervised Hashing with a memory bank."""

import jax.numpy as jnp

from nhl_jax.hparams import Weight
from nhl_jax.losses import _common
from nhl_jax.types import HashLoss


def dpsh(alpha: Weight = 0.1, *, warmup: _common.Steps = 0,
         bank_codes: _common.BankCodes = 'relaxed') -> HashLoss:
    """Pairwise logistic likelihood against a bank, squared quantisation.

    Each step first writes the batch into the bank (U[index] <- sg(u),
    Y[index] <- y), then, with theta_ij = u_i . U_j / 2 over all N rows and
    s_ij = 1[y_i . Y_j > 0]:

      L = mean_ij [ log(1 + e^theta_ij) - s_ij theta_ij ]
          + alpha * mean_ik (u_ik - sign(u_ik))^2.

    Args:
      alpha: weight of the quantisation term (eta in the paper).
      warmup: steps of in-batch pairs before the bank is used, a remedy
        for the bank's collapse at large learning rates (0: the paper).
      bank_codes: what the bank stores: ``'relaxed'`` codes (the paper) or
        their ``'sign'``.

    Returns:
      A ``HashLoss`` whose state is a ``BankState`` ([N, K] codes, [N, C]
      labels).

    References:
      Li et al., "Feature Learning based Deep Supervised Hashing with
      Pairwise Labels", IJCAI 2016 (relaxed objective with quantisation);
      defaults of swuxyj/DeepHash-pytorch ``DPSH.py``.
    """

    options = _common.bank_options('dpsh', warmup, bank_codes)

    def apply_fn(state, codes, labels, index):
        _common.check_batch(codes, labels, index)
        likelihood, bank = _common.bank_pair_likelihood(
            state, codes, labels, index, options)
        quant = jnp.mean((codes - jnp.sign(codes)) ** 2)
        return likelihood + alpha * quant, bank

    return HashLoss(_common.bank_init_fn(options), apply_fn)
