"""NestedHashLayer and split_codes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nhl_jax import NestedHashLayer, check_bits, split_codes

BITS = (8, 16, 32)


def test_prefix_property():
    layer = NestedHashLayer(64, BITS, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (5, 64))
    h = layer(x)
    assert h.shape == (5, 32)
    codes = split_codes(h, BITS)
    assert [c.shape for c in codes] == [(5, 8), (5, 16), (5, 32)]
    kernel = np.asarray(layer.linear.kernel[...])
    bias = np.asarray(layer.linear.bias[...])
    for b, code in zip(BITS, codes):
        np.testing.assert_allclose(
            code, np.asarray(x) @ kernel[:, :b] + bias[:b], rtol=1e-5,
            atol=1e-6)
        np.testing.assert_array_equal(code, h[:, :b])
    for short, long in zip(codes, codes[1:]):
        np.testing.assert_array_equal(long[:, : short.shape[1]], short)


def test_one_linear_layer_of_the_longest_width():
    layer = NestedHashLayer(2048, (8, 16, 32, 64, 128), rngs=nnx.Rngs(0))
    params = nnx.state(layer, nnx.Param)
    sizes = [p.size for p in jax.tree.leaves(params)]
    assert sum(sizes) == 2048 * 128 + 128
    assert len(sizes) == 2


def test_initialisation_is_normal_001_and_zero_bias():
    layer = NestedHashLayer(2048, (64, 128), rngs=nnx.Rngs(0))
    kernel = np.asarray(layer.linear.kernel[...])
    assert abs(kernel.std() - 0.01) < 5e-4 and abs(kernel.mean()) < 5e-4
    np.testing.assert_array_equal(layer.linear.bias[...], 0.0)


def test_torch_initialisation_is_uniform_within_one_over_sqrt_fan_in():
    # The shapes of test_codes_method_and_jit: one compile fewer.
    layer = NestedHashLayer(16, BITS[:2], rngs=nnx.Rngs(0), init='torch')
    bound = 1.0 / 4.0  # 1 / sqrt(16)
    kernel = np.asarray(layer.linear.kernel[...])
    bias = np.asarray(layer.linear.bias[...])
    for values in (kernel, bias):
        assert np.abs(values).max() <= bound
    # U(-a, a) has std a / sqrt(3) = 0.144 (256 draws: +-0.006); N(0, 0.01)
    # would give 0.01.
    assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.1)
    assert np.abs(bias).max() > bound / 2  # drawn, not zero


def test_normal_init_is_the_default_bit_for_bit():
    default = NestedHashLayer(16, BITS[:2], rngs=nnx.Rngs(0))
    named = NestedHashLayer(16, BITS[:2], rngs=nnx.Rngs(0), init='normal')
    np.testing.assert_array_equal(default.linear.kernel[...],
                                  named.linear.kernel[...])


def test_unknown_init_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown head init 'he'.*normal"):
        NestedHashLayer(16, BITS[:2], rngs=nnx.Rngs(0), init='he')


def test_codes_method_and_jit():
    layer = NestedHashLayer(16, BITS[:2], rngs=nnx.Rngs(0))
    x = jnp.ones((3, 16))
    graphdef, state = nnx.split(layer)
    h = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
    for a, b in zip(layer.codes(x), split_codes(h, BITS[:2])):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize('bits, match', [
    ((16, 8), 'strictly increasing'),
    ((8, 8, 16), 'strictly increasing'),
    ((0, 8), 'positive ints'),
    ((-8, 8), 'positive ints'),
    ((), 'non-empty'),
    ((8.0, 16), 'positive ints'),
    ((True, 16), 'positive ints'),
    ('8,16', 'sorted tuple'),
    (16, 'sorted tuple'),
])
def test_bad_bits_are_rejected(bits, match):
    with pytest.raises(ValueError, match=match):
        check_bits(bits)
    with pytest.raises(ValueError, match=match):
        NestedHashLayer(64, bits, rngs=nnx.Rngs(0))


def test_bits_wider_than_feature_are_rejected():
    with pytest.raises(ValueError, match='wider than the feature'):
        NestedHashLayer(16, (8, 32), rngs=nnx.Rngs(0))


def test_split_codes_checks_width():
    with pytest.raises(AssertionError):
        split_codes(jnp.zeros((2, 16)), BITS)
