"""CSQ: Central Similarity Quantization with Hadamard hash centres."""

import functools

import jax
import jax.numpy as jnp

from nhl_jax.hparams import Count, Weight
from nhl_jax.losses import _centers, _common
from nhl_jax.types import HashLoss


def csq(lam: Weight = 1e-4, *, centers: _centers.Centers = None,
        retries: Count = 20) -> HashLoss:
    """Binary cross-entropy between tanh codes and their class hash centre.

    With v = tanh(u) (inside the loss) and the target t_i of
    ``label_targets`` (the class centre for one-hot labels, the filled sign
    of the centre sum for multi-hot labels):

      L_c = mean_ik BCE((v_ik + 1) / 2, (t_ik + 1) / 2),
      L_q = mean_ik (|v_ik| - 1)^2,
      L = L_c + lam * L_q.

    log p is computed as log sigmoid(2u) (p = (tanh u + 1)/2 = sigmoid(2u)),
    clamped at -100 like torch's BCELoss. This equals the reference wherever
    its float32 p has not rounded to 0 or 1, and stays finite beyond.

    Args:
      lam: weight of the quantisation term.
      centers: ``'independent'`` (the reference, the default: every
        length draws its own table with ``hadamard_centers``), ``'nested'``
        (one table of the longest width whose every prefix is a CSQ table,
        ``_centers.nested_hadamard_centers``), or precomputed centres: a
        [C, K] table in {-1, +1}, or {K: table} for several lengths.
      retries: random fills tried when C > 2K.

    Returns:
      A ``HashLoss`` whose state is a ``CentersState``.

    References:
      Yuan et al., "Central Similarity Quantization for Efficient Image and
      Video Retrieval", CVPR 2020, Algorithm 1.
    """
    build = functools.partial(_common.hadamard_centers, retries=retries)
    build_nested = functools.partial(_centers.nested_hadamard_centers,
                                     retries=retries)

    def terms(state, codes, labels, index):
        """[B, K] binary cross-entropy and quantisation terms."""
        _common.check_batch(codes, labels, index)
        positive = 0.5 * (_common.label_targets(state, labels) + 1.0)
        log_p = jnp.maximum(jax.nn.log_sigmoid(2.0 * codes), -100.0)
        log_not_p = jnp.maximum(jax.nn.log_sigmoid(-2.0 * codes), -100.0)
        bce = -(positive * log_p + (1.0 - positive) * log_not_p)
        return bce, (jnp.abs(jnp.tanh(codes)) - 1.0) ** 2

    def apply_fn(state, codes, labels, index):
        bce, quant = terms(state, codes, labels, index)
        return jnp.mean(bce) + lam * jnp.mean(quant), state

    def masked_fn(state, codes, mask, labels, index):
        bce, quant = terms(state, codes, labels, index)
        return (_common.masked_mean(bce, mask)
                + lam * _common.masked_mean(quant, mask))

    return _centers.centers_loss('csq', centers, apply_fn, build,
                                 build_nested, masked_fn)
