"""Similarity-preserving cascade distillation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax.nhl import distill
from tests.support import references as ref


def _outputs(seed=0, bits=(4, 8, 16), batch=6):
    key = jax.random.key(seed)
    h = jax.random.normal(key, (batch, bits[-1]))
    return tuple(h[:, :b] for b in bits)


def test_matches_reference():
    short, _, long = _outputs()
    np.testing.assert_allclose(distill.similarity_distill(short, long),
                               ref.sp_distill(short, long), rtol=1e-5,
                               atol=1e-7)


@pytest.mark.parametrize('seed', [0, 1])
def test_row_sums_of_a_sharded_batch_equal_the_gram_matrices(seed):
    # batch_shards > 1: [K, K] sums over rows instead of [B, B] Gram
    # matrices (issue 32); the same loss and gradient to float rounding.
    short, _, long = _outputs(seed, batch=24)
    long = long.at[3].set(0.0)  # a zero row: normalised by eps, no NaN

    def grad(shards):
        return jax.jit(jax.value_and_grad(functools.partial(
            distill.similarity_distill, batch_shards=shards)))(short, long)

    (value, g), (value4, g4) = grad(1), grad(4)
    np.testing.assert_allclose(value4, value, rtol=1e-5)
    np.testing.assert_allclose(g4, g, rtol=1e-4, atol=1e-8)
    assert np.abs(g).sum() > 0
    with pytest.raises(ValueError, match='batch_shards must be an int >= 1'):
        distill.cascade_distill((short, long), batch_shards=1.0)


def test_teacher_gets_zero_gradient_student_does_not():
    short, _, long = _outputs(1)
    g_short, g_long = jax.grad(distill.similarity_distill, argnums=(0, 1))(
        short, long)
    np.testing.assert_array_equal(g_long, 0.0)
    assert np.abs(g_short).sum() > 0


def test_zero_when_normalised_grams_are_equal():
    short, _, _ = _outputs(2)
    padded = jnp.concatenate([short, jnp.zeros_like(short)], axis=1)
    np.testing.assert_allclose(distill.similarity_distill(short, padded), 0.0,
                               atol=1e-7)
    # Scaling the teacher scales its Gram rows, which normalisation removes.
    np.testing.assert_allclose(distill.similarity_distill(short, 3 * padded),
                               0.0, atol=1e-7)


def test_cascade_is_adjacent_long_to_short():
    outs = _outputs(3, bits=(2, 4, 8, 16))
    terms = distill.cascade_distill(outs)
    assert terms.shape == (3,)
    for k in range(3):
        np.testing.assert_allclose(
            terms[k], ref.sp_distill(outs[k], outs[k + 1]), rtol=1e-5,
            atol=1e-7)
    assert distill.cascade_distill(outs[:1]).shape == (0,)


def test_other_topologies():
    outs = _outputs(4, bits=(2, 4, 8))
    longest = distill.cascade_distill(outs, topology='longest_only')
    every = distill.cascade_distill(outs, topology='all_longer')
    np.testing.assert_allclose(longest[0], ref.sp_distill(outs[0], outs[2]),
                               rtol=1e-5)
    np.testing.assert_allclose(
        every[0],
        (ref.sp_distill(outs[0], outs[1])
         + ref.sp_distill(outs[0], outs[2])) / 2,
        rtol=1e-5)
    np.testing.assert_allclose(every[1], longest[1], rtol=1e-6)


def test_unknown_topology():
    with pytest.raises(ValueError, match=r"topology 'ring'.*adjacent"):
        distill.cascade_distill(_outputs(), topology='ring')


def test_jit_equals_eager():
    outs = _outputs(5)
    np.testing.assert_allclose(jax.jit(distill.cascade_distill)(outs),
                               distill.cascade_distill(outs), rtol=1e-6)
