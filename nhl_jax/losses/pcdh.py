"""PCDH: contrastive pairs on codes and on features, and a classifier."""

import jax
import jax.numpy as jnp
import optax

from nhl_jax.hparams import Weight
from nhl_jax.losses import _common
from nhl_jax.losses.greedyhash import linear_init
from nhl_jax.types import Array, HashLoss


def contrastive(x: Array, labels: Array, margin: float) -> Array:
    """mean_ij [(1 - d_ij) D_ij / 2 + d_ij max(0, m - D_ij)^2 / 2], [B, B].

    D_ij = ||x_i - x_j||^2 and d_ij = 1[y_i . y_j = 0] (PCDH's pair term,
    the hinge squared unlike DSH's).
    """
    dist = _common.squared_distances(x, x)
    d = 1.0 - _common.similarity(labels, labels)
    return jnp.mean(0.5 * (1.0 - d) * dist
                    + 0.5 * d * jnp.maximum(margin - dist, 0.0) ** 2)


def pcdh(alpha: Weight = 1.0, beta: Weight = 1.0, *,
         multi_label: bool = False) -> HashLoss:
    """Pairwise correlation on codes and features, plus a code classifier.

    With h = tanh(codes) [B, K], the backbone features f [B, D], m = 2K,
    b = sign(h) (a constant: the reference thresholds it, so no gradient
    passes) and a classifier W [K, C] without bias:

      L = contrastive(h, m) + alpha * contrastive(f, m) + beta * L_c(b W),

    L_c = -sum_c y_c log softmax(b W)_c, summed over every positive label
    (the reference's branch for all datasets but NUS-WIDE: with one-hot
    labels the usual cross-entropy, with multi-hot ones not divided by the
    label count) or, with ``multi_label``, the sum over classes of the
    logistic loss (its NUS-WIDE branch).

    Shapes: codes [B, K], labels [B, C], features [B, D], params
    {'w': [K, C]}.

    Args:
      alpha: weight of the feature-level pair term (DeepHash-pytorch
        PCDH.py:21).
      beta: weight of the classification term (PCDH.py:22).
      multi_label: the logistic L_c of the reference's NUS-WIDE branch.

    Returns:
      A stateless ``HashLoss`` with ``init_params`` (W) that reads the
      features (``features=True``).

    Note:
      In the reference, L_c's gradient stops at the threshold, so it
      trains W only, and the discrete layer between h and b is never
      trained (its codes are a fixed random mix of h). Here b = sign(h),
      the code every NHL length is evaluated with, and L_c keeps the
      reference's gradient: W only. The feature term sees the hash layer's
      input (256-d for the small CNN, 1024-d in the reference).

    References:
      Ma et al., "Deep discrete hashing with pairwise correlation learning",
      Neurocomputing 2020; DeepHash-pytorch ``PCDH.py`` ``PCDHLoss``
      (lines 84-104; L_c at lines 98-101).
    """

    def init_params(key, *, num_classes, bits):
        return {'w': linear_init(key, bits, num_classes)}

    def classification(logits, labels):
        if multi_label:
            return jnp.mean(jnp.sum(
                optax.sigmoid_binary_cross_entropy(logits, labels), axis=1))
        # PCDH.py:101: every positive label, not only the first.
        return jnp.mean(optax.softmax_cross_entropy(logits, labels))

    def apply_fn(state, codes, labels, index, *, params, features):
        _common.check_batch(codes, labels, index)
        margin = 2.0 * codes.shape[-1]
        h = jnp.tanh(codes)
        b = jax.lax.stop_gradient(jnp.sign(h))
        value = (contrastive(h, labels, margin)
                 + alpha * contrastive(features, labels, margin)
                 + beta * classification(b @ params['w'], labels))
        return value, state

    return HashLoss(_common.stateless_init, apply_fn, init_params,
                    features=True)
