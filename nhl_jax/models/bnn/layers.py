"""Binary layers: sign with surrogate gradients, 1-bit weights, ReAct shifts.

A binary layer keeps real-valued *latent* weights W for training and uses
``alpha * sign(W)`` in the forward pass, with alpha = mean |W| per output
channel (XNOR-Net's scaling; Rastegari et al., arXiv 1603.05279).
Activations are binarised by a separate sign module (``RSign``), so a binary
conv / dense layer multiplies +-1 inputs by +-alpha weights: the product
``nhl_jax.models.bnn.packed`` computes with XNOR and popcount at inference.

Sign convention: sign(0) = +1 everywhere (weights, activations, codes), so
that every value is one bit; zero never occurs in a trained float network
except in the zero padding of a convolution, which ``packed`` handles.

Mixed precision: every layer takes the flax ``dtype`` its arithmetic runs
in (None: inferred, float32). The latent weights, their signs and alpha
come from the float32 parameters; the +-1 signs are exact in any dtype, so
only the product (and alpha) are rounded under bfloat16.

References:
  Rastegari et al., XNOR-Net, arXiv 1603.05279.
  Liu et al., Bi-Real Net, arXiv 1808.00278 (ApproxSign).
  Liu et al., ReActNet, arXiv 2003.03488 (RSign, RPReLU).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from nhl_jax.models.layers import LECUN_NORMAL, PARAM_DTYPE, conv3x3
from nhl_jax.types import Array


def _sign(x: Array) -> Array:
    """+1 where x >= 0, else -1 (one bit per value), in x's dtype."""
    return jnp.where(x >= 0, 1, -1).astype(x.dtype)


@jax.custom_vjp
def ste_sign(x: Array) -> Array:
    """sign(x) with the clipped straight-through estimator.

    Forward: +1 if x >= 0 else -1. Backward: d sign / dx := 1{|x| <= 1},
    the derivative of hardtanh (Courbariaux et al. / XNOR-Net's ``BinActive``;
    the boundary |x| = 1 is inside).

    Args:
      x: any shape.

    Returns:
      +-1 of x's shape and dtype.
    """
    return _sign(x)


def _ste_fwd(x):
    return _sign(x), x


def _ste_bwd(x, g):
    return (g * (jnp.abs(x) <= 1).astype(g.dtype),)


ste_sign.defvjp(_ste_fwd, _ste_bwd)


@jax.custom_vjp
def approx_sign(x: Array) -> Array:
    """sign(x) with Bi-Real's ApproxSign gradient (used by ReActNet).

    Forward: +1 if x >= 0 else -1. Backward: the derivative of the
    piecewise polynomial ApproxSign (Bi-Real Net)::

        F(x) = -1 (x < -1); 2x + x^2 (-1 <= x < 0); 2x - x^2 (0 <= x < 1); 1
        dF/dx = 2 + 2x on [-1, 0), 2 - 2x on [0, 1), 0 elsewhere
              = max(0, 2 - 2|x|).

    Args:
      x: any shape.

    Returns:
      +-1 of x's shape and dtype.
    """
    return _sign(x)


def _approx_fwd(x):
    return _sign(x), x


def _approx_bwd(x, g):
    return (g * jnp.maximum(0.0, 2.0 - 2.0 * jnp.abs(x)).astype(g.dtype),)


approx_sign.defvjp(_approx_fwd, _approx_bwd)

# Activation signs by name: the only place their names are spelled.
SIGNS: dict[str, Callable[[Array], Array]] = {
    'ste': ste_sign,
    'approx': approx_sign,
}


def get_sign(name: str) -> Callable[[Array], Array]:
    """The activation sign registered as ``name`` (a key of ``SIGNS``)."""
    if name not in SIGNS:
        raise ValueError(f'Unknown sign {name!r}; choose one of '
                         f'{sorted(SIGNS)}.')
    return SIGNS[name]


def weight_scale(kernel: Array) -> Array:
    """XNOR-Net's per-output-channel scale alpha = mean |W|.

    alpha carries no gradient, as in ReActNet's ``HardBinaryConv``
    (``scaling_factor.detach()``).

    Args:
      kernel: latent weights, output channels last ([..., C_out]).

    Returns:
      alpha [C_out].
    """
    alpha = jnp.mean(jnp.abs(kernel), axis=tuple(range(kernel.ndim - 1)))
    return jax.lax.stop_gradient(alpha)


def binarize_weights(kernel: Array) -> Array:
    """Binary weights W_b = alpha * sign(W), alpha = ``weight_scale(W)``.

    The gradient reaching the latent W is alpha * dL/dW_b * 1{|W| <= 1}
    (``ste_sign``; XNOR-Net's gradient without the 1/n term of alpha,
    which is a constant here). ReActNet's ``HardBinaryConv`` passes
    dL/dW_b without the factor alpha; under Adam a per-channel factor
    hardly changes the updates. Binary layers apply alpha after the +-1
    product, which is the same function and keeps that product an exact
    integer.

    Args:
      kernel: latent weights [..., C_out].

    Returns:
      weights in {-alpha_c, +alpha_c}, kernel's shape.
    """
    return _per_channel(weight_scale(kernel), kernel) * ste_sign(kernel)


def _per_channel(v: Array, x: Array) -> Array:
    """[C] -> [1, ..., 1, C] of x's rank (rank promotion is explicit)."""
    return v.reshape((1,) * (x.ndim - 1) + (-1,))


class RSign(nnx.Module):
    """ReActNet's RSign: sign(x - beta_c), a learnable threshold per channel.

    As ReActNet's ``LearnableBias`` -> sign, the threshold a learnable bias
    (init 0). The gradient is ``approx_sign``'s (``ste_sign``'s with
    ``sign='ste'``).
    """

    def __init__(self, channels: int, *, sign: str = 'approx',
                 dtype=None):
        """Creates the module.

        Args:
          channels: C, the size of the input's last axis.
          sign: the backward rule, a key of ``SIGNS``.
          dtype: computation dtype (None: that of the inputs / float32).
        """
        get_sign(sign)  # an unknown name fails here, before any work
        self.sign = sign  # the name, a static attribute
        self.dtype = dtype
        self.beta = nnx.Param(jnp.zeros((channels,), PARAM_DTYPE))

    def __call__(self, x: Array) -> Array:
        """Maps [..., C] to +-1 of the same shape (in ``dtype``)."""
        x, beta = dtypes.promote_dtype((x, self.beta[...]), dtype=self.dtype)
        return SIGNS[self.sign](x - _per_channel(beta, x))


class RPReLU(nnx.Module):
    """ReActNet's RPReLU: PReLU(x - gamma_c; slope_c) + zeta_c.

    Shifts init 0 and slope init 0.25 (torch ``nn.PReLU``), as ReActNet's
    ``LearnableBias`` -> ``PReLU`` -> ``LearnableBias``.
    """

    def __init__(self, channels: int, *, slope: float = 0.25, dtype=None):
        """Creates the module.

        Args:
          channels: C, the size of the input's last axis.
          slope: initial negative slope.
          dtype: computation dtype (None: that of the inputs / float32).
        """
        self.dtype = dtype
        self.gamma = nnx.Param(jnp.zeros((channels,), PARAM_DTYPE))
        self.slope = nnx.Param(jnp.full((channels,), slope, PARAM_DTYPE))
        self.zeta = nnx.Param(jnp.zeros((channels,), PARAM_DTYPE))

    def __call__(self, x: Array) -> Array:
        """Maps [..., C] to [..., C] (in ``dtype``)."""
        x, gamma, slope, zeta = dtypes.promote_dtype(
            (x, self.gamma[...], self.slope[...], self.zeta[...]),
            dtype=self.dtype)
        y = x - _per_channel(gamma, x)
        y = jnp.where(y >= 0, y, _per_channel(slope, x) * y)
        return y + _per_channel(zeta, x)


def _binary_matmul(x: Array, kernel: Array, dtype=None) -> Array:
    """x @ (alpha * sign(W)) as (x @ sign(W)) * alpha, computed in ``dtype``.

    Args:
      x: +-1 (or 0 for padding) inputs [..., N].
      kernel: float32 latent weights [..., C_out] with
        N = prod(kernel.shape[:-1]).
      dtype: computation dtype (None: that of x and kernel).

    Returns:
      [..., C_out] in ``dtype``; in float32 the +-1 product is an exact
      integer (N < 2^24), so the result equals the packed XNOR-popcount one
      bit for bit. bfloat16 rounds products beyond 2^8, as any bf16 conv.
    """
    dtype = dtypes.canonicalize_dtype(x, kernel, dtype=dtype)
    # Signs and alpha from the float32 latent weights, then cast: the signs
    # are exact in any dtype, and the STE gradient reaches W in float32.
    signs = ste_sign(kernel).reshape(-1, kernel.shape[-1])  # [N, C_out]
    out = x.astype(dtype) @ signs.astype(dtype)
    return out * _per_channel(weight_scale(kernel).astype(dtype), out)


class BinaryConv3x3(nnx.Module):
    """Bias-free 3x3 conv (padding 1) with binary weights alpha * sign(W).

    Computed as a +-1 convolution (``nhl_jax.models.layers.conv3x3``) scaled by
    alpha. Its inputs are the +-1 output of an ``RSign``; the zero padding
    stays 0, as in ReActNet's ``F.conv2d(sign(x), W_b, padding=1)``.

    Attributes:
      kernel: latent real weights [3, 3, C_in, C_out].
    """

    def __init__(self, in_features: int, out_features: int, *,
                 stride: int = 1,
                 kernel_init=LECUN_NORMAL,
                 dtype=None,
                 rngs: nnx.Rngs):
        """Creates the layer.

        Args:
          in_features: C_in.
          out_features: C_out.
          stride: 1 or 2.
          kernel_init: init of the latent weights (ReActNet uses
            uniform [0, 0.001); a zero-mean init lets signs differ at start).
          dtype: computation dtype (None: that of the inputs / float32);
            the latent weights are float32.
          rngs: NNX random streams.
        """
        if stride not in (1, 2):
            raise ValueError(f'stride must be 1 or 2, got {stride}.')
        self.stride = stride
        self.dtype = dtype
        self.kernel = nnx.Param(kernel_init(
            rngs.params(), (3, 3, in_features, out_features), PARAM_DTYPE))

    def binary_kernel(self) -> Array:
        """The forward weights [3, 3, C_in, C_out] in {-alpha, +alpha}."""
        return binarize_weights(self.kernel[...])

    def __call__(self, x: Array) -> Array:
        """Maps +-1 inputs [B, H, W, C_in] to [B, H', W', C_out]."""
        kernel = self.kernel[...]
        dtype = dtypes.canonicalize_dtype(x, kernel, dtype=self.dtype)
        # In float32 the +-1 sums are exact integers in any order, so this
        # equals the packed XNOR-popcount layer bit for bit.
        out = conv3x3(x.astype(dtype), ste_sign(kernel).astype(dtype),
                      self.stride)
        return out * _per_channel(weight_scale(kernel).astype(dtype), out)


class BinaryDense(nnx.Module):
    """Bias-free dense layer with binary weights alpha * sign(W).

    Attributes:
      kernel: latent real weights [D_in, D_out].
    """

    def __init__(self, in_features: int, out_features: int, *,
                 kernel_init=LECUN_NORMAL,
                 dtype=None,
                 rngs: nnx.Rngs):
        """Creates the layer.

        Args:
          in_features: D_in.
          out_features: D_out.
          kernel_init: init of the latent weights.
          dtype: computation dtype (None: that of the inputs / float32);
            the latent weights are float32.
          rngs: NNX random streams.
        """
        self.dtype = dtype
        self.kernel = nnx.Param(kernel_init(
            rngs.params(), (in_features, out_features), PARAM_DTYPE))

    def binary_kernel(self) -> Array:
        """The forward weights [D_in, D_out] in {-alpha, +alpha}."""
        return binarize_weights(self.kernel[...])

    def __call__(self, x: Array) -> Array:
        """Maps +-1 inputs [B, D_in] to [B, D_out]."""
        return _binary_matmul(x, self.kernel[...], self.dtype)
