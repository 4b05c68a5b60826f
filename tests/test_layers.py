"""The 3x3 convolution against a loop-based float64 NumPy convolution.

Values and both gradients, for stride 1 and 2 and the channel counts and
sizes the backbones use (small CNN 1->32 and 32->64 at 28 and 14 pixels,
bnn_cnn's and ReActNet's stride-2 blocks at odd and even sizes).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax import layers


def _conv_ref(x, k, stride):
    """out[b, p, q, o] = sum_ijc xpad[b, s p + i, s q + j, c] k[i, j, c, o]."""
    x, k = np.asarray(x, np.float64), np.asarray(k, np.float64)
    b, h, w, _ = x.shape
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, ho, wo, k.shape[-1]))
    for p in range(ho):
        for q in range(wo):
            for i in range(3):
                for j in range(3):
                    patch = xp[:, stride * p + i, stride * q + j]
                    out[:, p, q] += patch @ k[i, j]
    return out


def _grads_ref(x, k, dy, stride):
    """(dL/dx, dL/dk) of L = sum(out * dy), by the same loops."""
    x, k, dy = (np.asarray(a, np.float64) for a in (x, k, dy))
    _, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    dxp, dk = np.zeros_like(xp), np.zeros_like(k)
    for p in range(dy.shape[1]):
        for q in range(dy.shape[2]):
            for i in range(3):
                for j in range(3):
                    r, c = stride * p + i, stride * q + j
                    dk[i, j] += xp[:, r, c].T @ dy[:, p, q]
                    dxp[:, r, c] += dy[:, p, q] @ k[i, j].T
    return dxp[:, 1:h + 1, 1:w + 1], dk


SHAPES = [  # (B, H, C_in, C_out, stride)
    (2, 28, 1, 32, 1), (2, 14, 32, 64, 1), (2, 7, 16, 16, 1),
    (2, 8, 8, 16, 2), (2, 7, 8, 16, 2), (2, 15, 4, 8, 2),
]


@pytest.mark.parametrize('shape', SHAPES)
def test_conv3x3_value_and_gradients_match_numpy(shape):
    b, h, cin, cout, stride = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((b, h, h, cin)).astype(np.float32)
    k = rng.standard_normal((3, 3, cin, cout)).astype(np.float32)
    out = jax.jit(layers.conv3x3, static_argnums=2)(x, k, stride)
    expected = _conv_ref(x, k, stride)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    dy = rng.standard_normal(expected.shape).astype(np.float32)
    gx, gk = jax.jit(jax.grad(
        lambda x, k: jnp.sum(layers.conv3x3(x, k, stride) * dy),
        argnums=(0, 1)))(x, k)
    rx, rk = _grads_ref(x, k, dy, stride)
    np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(gk, rk, rtol=1e-5, atol=1e-3)


def test_conv3x3_equals_the_im2col_form():
    # The former im2col + matmul form, which the packed binary layer uses.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 9, 3)).astype(np.float32)
    k = rng.standard_normal((3, 3, 3, 5)).astype(np.float32)
    for stride in (1, 2):
        im2col = layers.im2col_3x3(x, stride) @ k.reshape(27, 5)
        np.testing.assert_allclose(layers.conv3x3(x, k, stride), im2col,
                                   rtol=1e-5, atol=1e-5)
