"""A base loss with its own parameters and an epoch update, for the tests.

``classifier``: a linear classifier W [K, C] on tanh(codes), trained with
the network (cross-entropy), plus an epoch counter and the sign of the last
batch's mean code as its closed-form "epoch update"; small enough to check
by hand, and it exercises every part of the ``HashLoss`` extension.
"""

import jax
import jax.numpy as jnp
import optax

from nhl_jax.types import HashLoss


def classifier(scale: float = 0.01) -> HashLoss:
    """The toy loss (module docstring)."""

    def init(key, *, num_train, num_classes, bits):
        del key, num_train, num_classes
        return {'epochs': jnp.zeros((), jnp.int32),
                'mean': jnp.zeros((bits,), jnp.float32)}

    def init_params(key, *, num_classes, bits):
        return {'w': scale * jax.random.normal(key, (bits, num_classes))}

    def apply(state, codes, labels, index, *, params):
        del index
        logits = jnp.tanh(codes) @ params['w']
        value = optax.softmax_cross_entropy(
            logits, labels / labels.sum(1, keepdims=True)).mean()
        mean = jax.lax.stop_gradient(jnp.tanh(codes).mean(0))
        return value, dict(state, mean=mean)

    def epoch_update(state, params):
        del params
        return dict(state, epochs=state['epochs'] + 1,
                    mean=jnp.sign(state['mean']))

    return HashLoss(init, apply, init_params, epoch_update)
