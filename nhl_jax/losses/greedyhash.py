"""GreedyHash: sign codes with a straight-through gradient and a classifier."""

import jax
import jax.numpy as jnp
import optax

from nhl_jax.hparams import Weight
from nhl_jax.losses import _common
from nhl_jax.types import Array, HashLoss


def linear_init(key, bits: int, num_classes: int) -> Array:
    """[K, C] weights drawn like torch ``nn.Linear``: U(-1/sqrt K, 1/sqrt K)."""
    bound = 1.0 / jnp.sqrt(float(bits))
    return jax.random.uniform(key, (bits, num_classes), jnp.float32,
                              -bound, bound)


def straight_through_sign(u: Array) -> Array:
    """sign(u) forward, identity backward (GreedyHash's hash layer)."""
    return u + jax.lax.stop_gradient(jnp.sign(u) - u)


def greedyhash(alpha: Weight = 0.1) -> HashLoss:
    """Cross-entropy of a linear classifier on sign codes, plus |(|u|-1)^3|.

    With b = sign(u) in the forward pass and db/du = 1 in the backward pass
    (the greedy "sign with straight-through gradient" layer), a classifier
    W [K, C] without bias, trained with the network, and c_i = argmax_c y_ic
    (the reference keeps the first label of a multi-hot row):

      L = mean_i CE(b_i W, c_i) + alpha * mean_ik | (|u_ik| - 1)^3 |.

    Shapes: codes u [B, K], labels y [B, C], params {'w': [K, C]}.

    Args:
      alpha: weight of the cubic quantisation penalty (0.1 in
        DeepHash-pytorch GreedyHash.py:19; 1 there for ImageNet, :50).

    Returns:
      A stateless ``HashLoss`` with ``init_params`` (the classifier W).

    References:
      Su et al., "Greedy Hash: Towards Fast Optimization for Accurate Hash
      Coding in CNN", NeurIPS 2018 (the sign layer with the identity
      backward pass and the cubic penalty); DeepHash-pytorch
      ``GreedyHash.py`` ``GreedyHashLoss`` (lines 55-80).
    """

    def init_params(key, *, num_classes, bits):
        return {'w': linear_init(key, bits, num_classes)}

    def apply_fn(state, codes, labels, index, *, params):
        _common.check_batch(codes, labels, index)
        b = straight_through_sign(codes)
        logits = b @ params['w']  # [B, C]
        target = jnp.argmax(labels, axis=1)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, target)
        penalty = jnp.mean(jnp.abs((jnp.abs(codes) - 1.0) ** 3))
        return jnp.mean(ce) + alpha * penalty, state

    return HashLoss(_common.stateless_init, apply_fn, init_params)
