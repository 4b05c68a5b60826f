"""Multi-length heads: shapes, parameter counts, the cascade chain, registry."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nhl_jax import models
from nhl_jax.models import heads

B, D = 5, 32
BITS = (4, 8, 16)


def _features(seed=1):
    return jax.random.normal(jax.random.key(seed), (B, D))


def _kernel_bias(linear):
    return np.asarray(linear.kernel[...]), np.asarray(linear.bias[...])


def _num_params(module):
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize('name', sorted(heads.HEADS))
def test_codes_are_one_pre_tanh_output_per_length(name):
    head = heads.get_head(name)(D, BITS, rngs=nnx.Rngs(0))
    codes = head.codes(_features())
    assert isinstance(codes, tuple)
    assert [c.shape for c in codes] == [(B, b) for b in BITS]
    assert all(c.dtype == jnp.float32 for c in codes)
    # Pre-tanh: linear outputs are not squashed into (-1, 1).
    big = head.codes(100.0 * _features())
    assert max(float(jnp.max(jnp.abs(c))) for c in big) > 1.0


def test_flat_heads_are_independent_linears():
    head = heads.FlatHeads(D, BITS, rngs=nnx.Rngs(0))
    x = np.asarray(_features())
    for b, code, linear in zip(BITS, head.codes(jnp.asarray(x)),
                               head.linears):
        kernel, bias = _kernel_bias(linear)
        assert kernel.shape == (D, b)
        np.testing.assert_allclose(code, x @ kernel + bias, rtol=1e-5,
                                   atol=1e-5)
    assert _num_params(head) == D * sum(BITS) + sum(BITS)


def test_cascade_chains_long_to_short_on_pre_tanh_outputs():
    head = heads.CascadeHeads(D, BITS, rngs=nnx.Rngs(0))
    x = np.asarray(_features())
    codes = [np.asarray(c) for c in head.codes(jnp.asarray(x))]
    kernel, bias = _kernel_bias(head.linears[-1])
    assert kernel.shape == (D, 16)
    np.testing.assert_allclose(codes[-1], x @ kernel + bias, rtol=1e-5,
                               atol=1e-5)
    for k in range(len(BITS) - 1):  # z_k = W_k z_{k+1} + c_k, no tanh
        kernel, bias = _kernel_bias(head.linears[k])
        assert kernel.shape == (BITS[k + 1], BITS[k])
        np.testing.assert_allclose(codes[k], codes[k + 1] @ kernel + bias,
                                   rtol=1e-5, atol=1e-5)
    assert _num_params(head) == (D * 16 + 16) + (16 * 8 + 8) + (8 * 4 + 4)


def test_cascade_short_code_depends_on_the_long_head():
    head = heads.CascadeHeads(D, BITS, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(head, nnx.Param)

    def shortest(p):
        return jnp.sum(nnx.merge(graphdef, p).codes(_features())[0] ** 2)

    grads = jax.grad(shortest)(params)
    longest = grads['linears'][len(BITS) - 1]['kernel'][...]
    assert float(jnp.max(jnp.abs(longest))) > 0.0
    flat = heads.FlatHeads(D, BITS, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(flat, nnx.Param)
    grads = jax.grad(lambda p: jnp.sum(
        nnx.merge(graphdef, p).codes(_features())[0] ** 2))(params)
    assert float(jnp.max(jnp.abs(grads['linears'][2]['kernel'][...]))) == 0.0


def test_nested_codes_are_prefixes():
    head = heads.get_head('nested')(D, BITS, rngs=nnx.Rngs(0))
    codes = head.codes(_features())
    for short, long in itertools.pairwise(codes):
        np.testing.assert_array_equal(long[:, :short.shape[1]], short)


@pytest.mark.parametrize('name', ['flat', 'cascade'])
def test_torch_default_initialisation(name):
    head = heads.get_head(name)(D, BITS, rngs=nnx.Rngs(0))
    for linear in head.linears:
        kernel, bias = _kernel_bias(linear)
        bound = 1.0 / np.sqrt(kernel.shape[0])
        assert np.all(np.abs(kernel) <= bound)
        assert np.all(np.abs(bias) <= bound) and np.any(bias != 0)
        assert np.abs(kernel).max() > 0.8 * bound  # uniform, not tiny


def test_unknown_head_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"Unknown head 'tree'; choose one "
                       r"of \['cascade', 'flat', 'nested'\]"):
        heads.get_head('tree')


@pytest.mark.parametrize('name', sorted(heads.HEADS))
def test_code_wider_than_feature_is_refused(name):
    with pytest.raises(ValueError, match='wider than the feature'):
        heads.get_head(name)(8, (4, 16), rngs=nnx.Rngs(0))


def test_hashnet_keeps_the_nested_head_by_default():
    backbone = models.MLP((8, 8, 1), hidden=(D,), rngs=nnx.Rngs(0))
    net = models.HashNet(backbone, BITS, rngs=nnx.Rngs(0))
    assert type(net.head) is heads.NestedHashLayer
    _, h = net(jnp.zeros((B, 8, 8, 1), jnp.uint8))
    assert h.shape == (B, 16)
    net = models.HashNet(backbone, BITS, rngs=nnx.Rngs(0), head='cascade')
    assert type(net.head) is heads.CascadeHeads
