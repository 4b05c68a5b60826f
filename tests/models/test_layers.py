"""The 3x3 convolution and 2x2 max-pooling against loop-based NumPy.

Values and both gradients of the convolution, for stride 1 and 2 and the
channel counts and sizes the backbones use (small CNN 1->32 and 32->64 at
28 and 14 pixels, bnn_cnn's and ReActNet's stride-2 blocks at odd and even
sizes), compiled both with XLA's default options and with the library's
(``nhl_jax.compiler``). The pooling's gradient goes to the first maximum
of each window, as torch's MaxPool2d.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax import compiler
from nhl_jax.models import layers


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


JITS = {'xla-default': jax.jit, 'library': compiler.jit}


@pytest.mark.parametrize('jit', JITS.values(), ids=JITS.keys())
@pytest.mark.parametrize('shape', SHAPES)
def test_conv3x3_value_and_gradients_match_numpy(shape, jit):
    b, h, cin, cout, stride = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((b, h, h, cin)).astype(np.float32)
    k = rng.standard_normal((3, 3, cin, cout)).astype(np.float32)
    out = jit(layers.conv3x3, static_argnums=2)(x, k, stride)
    expected = _conv_ref(x, k, stride)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    dy = rng.standard_normal(expected.shape).astype(np.float32)
    gx, gk = jit(jax.grad(
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


def _pool_ref(x, dy):
    """(max-pool 2x2, its gradient to each window's first maximum)."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    b, h, w, c = x.shape
    out, dx = np.zeros((b, h // 2, w // 2, c)), np.zeros_like(x)
    for n, p, q, ch in np.ndindex(*out.shape):
        window = [(2 * p + i, 2 * q + j) for i in (0, 1) for j in (0, 1)]
        values = [x[n, r, s, ch] for r, s in window]
        first = int(np.argmax(values))  # argmax: the first of equal maxima
        out[n, p, q, ch] = values[first]
        r, s = window[first]
        dx[n, r, s, ch] = dy[n, p, q, ch]
    return out, dx


@pytest.mark.parametrize('shape', [(2, 6, 6, 3), (2, 7, 5, 2), (1, 28, 28, 4)])
def test_max_pool_2x2_and_its_gradient_match_numpy_with_ties(shape):
    rng = np.random.default_rng(sum(shape))
    # Few distinct values: most windows hold tied maxima.
    x = rng.integers(-1, 2, shape).astype(np.float32)
    dy = rng.standard_normal((shape[0], shape[1] // 2, shape[2] // 2,
                              shape[3])).astype(np.float32)
    expected, expected_dx = _pool_ref(x, dy)
    grad = lambda x: jax.vjp(layers.max_pool_2x2, x)[1](dy)[0]
    np.testing.assert_array_equal(layers.max_pool_2x2(x), expected)
    np.testing.assert_array_equal(grad(jnp.asarray(x)), expected_dx)
    np.testing.assert_array_equal(jax.jit(grad)(jnp.asarray(x)),
                                  expected_dx)


def test_max_pool_2x2_keeps_bfloat16():
    x = jnp.arange(32, dtype=jnp.bfloat16).reshape(1, 4, 4, 2)
    y, vjp = jax.vjp(layers.max_pool_2x2, x)
    assert y.dtype == vjp(jnp.ones_like(y))[0].dtype == jnp.bfloat16
