"""The small batches every base-loss test draws: shapes and label kinds."""

import jax
import jax.numpy as jnp
import numpy as np

from nhl_jax import losses

B, C, K, N = 6, 3, 8, 12
D = 5  # feature width of the losses that read features
KINDS = ['onehot', 'multihot', 'single_class']


def labels(rng, kind, rows=B):
    """[rows, C] labels: one-hot, multi-hot, or one class (no negatives)."""
    if kind == 'onehot':
        return np.eye(C, dtype=np.float32)[rng.integers(0, C, rows)]
    if kind == 'multihot':
        y = (rng.random((rows, C)) < 0.4).astype(np.float32)
        y[np.arange(rows), rng.integers(0, C, rows)] = 1.0  # >= 1 per row
        return y
    return np.eye(C, dtype=np.float32)[np.zeros(rows, int)]


def batch(seed=0, kind='multihot', scale=1.5):
    """(codes [B, K] float32, labels [B, C], index [B] int32 rows of N)."""
    rng = np.random.default_rng(seed)
    codes = (scale * rng.standard_normal((B, K))).astype(np.float32)
    index = rng.permutation(N)[:B].astype(np.int32)
    return codes, labels(rng, kind), index


def loss_state(name, seed=0):
    """A state as ``init`` builds it, with a non-empty DSH bank."""
    state = losses.get(name).init(
        jax.random.key(seed), num_train=N, num_classes=C, bits=K
    )
    if isinstance(state, losses.DSHState):
        rng = np.random.default_rng(seed + 1)
        state = losses.DSHState(
            codes=jnp.asarray(rng.standard_normal((N, K)), jnp.float32),
            labels=jnp.asarray(np.eye(C)[rng.integers(0, C, N)], jnp.float32),
        )
    if isinstance(state, losses.DAPHState):
        rng = np.random.default_rng(seed + 1)
        signs = lambda: jnp.asarray(rng.choice([-1.0, 1.0], (N, K)),
                                    jnp.float32)
        state = losses.DAPHState(
            codes=jnp.asarray(rng.uniform(-1, 1, (N, K)), jnp.float32),
            other=jnp.asarray(rng.uniform(-1, 1, (N, K)), jnp.float32),
            labels=jnp.asarray(np.eye(C)[rng.integers(0, C, N)], jnp.float32),
            binary=signs(), other_binary=signs())
    if isinstance(state, losses.DSDHState):
        rng = np.random.default_rng(seed + 1)
        state = losses.DSDHState(
            codes=jnp.asarray(rng.standard_normal((N, K)), jnp.float32),
            labels=jnp.asarray(np.eye(C)[rng.integers(0, C, N)], jnp.float32),
            binary=jnp.asarray(rng.choice([-1.0, 1.0], (N, K)), jnp.float32),
            w=jnp.asarray(0.3 * rng.standard_normal((K, C)), jnp.float32),
        )
    return state


def apply_kwargs(name, seed=0):
    """The keyword arguments of ``apply``: ``params`` and ``features``.

    ``params`` for a loss with ``init_params``, ``features`` [B, D] for a
    loss that reads them; ``{}`` for the others.
    """
    loss = losses.get(name)
    kw = {}
    if loss.init_params is not None:
        kw['params'] = loss.init_params(jax.random.key(seed + 100),
                                        num_classes=C, bits=K)
    if loss.features:
        rng = np.random.default_rng(seed + 200)
        kw['features'] = rng.standard_normal((B, D)).astype(np.float32)
    return kw
