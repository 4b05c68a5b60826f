"""MDSH: the hash-centre term of Maximum-Distance Supervised Hashing."""

import jax
import jax.numpy as jnp

from nhl_jax.hparams import Weight
from nhl_jax.losses import _common
from nhl_jax.types import Array, HashLoss


def mdsh(lam: Weight = 1e-4, *, centers=None) -> HashLoss:
    """BCE on a softmax over scaled cosines to the class centres.

    With p_i = softmax_c(sqrt(K) cos(u_i, z_c)):

      L_c = -mean_ic [ y_ic log p_ic + (1 - y_ic) log(1 - p_ic) ],
      L_q = mean_ik (|u_ik| - 1)^2,
      L = L_c + lam * L_q.

    The momentum pair term of MDSH is off in the NHL code (its epoch
    argument is forced below ``epoch_change``) and is not implemented here.
    log(1 - p_ic) is computed as a log-sum-exp over the other classes, so it
    stays finite where the reference's float32 ``log(1 - p)`` is -inf.

    Default centres follow the starting point of the reference's centre
    search (``MDSH_cg.py``): CSQ Hadamard centres for K <= 64, uniform random
    signs for K > 64. The reference then refines K <= 64 centres with an
    ADMM l_p-box search offline; pass its ``init_<C>_<K>.npy`` tables (or any
    [C, K] ±1 table) through ``centers`` to use them.

    Args:
      lam: weight of the quantisation term.
      centers: optional precomputed centres: a [C, K] table in {-1, +1},
        or {K: table} for several lengths.

    Returns:
      A ``HashLoss`` whose state is a ``CentersState`` (``fill`` unused).

    References:
      Wang et al., "Deep Hashing with Minimal-Distance-Separated Hash
      Centers", CVPR 2023, and ``bit_length/MDSH.py`` of hly1998/NHL.
    """

    def init_fn(key, *, num_train, num_classes, bits):
        del num_train
        return _common.centers_state(key, num_classes, bits, _build, centers)

    def apply_fn(state, codes, labels, index):
        _common.check_batch(codes, labels, index)
        k = codes.shape[-1]
        cos = _common.l2_normalize(codes) @ _common.l2_normalize(
            state.centers
        ).T  # [B, C]
        log_p, log_not_p = _log_softmax_pair(jnp.sqrt(k) * cos)
        bce = -(labels * log_p + (1.0 - labels) * log_not_p)
        quant = (jnp.abs(codes) - 1.0) ** 2
        return jnp.mean(bce) + lam * jnp.mean(quant), state

    return HashLoss(init_fn, apply_fn)


def _build(key, num_classes, bits):
    if bits > 64:
        return _common.random_signs(key, (num_classes, bits))
    return _common.hadamard_centers(key, num_classes, bits)


def _log_softmax_pair(logits: Array) -> tuple[Array, Array]:
    """log p and log(1 - p) of softmax(logits) over the last axis [B, C]."""
    c = logits.shape[-1]
    log_p = jax.nn.log_softmax(logits, axis=-1)
    others = jnp.where(
        jnp.eye(c, dtype=bool)[None], -jnp.inf, logits[:, None, :]
    )  # [B, C, C]: row c masks class c out
    log_not_p = jax.nn.logsumexp(others, axis=-1) - jax.nn.logsumexp(
        logits, axis=-1, keepdims=True
    )
    return log_p, log_not_p
