"""SHCIR: softmax over hash centres with a cosine similarity."""

import jax
import jax.numpy as jnp

from nhl_jax.hparams import Weight
from nhl_jax.losses import _common
from nhl_jax.types import HashLoss


def shcir(lam: Weight = 1e-4, *, centers=None) -> HashLoss:
    """Scaled-cosine softmax towards the class centre, away from the rest.

    With the cosines c_ij = cos(u_i, h_j) to the C centres h_j, e_ij =
    exp(sqrt(K) c_ij), the positive classes P_i = {p : y_ip = 1} and the
    negatives N_i, for each p in P_i with Z_ip = e_ip + sum_{n in N_i} e_in:

      l_ip = log(e_ip / Z_ip)
             + 1 / (C - 1) sum_{n in N_i} log(1 - e_in / Z_ip),
      L = -mean_i mean_{p in P_i} l_ip + lam * mean_ik (|u_ik| - 1)^2.

    For one-hot labels this is the reference's loss exactly; the mean over
    several positives is this library's multi-label extension (the
    reference handles one positive only). A sample without a label adds 0.

    The reference loads centres optimised offline from a classifier head
    (``SHCIR_cg.py``); here they are given through ``centers`` or, by
    default, built like CSQ's (Hadamard rows, balanced random rows beyond
    2K), so the loss runs without that extra stage.

    Args:
      lam: weight of the quantisation term.
      centers: optional precomputed centres in {-1, +1}: one [C, K] table,
        or {K: table} for several lengths.

    Returns:
      A ``HashLoss`` whose state is a ``CentersState`` (``fill`` unused).

    References:
      SHCIR as released with the NHL code (NHL, arXiv 2412.08922):
      hly1998/NHL ``bit_length/SHCIR.py``, whose defaults these are (that
      code names no paper for it).
    """

    def init_fn(key, *, num_train, num_classes, bits):
        del num_train
        return _common.centers_state(
            key, num_classes, bits, _common.hadamard_centers, centers
        )

    def apply_fn(state, codes, labels, index):
        _common.check_batch(codes, labels, index)
        k, c = codes.shape[-1], labels.shape[-1]
        cos = _common.l2_normalize(codes) @ _common.l2_normalize(
            state.centers
        ).T  # [B, C]
        logits = jnp.sqrt(float(k)) * cos
        pos = labels > 0  # [B, C]
        # A finite stand-in for -inf keeps the gradient of logsumexp finite
        # when a sample has no negative class.
        neg_logits = jnp.where(pos, -1e30, logits)
        log_neg = jax.nn.logsumexp(neg_logits, axis=-1, keepdims=True)
        log_z = jnp.logaddexp(logits, log_neg)  # [B, C]: log Z_ip per p
        log_pos = logits - log_z
        # log(1 - e_in / Z_ip) = log((Z_ip - e_in) / Z_ip), for n in N_i.
        ratio = jnp.exp(logits[:, None, :] - log_z[:, :, None])  # [B, P, N]
        log_rest = jnp.log1p(-jnp.where(pos[:, None, :], 0.0, ratio))
        per_pos = log_pos + jnp.sum(log_rest, axis=-1) / max(c - 1, 1)
        num_pos = jnp.sum(pos, axis=-1)
        per_sample = jnp.sum(jnp.where(pos, per_pos, 0.0), -1) / jnp.maximum(
            num_pos, 1
        )
        quant = jnp.mean((jnp.abs(codes) - 1.0) ** 2)
        return -jnp.mean(per_sample) + lam * quant, state

    return HashLoss(init_fn, apply_fn)
