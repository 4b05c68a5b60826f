"""Backbones, CPU-friendly layers and the hashing model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nhl_jax import models


def test_patch_conv_equals_lax_conv():
    conv = models.PatchConv3x3(3, 5, rngs=nnx.Rngs(0))
    conv.bias[...] = jnp.arange(5.0)
    x = jax.random.normal(jax.random.key(1), (2, 7, 6, 3))
    expected = jax.lax.conv_general_dilated(
        x, conv.kernel[...], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    expected = expected + jnp.arange(5.0)[None, None, None, :]
    np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_patch_conv_gradient_equals_lax_conv_gradient():
    conv = models.PatchConv3x3(2, 4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (2, 5, 5, 2))
    kernel = conv.kernel[...]
    ours = nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(conv)['kernel'][...]

    def theirs(k):
        y = jax.lax.conv_general_dilated(
            x, k, (1, 1), ((1, 1), (1, 1)),
            dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        return jnp.sum(jnp.sin(y))

    np.testing.assert_allclose(ours, jax.grad(theirs)(kernel),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('shape', [(2, 28, 28, 3), (1, 7, 9, 2)])
def test_max_pool_equals_reduce_window(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    expected = jax.lax.reduce_window(
        x[:, : shape[1] // 2 * 2, : shape[2] // 2 * 2], -jnp.inf, jax.lax.max,
        (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
    np.testing.assert_array_equal(models.max_pool_2x2(x), expected)


@pytest.mark.parametrize('name, shape, width', [
    ('mlp', (8, 8, 1), 256), ('cnn', (28, 28, 1), 256)])
def test_backbones_give_features_of_their_width(name, shape, width):
    backbone = models.get_backbone(name, shape, rngs=nnx.Rngs(0))
    assert backbone.features == width
    out = backbone(jnp.zeros((3, *shape)))
    assert out.shape == (3, width)


def test_cnn_parameter_count():
    cnn = models.get_backbone('cnn', (28, 28, 1), rngs=nnx.Rngs(0))
    count = sum(p.size for p in jax.tree.leaves(nnx.state(cnn, nnx.Param)))
    conv1, conv2 = 9 * 1 * 32 + 32, 9 * 32 * 64 + 64
    assert count == conv1 + conv2 + 7 * 7 * 64 * 256 + 256


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match=r"Unknown backbone 'vgg'.*'cnn'"):
        models.get_backbone('vgg', (8, 8, 1), rngs=nnx.Rngs(0))


def test_hashnet_outputs_features_and_nested_codes():
    backbone = models.get_backbone('mlp', (8, 8, 1), rngs=nnx.Rngs(0))
    net = models.HashNet(backbone, (8, 16), rngs=nnx.Rngs(1))
    images = jnp.full((4, 8, 8, 1), 255, jnp.uint8)
    features, h = net(images)
    assert features.shape == (4, 256) and h.shape == (4, 16)
    np.testing.assert_allclose(features, backbone(jnp.ones((4, 8, 8, 1))),
                               rtol=1e-6)


def test_preprocess_normalises_with_backbone_statistics():
    images = jnp.full((1, 2, 2, 3), 255, jnp.uint8)
    out = models.preprocess(images, (0.5, 0.5, 0.0), (0.5, 0.25, 1.0))
    np.testing.assert_allclose(out[0, 0, 0], [1.0, 2.0, 1.0])
    np.testing.assert_allclose(models.preprocess(images), 1.0)
    grey = models.preprocess(images[..., :1], (0.5, 0.5, 0.2), (0.5, 0.5, 0.5))
    assert grey.shape == (1, 2, 2, 1)
    np.testing.assert_allclose(grey, (1.0 - 0.4) / 0.5, rtol=1e-6)
