"""Layers written for XLA's CPU backend, equal to their textbook forms.

On a CPU, XLA's backward passes of ``lax.conv`` and of ``reduce_window``
max-pooling dominate a small CNN's step (ecosystem.md 12: 73 ms vs 43 ms per
step for the MNIST CNN). A 3x3 convolution as nine shifted slices and one
matmul (im2col), and 2x2 max-pooling as a reshape and a max, compute the same
functions with cheaper gradients.
"""

import jax.numpy as jnp
from flax import nnx

from nhl_jax.types import Array


def max_pool_2x2(x: Array) -> Array:
    """2x2 max-pooling with stride 2 (floor mode, as torch's MaxPool2d(2)).

    Args:
      x: [B, H, W, C].

    Returns:
      [B, H // 2, W // 2, C].
    """
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class PatchConv3x3(nnx.Module):
    """3x3 'SAME' convolution (stride 1, zero padding 1) as im2col + matmul.

    The kernel has ``nnx.Conv``'s layout [3, 3, C_in, C_out] and init, so the
    module computes exactly ``nnx.Conv(C_in, C_out, (3, 3), padding=1)``.
    """

    def __init__(self, in_features: int, out_features: int, *,
                 rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(
            init(rngs.params(), (3, 3, in_features, out_features))
        )
        self.bias = nnx.Param(jnp.zeros((out_features,)))

    def __call__(self, x: Array) -> Array:
        """Maps [B, H, W, C_in] to [B, H, W, C_out]."""
        b, h, w, c = x.shape
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        patches = jnp.concatenate(
            [padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)],
            axis=-1,
        )  # [B, H, W, 9 C_in], ordered like kernel.reshape(9 C_in, C_out)
        kernel = self.kernel[...].reshape(9 * c, -1)
        return patches @ kernel + self.bias[...][None, None, None, :]
