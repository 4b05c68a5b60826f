"""A tiny two-layer model and toy loss for the tests of the NHL objective.

Shared by tests/nhl/test_objective.py and tests/nhl/test_baselines.py.
"""

import jax
import jax.numpy as jnp
import numpy as np

from nhl_jax import losses
from nhl_jax.nhl import distill, label_bank

BITS = (4, 8, 16)
B, C, N, D_IN, D = 8, 3, 16, 6, 12


def setup(seed=0):
    rng = np.random.default_rng(seed)
    params = {
        'body': jnp.asarray(rng.standard_normal((D_IN, D)), jnp.float32),
        'head': {
            # Small, as at initialisation: near h = 0 the per-length targets
            # decide the gradient signs, so lengths can conflict.
            'kernel': jnp.asarray(0.05 * rng.standard_normal((D, BITS[-1])),
                                  jnp.float32),
            'bias': jnp.asarray(0.1 * rng.standard_normal(BITS[-1]),
                                jnp.float32),
        },
    }
    x = jnp.asarray(rng.standard_normal((B, D_IN)), jnp.float32)
    labels = jnp.asarray(np.eye(C)[rng.integers(0, C, B)], jnp.float32)
    index = jnp.asarray(rng.permutation(N)[:B], jnp.int32)
    return params, x, labels, index


def forward(params, x):
    features = jnp.tanh(x @ params['body'])
    head = params['head']
    return features, features @ head['kernel'] + head['bias'][None, :]


def toy_loss():
    """A user-defined HashLoss pulling each length towards its own target.

    The shortest length's target is positive and the longer ones' negative,
    so near h = 0 the longer lengths anti-dominate the shortest one.
    """

    def init(key, *, num_train, num_classes, bits):
        del num_train, num_classes
        sign = 1.0 if bits == BITS[0] else -1.0
        return sign * (2.0 + jax.random.uniform(key, (bits,)))

    def apply(state, codes, labels, index):
        del labels, index
        return jnp.sum(jnp.mean((codes - state[None, :]) ** 2, 0)), state

    def masked(state, codes, mask, labels, index):
        # The state zero-padded beyond the length: its columns are masked.
        del labels, index
        return jnp.sum(mask * jnp.mean((codes - state[None, :]) ** 2, 0))

    return losses.HashLoss(init, apply, masked=masked)


def per_length(loss, states, params, x, labels, index, lam):
    """[M] objectives built directly from the pieces (independent of apply).

    ``states`` as the objective keeps them (one label bank) or each
    length's full state.
    """
    _, h = forward(params, x)
    codes = [h[:, :b] for b in BITS]
    base = [loss.apply(s, c, labels, index)[0]
            for s, c in zip(label_bank.attach(states), codes)]
    dis = [distill.similarity_distill(codes[k], codes[k + 1])
           for k in range(len(BITS) - 1)] + [0.0]
    return jnp.stack([b + lam * d for b, d in zip(base, dis)])
