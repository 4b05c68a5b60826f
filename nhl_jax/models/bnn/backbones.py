"""Binary backbones: full-precision stem, binary middle, real shortcuts.

What is binary: every 3x3 conv of the middle and the last dense layer of
``BinaryCNN`` (weights alpha * sign(W), inputs sign(x - beta) computed at
run time). What stays full precision, as in ODH's reference (hly1998/OSH,
``network_reactnet.py``): the first conv (the stem), BatchNorm, the RSign /
RPReLU shifts, the real-valued shortcuts (with ReActNet18's 1x1 projection)
and the hash layer, which ``nhl_jax.models.HashNet`` adds on top.

Every backbone and block takes the flax ``dtype`` of its arithmetic
(e.g. ``jnp.bfloat16``; None: that of the inputs, float32); parameters and
the returned features stay float32.
"""

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from nhl_jax.models.bnn.layers import (
    BinaryConv3x3,
    BinaryDense,
    RPReLU,
    RSign,
)
from nhl_jax.models.layers import (
    PARAM_DTYPE,
    PatchConv3x3,
    max_pool_2x2,
    max_pool_3x3_s2,
    torch_batch_norm,
    torch_conv,
)
from nhl_jax.types import Array


def avg_pool_2x2(x: Array) -> Array:
    """2x2 average pooling, stride 2, ceil mode over the cells that exist.

    An odd side keeps its last row / column as a 1-wide window, so the
    output [B, ceil(H / 2), ceil(W / 2), C] (x's dtype) matches a stride-2
    3x3 conv with padding 1 at any input size.
    """
    b, h, w, c = x.shape
    pads = ((0, 0), (0, h % 2), (0, w % 2), (0, 0))
    total = jnp.pad(x, pads).reshape(b, -1, 2, (w + 1) // 2, 2, c)
    count = jnp.pad(jnp.ones((1, h, w, 1), x.dtype), pads)
    count = count.reshape(1, -1, 2, (w + 1) // 2, 2, 1).sum(axis=(2, 4))
    return total.sum(axis=(2, 4)) / count


class BinaryBlock(nnx.Module):
    """ReActNet's basic block: one binary 3x3 conv with a real shortcut.

    out = RPReLU(BN(BinaryConv3x3(RSign(x))) + shortcut(x)) (ReActNet,
    Bi-Real's one-conv block). The shortcut is the identity, a channel
    tiling when C_out is a multiple of C_in (parameter free), or, with
    ``project=True``, ReActNet's AvgPool(2) -> FP 1x1 conv -> BN.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, *,
                 project: bool = False, sign: str = 'approx', dtype=None,
                 rngs: nnx.Rngs):
        """Creates the block.

        Args:
          in_ch: C_in.
          out_ch: C_out.
          stride: 1 or 2 (of the binary conv and the shortcut).
          project: use a FP 1x1 projection shortcut when the shape changes.
          sign: the activation sign's backward rule (``layers.SIGNS``).
          dtype: computation dtype (None: that of the inputs / float32).
          rngs: NNX random streams.
        """
        changes = stride != 1 or in_ch != out_ch
        if changes and not project and (stride != 1 or out_ch % in_ch):
            raise ValueError(
                f'a {in_ch}->{out_ch} stride-{stride} block needs '
                'project=True (a tiled shortcut needs stride 1 and C_out a '
                'multiple of C_in).')
        self.stride, self.repeats = stride, out_ch // in_ch
        self.rsign = RSign(in_ch, sign=sign, dtype=dtype)
        self.conv = BinaryConv3x3(in_ch, out_ch, stride=stride, dtype=dtype,
                                  rngs=rngs)
        self.bn = torch_batch_norm(out_ch, dtype=dtype, rngs=rngs)
        self.project = None  # [1x1 conv (as a Linear), BN] or None
        if changes and project:
            self.project = nnx.data(nnx.List([
                nnx.Linear(in_ch, out_ch, use_bias=False, dtype=dtype,
                           param_dtype=PARAM_DTYPE, rngs=rngs),
                torch_batch_norm(out_ch, dtype=dtype, rngs=rngs),
            ]))
        self.act = RPReLU(out_ch, dtype=dtype)

    def __call__(self, x: Array) -> Array:
        """[B, H, W, C_in] -> [B, H', W', C_out]."""
        out = self.bn(self.conv(self.rsign(x)))
        return self.act(out + self._shortcut(x))

    def _shortcut(self, x: Array) -> Array:
        if self.project is not None:
            conv, bn = self.project
            if self.stride == 2:
                x = avg_pool_2x2(x)
            return bn(conv(x))
        return jnp.tile(x, (1, 1, 1, self.repeats))


class BinaryCNN(nnx.Module):
    """A small BNN for the offline data: FP stem, binary blocks, binary fc.

    stem: FP 3x3 conv (C -> channels[0]) -> BN -> ReLU -> pool; then per
    further width: two ``BinaryBlock`` s (C -> width, width -> width) and a
    pool; then RSign -> BinaryDense(-> width) -> BN -> RPReLU. With the
    defaults on 28x28 images: 32 -> [64, 64] -> 256 features.

    Attributes:
      features: D = ``width``.
    """

    def __init__(self, input_shape: Sequence[int], *,
                 channels: Sequence[int] = (32, 64), width: int = 256,
                 sign: str = 'approx', dtype=None, rngs: nnx.Rngs):
        """Creates the network.

        Args:
          input_shape: (H, W, C) of one image.
          channels: the stem's width, then one width per binary stage (each
            a multiple of the one before: the shortcuts tile channels).
          width: feature width D of the final binary dense layer.
          sign: the activation sign's backward rule (``layers.SIGNS``).
          dtype: computation dtype, e.g. ``jnp.bfloat16`` (None: that of
            the inputs / float32); parameters and features stay float32.
          rngs: NNX random streams.
        """
        h, w, c = input_shape
        kw = {'dtype': dtype, 'rngs': rngs}
        self.stem = PatchConv3x3(c, channels[0], **kw)
        self.stem_bn = torch_batch_norm(channels[0], **kw)
        blocks = []
        for a, b in itertools.pairwise(channels):
            blocks.append(BinaryBlock(a, b, sign=sign, **kw))
            blocks.append(BinaryBlock(b, b, sign=sign, **kw))
        self.blocks = nnx.List(blocks)
        for _ in channels:
            h, w = h // 2, w // 2
        flat = h * w * channels[-1]
        self.fc_sign = RSign(flat, sign=sign, dtype=dtype)
        self.fc = BinaryDense(flat, width, **kw)
        self.fc_bn = torch_batch_norm(width, **kw)
        self.fc_act = RPReLU(width, dtype=dtype)
        self.features = width

    def __call__(self, x: Array) -> Array:
        """Maps normalised images [B, H, W, C] (float) to features [B, D].

        The features are float32 whatever the computation dtype.
        """
        x = max_pool_2x2(jax.nn.relu(self.stem_bn(self.stem(x))))
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i % 2:  # the end of a stage
                x = max_pool_2x2(x)
        x = self.fc_sign(x.reshape(x.shape[0], -1))
        return self.fc_act(self.fc_bn(self.fc(x))).astype(jnp.float32)


class ReActNet18(nnx.Module):
    """ReActNet / Bi-Real ResNet-18: 16 binary one-conv blocks [4, 4, 4, 4].

    As ODH's ``ResNet_ReactNet`` without its hash layer: FP 7x7/2 conv ->
    BN -> 3x3/2 max-pool; stages of 64, 128, 256, 512 channels whose first
    block has stride 2 (but the first stage's) and a FP AvgPool -> 1x1 conv
    -> BN shortcut; global average pooling. No pretrained weights.

    Attributes:
      features: D = 512.
      input_size: side inputs are resized to, or None for none.
    """

    def __init__(self, input_shape: Sequence[int], *,
                 layers: Sequence[int] = (4, 4, 4, 4),
                 input_size: int | None = 224, sign: str = 'approx',
                 dtype=None, rngs: nnx.Rngs):
        """Creates the network.

        Args:
          input_shape: (H, W, C) of one image.
          layers: binary blocks per stage.
          input_size: if set, inputs of another H x W are first resized
            bilinearly to ``input_size`` square (ODH's 224 crops); None
            feeds them as they are (any size >= 1 works).
          sign: the activation sign's backward rule (``layers.SIGNS``).
          dtype: computation dtype, e.g. ``jnp.bfloat16`` (None: that of
            the inputs / float32); parameters and features stay float32.
          rngs: NNX random streams.
        """
        if len(layers) != 4:
            raise ValueError(f'layers must have 4 stages, got {layers!r}.')
        self.input_size = input_size
        kw = {'dtype': dtype, 'rngs': rngs}
        self.stem = torch_conv(int(input_shape[-1]), 64, 7, 2, **kw)
        self.stem_bn = torch_batch_norm(64, **kw)
        blocks, in_ch = [], 64
        for i, depth in enumerate(layers):
            out_ch = 64 * 2 ** i
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BinaryBlock(in_ch, out_ch, stride, project=True,
                                          sign=sign, **kw))
                in_ch = out_ch
        self.blocks = nnx.List(blocks)
        self.features = in_ch

    def __call__(self, x: Array) -> Array:
        """Maps normalised images [B, H, W, C] (float) to float32 [B, D]."""
        size = self.input_size
        if size is not None and x.shape[1:3] != (size, size):
            x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]),
                                 method='bilinear')
        x = max_pool_3x3_s2(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        # Pooled in float32, as ResNet's: a bfloat16 mean over H x W cells
        # would round every feature.
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
