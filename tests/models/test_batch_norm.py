"""BatchNorm with per-device statistics (``--config.sync_batch_stats``)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nhl_jax.models import batch_norm, layers


def make(cls=batch_norm.BatchNorm):
    """torch_batch_norm's settings, with a scale and bias that act."""
    norm = cls(3, epsilon=1e-5, momentum=0.9, use_fast_variance=False,
               rngs=nnx.Rngs(0))
    norm.scale[...] = jnp.array([0.5, 2.0, -1.0])
    norm.bias[...] = jnp.array([0.1, -0.3, 0.0])
    return norm


def images():
    """[8, 2, 2, 3]: 4 groups of 2 rows, each with its own offset."""
    x = jax.random.normal(jax.random.key(0), (8, 2, 2, 3))
    return x + jnp.repeat(jnp.arange(4.0), 2)[:, None, None, None]


def test_one_group_is_nnx_batch_norm():
    assert isinstance(layers.torch_batch_norm(3, dtype=None,
                                              rngs=nnx.Rngs(0)),
                      batch_norm.BatchNorm)
    norm, reference = make(), make(nnx.BatchNorm)
    with batch_norm.per_device_statistics(1):
        np.testing.assert_array_equal(norm(images()), reference(images()))
    for name in ('mean', 'var'):
        np.testing.assert_array_equal(getattr(norm, name)[...],
                                      getattr(reference, name)[...])


def test_each_group_is_normalised_alone():
    x, norm = images(), make()
    with batch_norm.per_device_statistics(4):
        got = norm(x)
    alone = [make(nnx.BatchNorm) for _ in range(4)]
    want = jnp.concatenate([g(x[2 * i:2 * i + 2])
                            for i, g in enumerate(alone)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The running averages follow the mean of the groups' statistics.
    for name in ('mean', 'var'):
        np.testing.assert_allclose(
            getattr(norm, name)[...],
            np.mean([getattr(g, name)[...] for g in alone], axis=0),
            rtol=1e-6, atol=1e-7)


def test_eval_mode_reads_the_running_averages_in_the_context():
    norm, reference = make(), make(nnx.BatchNorm)
    norm.eval()
    reference.eval()
    with batch_norm.per_device_statistics(4):
        np.testing.assert_array_equal(norm(images()), reference(images()))
