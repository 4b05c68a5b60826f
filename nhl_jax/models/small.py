"""Small backbones that train on a CPU in seconds (offline datasets)."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from nhl_jax.models.layers import (
    PARAM_DTYPE,
    PatchConv3x3,
    max_pool_2x2,
)
from nhl_jax.types import Array


class MLP(nnx.Module):
    """Flatten -> (Linear -> ReLU) x len(hidden). Feature width hidden[-1]."""

    def __init__(self, input_shape: Sequence[int], *,
                 hidden: Sequence[int] = (256, 256), dtype=None,
                 rngs: nnx.Rngs):
        """Creates the MLP.

        Args:
          input_shape: (H, W, C) of one image.
          hidden: widths of the hidden layers.
          dtype: computation dtype, e.g. ``jnp.bfloat16`` on GPUs (None:
            that of the inputs / float32); parameters and the returned
            features stay float32.
          rngs: NNX random streams.
        """
        widths = (int(_prod(input_shape)), *hidden)
        self.layers = nnx.List([
            nnx.Linear(a, b, dtype=dtype, param_dtype=PARAM_DTYPE, rngs=rngs)
            for a, b in zip(widths, widths[1:])
        ])
        self.features = widths[-1]

    def __call__(self, x: Array) -> Array:
        """Maps images [B, H, W, C] (float) to float32 features [B, D]."""
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return x.astype(jnp.float32)


class SmallCNN(nnx.Module):
    """conv32-pool-conv64-pool-fc256: the MNIST CNN of the speed targets."""

    def __init__(self, input_shape: Sequence[int], *,
                 channels: Sequence[int] = (32, 64), width: int = 256,
                 dtype=None, rngs: nnx.Rngs):
        """Creates the CNN.

        Args:
          input_shape: (H, W, C) of one image.
          channels: output channels of the 3x3 conv blocks (each followed by
            ReLU and 2x2 max-pooling).
          width: feature width D of the final fully connected layer.
          dtype: computation dtype (None: that of the inputs / float32);
            parameters and the returned features stay float32.
          rngs: NNX random streams.
        """
        h, w, c = input_shape
        chans = (c, *channels)
        self.convs = nnx.List([
            PatchConv3x3(a, b, dtype=dtype, rngs=rngs)
            for a, b in zip(chans, chans[1:])
        ])
        for _ in channels:
            h, w = h // 2, w // 2
        self.fc = nnx.Linear(h * w * chans[-1], width, dtype=dtype,
                             param_dtype=PARAM_DTYPE, rngs=rngs)
        self.features = width

    def __call__(self, x: Array) -> Array:
        """Maps images [B, H, W, C] (float) to float32 features [B, D]."""
        for conv in self.convs:
            x = max_pool_2x2(jax.nn.relu(conv(x)))
        x = jax.nn.relu(self.fc(x.reshape(x.shape[0], -1)))
        return x.astype(jnp.float32)


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out
