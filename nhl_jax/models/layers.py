"""Layer primitives shared by the float (``models``) and binary (``bnn``) nets.

Below both packages, so that ``nhl_jax.models.bnn`` needs nothing from
``nhl_jax.models`` (whose registry lists the binary backbones too).

Fast forms on the CPU: every 3x3 convolution is XLA's own
(``conv3x3``), compiled with ``nhl_jax.compiler``'s options, which keep
it out of YNNPACK; 2x2 max-pooling is a reshape and a max whose gradient
is written out (``max_pool_2x2``). ``im2col_3x3`` stays for the packed
binary layer. ``benchmarks/conv_paths.py`` measures the alternatives.

torch-compatible forms: ``torch_conv``, ``torch_batch_norm`` and
``max_pool_3x3_s2`` pad, initialise and normalise as torchvision's ResNet
does, so that its weights load by name.

Mixed precision, the flax way: every layer takes ``dtype``, the dtype its
matmuls and convolutions compute in (None: inferred from the inputs and
parameters, float32 here), while its parameters are created in
``PARAM_DTYPE``. Under ``dtype=bfloat16`` the float32 weights are cast per
op, so the optimizer only ever sees float32 master weights.
"""

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from nhl_jax.models.batch_norm import BatchNorm
from nhl_jax.types import Array

# The dtype of every parameter (master weights) under any compute dtype.
PARAM_DTYPE = jnp.float32

# nnx.Conv's default kernel init, the init of PatchConv3x3.
LECUN_NORMAL = nnx.initializers.lecun_normal()

# torchvision's kaiming_normal_(mode='fan_out', nonlinearity='relu'): an
# untruncated normal with variance 2 / (out_channels * kh * kw).
_KAIMING_FAN_OUT = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')


@jax.custom_vjp
def max_pool_2x2(x: Array) -> Array:
    """2x2 max-pooling with stride 2 (floor mode, as torch's MaxPool2d(2)).

    The gradient goes to the first maximum of each window in row-major
    order, as torch's (JAX's own max splits it among ties, which costs a
    count and a divide; ties are common after ReLU and in binary nets).
    Written as the mask of that maximum, the small CNN's forward +
    backward is faster than with the differentiated max
    (``benchmarks/conv_paths.py``). Forward-mode differentiation
    (``jax.jvp``) is not defined for it (a custom VJP).

    Args:
      x: [B, H, W, C], any float dtype (kept).

    Returns:
      [B, H // 2, W // 2, C] in x's dtype.
    """
    return _windows(x).max(axis=(2, 4))


def _windows(x: Array) -> Array:
    """[B, H, W, C] -> [B, H // 2, 2, W // 2, 2, C] (odd edges dropped)."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c)


def _max_pool_fwd(x):
    windows = _windows(x)
    return windows.max(axis=(2, 4)), (windows, x.shape)


def _max_pool_bwd(res, dy):
    windows, shape = res
    is_max = windows == windows.max(axis=(2, 4), keepdims=True)
    # Row-major order (0,0), (0,1), (1,0), (1,1): a tie goes to the first.
    taken = jnp.zeros_like(is_max[:, :, 0, :, 0])
    rows = []
    for i in (0, 1):
        cols = []
        for j in (0, 1):
            first = is_max[:, :, i, :, j] & ~taken
            taken = taken | first
            cols.append(jnp.where(first, dy, jnp.zeros_like(dy)))
        rows.append(jnp.stack(cols, axis=3))
    b, h, w, c = shape
    dx = jnp.stack(rows, axis=2).reshape(b, h // 2 * 2, w // 2 * 2, c)
    return (jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool_3x3_s2(x: Array) -> Array:
    """torch's MaxPool2d(3, stride=2, padding=1) on [B, H, W, C] (x's dtype)."""
    # Padding with -inf means padded cells never win, as in torch. The init
    # must be a Python scalar: JAX only differentiates the max-pool form of
    # reduce_window when its init is a literal.
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1),
                                 (1, 2, 2, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0)))


def im2col_3x3(x: Array, stride: int = 1) -> Array:
    """Zero-padded 3x3 patches, ordered like a [3, 3, C, O] kernel reshaped.

    Args:
      x: [B, H, W, C].
      stride: 1 or 2.

    Returns:
      [B, H', W', 9 C] with H' = (H - 1) // stride + 1 (torch's
      ``padding=1`` output size).
    """
    _, h, w, _ = x.shape
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.concatenate([
        padded[:, i:i + stride * (ho - 1) + 1:stride,
               j:j + stride * (wo - 1) + 1:stride]
        for i in range(3) for j in range(3)
    ], axis=-1)


def conv3x3(x: Array, kernel: Array, stride: int = 1) -> Array:
    """3x3 convolution with zero padding 1 (torch's ``padding=1``).

    XLA's own convolution, differentiated by JAX, on every backend. On
    this project's CPU (jax 0.10.2) and under ``nhl_jax.compiler``'s
    options it gives the fastest NHL train step of the small CNN, ahead
    of im2col + matmul and of custom VJPs with the kernel gradient as one
    matmul over im2col patches (``benchmarks/conv_paths.py``).

    Args:
      x: [B, H, W, C_in].
      kernel: [3, 3, C_in, C_out], x's dtype.
      stride: 1 or 2.

    Returns:
      [B, H', W', C_out] with H' = (H - 1) // stride + 1.
    """
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((1, 1), (1, 1)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class PatchConv3x3(nnx.Module):
    """3x3 'SAME' convolution (stride 1, zero padding 1) with a bias.

    The kernel has ``nnx.Conv``'s layout [3, 3, C_in, C_out] and init, so the
    module computes ``nnx.Conv(C_in, C_out, (3, 3), padding=1)``, ``dtype``
    included (``conv3x3``; the name is that of its former im2col form,
    kept so that checkpoints and pretrained files stay valid).
    """

    def __init__(self, in_features: int, out_features: int, *,
                 dtype=None, rngs: nnx.Rngs):
        """Creates the layer.

        Args:
          in_features: C_in.
          out_features: C_out.
          dtype: computation dtype (None: that of the inputs / float32);
            the parameters are float32.
          rngs: NNX random streams.
        """
        self.dtype = dtype
        self.kernel = nnx.Param(LECUN_NORMAL(
            rngs.params(), (3, 3, in_features, out_features), PARAM_DTYPE))
        self.bias = nnx.Param(jnp.zeros((out_features,), PARAM_DTYPE))

    def __call__(self, x: Array) -> Array:
        """Maps [B, H, W, C_in] to [B, H, W, C_out] (in ``dtype``)."""
        x, kernel, bias = dtypes.promote_dtype(
            (x, self.kernel[...], self.bias[...]), dtype=self.dtype)
        return conv3x3(x, kernel) + bias[None, None, None, :]


def torch_conv(in_ch: int, out_ch: int, size: int, stride: int, *, dtype,
               rngs: nnx.Rngs) -> nnx.Conv:
    """A bias-free conv with torch's symmetric padding of ``size // 2``."""
    # Explicit padding: flax 'SAME' pads asymmetrically at stride 2 and would
    # shift every stride-2 output by one pixel relative to torch.
    pad = size // 2
    return nnx.Conv(in_ch, out_ch, (size, size), (stride, stride),
                    padding=((pad, pad), (pad, pad)), use_bias=False,
                    kernel_init=_KAIMING_FAN_OUT, dtype=dtype,
                    param_dtype=PARAM_DTYPE, rngs=rngs)


def torch_batch_norm(channels: int, *, dtype,
                     rngs: nnx.Rngs) -> BatchNorm:
    """BatchNorm with torch's defaults (eps 1e-5, torch momentum 0.1).

    Under a bfloat16 ``dtype``, flax still computes the batch statistics
    and the normalisation in float32 and only casts the output.
    """
    # Flax's momentum is the weight of the old running average, so torch's
    # 0.1 is flax's 0.9. Two-pass variance like torch: the fast
    # E[x^2] - E[x]^2 cancels badly on small batches / late 1x1 maps.
    # ``BatchNorm``: per-device statistics under ``per_device_statistics``.
    return BatchNorm(channels, epsilon=1e-5, momentum=0.9,
                     use_fast_variance=False, dtype=dtype,
                     param_dtype=PARAM_DTYPE, rngs=rngs)
