"""torchvision's ResNet-18 / ResNet-50 as NNX backbones (no final fc).

The layer names, shapes, strides and paddings mirror torchvision exactly
(``conv1``, ``bn1``, ``layer1[0].conv1``, ``layer1[0].downsample[0]``, ...),
so that ``nhl_jax.models.pretrained.load_torchvision_resnet`` can copy an
ImageNet state dict in by name. The Bottleneck keeps the stride on its 3x3
conv, as torchvision does ("ResNet v1.5").

Inputs are NHWC floats already normalised with ``ResNet.input_mean`` and
``ResNet.input_std`` (ImageNet statistics for images scaled to [0, 1]).
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from nhl_jax.models.layers import (
    max_pool_3x3_s2,
    torch_batch_norm,
    torch_conv,
)
from nhl_jax.types import Array


def _downsample(in_ch: int, out_ch: int, stride: int, *, dtype,
                rngs: nnx.Rngs) -> nnx.List | None:
    """torchvision's shortcut projection [1x1 conv, BN], or None if unneeded.

    An ``nnx.List`` (not a Sequential) keeps the item names ``0`` and ``1``
    of torchvision's ``downsample.0`` / ``downsample.1``.
    """
    if stride == 1 and in_ch == out_ch:
        return None
    return nnx.List([
        torch_conv(in_ch, out_ch, 1, stride, dtype=dtype, rngs=rngs),
        torch_batch_norm(out_ch, dtype=dtype, rngs=rngs),
    ])


def _shortcut(downsample: nnx.List | None, x: Array) -> Array:
    if downsample is None:
        return x
    conv, bn = downsample
    return bn(conv(x))


class BasicBlock(nnx.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, *,
                 dtype=None, rngs: nnx.Rngs):
        """Creates the block.

        Args:
          in_ch: input channels.
          planes: output channels (``planes * expansion``).
          stride: stride of the first 3x3 conv and of the shortcut.
          dtype: computation dtype (None: that of the inputs / float32).
          rngs: NNX random streams.
        """
        kw = {'dtype': dtype, 'rngs': rngs}
        self.conv1 = torch_conv(in_ch, planes, 3, stride, **kw)
        self.bn1 = torch_batch_norm(planes, **kw)
        self.conv2 = torch_conv(planes, planes, 3, 1, **kw)
        self.bn2 = torch_batch_norm(planes, **kw)
        self.downsample = _downsample(in_ch, planes, stride, **kw)

    def __call__(self, x: Array) -> Array:
        """[B, H, W, in_ch] -> [B, H / stride, W / stride, planes]."""
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return jax.nn.relu(out + _shortcut(self.downsample, x))


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 (strided) -> 1x1 convs with a residual (ResNet-50)."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, *,
                 dtype=None, rngs: nnx.Rngs):
        """Creates the block.

        Args:
          in_ch: input channels.
          planes: width of the inner convs; the output has
            ``planes * expansion`` channels.
          stride: stride of the 3x3 conv and of the shortcut.
          dtype: computation dtype (None: that of the inputs / float32).
          rngs: NNX random streams.
        """
        kw = {'dtype': dtype, 'rngs': rngs}
        out_ch = planes * self.expansion
        self.conv1 = torch_conv(in_ch, planes, 1, 1, **kw)
        self.bn1 = torch_batch_norm(planes, **kw)
        self.conv2 = torch_conv(planes, planes, 3, stride, **kw)
        self.bn2 = torch_batch_norm(planes, **kw)
        self.conv3 = torch_conv(planes, out_ch, 1, 1, **kw)
        self.bn3 = torch_batch_norm(out_ch, **kw)
        self.downsample = _downsample(in_ch, out_ch, stride, **kw)

    def __call__(self, x: Array) -> Array:
        """[B, H, W, in_ch] -> [B, H / stride, W / stride, 4 * planes]."""
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = jax.nn.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return jax.nn.relu(out + _shortcut(self.downsample, x))


class ResNet(nnx.Module):
    """torchvision's ResNet without its final fc: images -> pooled features.

    Attributes:
      features: feature width D (512 * block expansion).
      input_size: side the input is resized to, or None for no resizing.
      input_mean: per-channel mean to subtract from [0, 1] RGB inputs.
      input_std: per-channel std to divide [0, 1] RGB inputs by.
    """

    input_mean = (0.485, 0.456, 0.406)
    input_std = (0.229, 0.224, 0.225)

    def __init__(self, input_shape: Sequence[int], *,
                 block: type[BasicBlock] | type[Bottleneck],
                 layers: Sequence[int], input_size: int | None = 224,
                 dtype=None, rngs: nnx.Rngs):
        """Creates the network.

        Args:
          input_shape: (H, W, C) of one image; C sets the stem's in-channels.
          block: ``BasicBlock`` or ``Bottleneck``.
          layers: number of blocks in each of the four stages.
          input_size: if set, inputs whose H x W differ from
            ``input_size x input_size`` are first resized bilinearly to it, on
            device (the NHL code does ``Resize(224)`` for 32x32 CIFAR images).
            None feeds the input as is.
          dtype: computation dtype, e.g. ``jnp.bfloat16`` on GPUs; parameters
            and the returned features stay float32.
          rngs: NNX random streams.
        """
        if len(layers) != 4:
            raise ValueError(f'layers must have 4 stages, got {layers!r}.')
        kw = {'dtype': dtype, 'rngs': rngs}
        self.input_size = input_size
        self.conv1 = torch_conv(int(input_shape[-1]), 64, 7, 2, **kw)
        self.bn1 = torch_batch_norm(64, **kw)
        in_ch = 64
        stages = []
        for i, depth in enumerate(layers):
            planes, stride = 64 * 2 ** i, (1 if i == 0 else 2)
            stage, in_ch = _stage(block, in_ch, planes, depth, stride, **kw)
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.features = in_ch

    def __call__(self, x: Array) -> Array:
        """Maps normalised images [B, H, W, C] (float) to features [B, D]."""
        x = self._resize(x)
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        x = max_pool_3x3_s2(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x)
        # Global average pool = torch's AdaptiveAvgPool2d(1) + flatten.
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

    def _resize(self, x: Array) -> Array:
        """Bilinear resize of [B, H, W, C] to the square ``input_size``."""
        size = self.input_size
        if size is None or x.shape[1:3] == (size, size):
            return x
        # Non-square inputs become square, unlike torchvision's Resize(int),
        # which keeps the aspect ratio; CIFAR / ImageNet crops are square.
        shape = (x.shape[0], size, size, x.shape[3])
        return jax.image.resize(x, shape, method='bilinear')


def _stage(block, in_ch: int, planes: int, depth: int, stride: int, *,
           dtype, rngs: nnx.Rngs) -> tuple[nnx.List, int]:
    """``depth`` blocks, the first strided; returns (stage, out channels)."""
    blocks = []
    for j in range(depth):
        blocks.append(block(in_ch, planes, stride if j == 0 else 1,
                            dtype=dtype, rngs=rngs))
        in_ch = planes * block.expansion
    return nnx.List(blocks), in_ch


# torchvision ``resnet18`` / ``resnet50`` without fc: features [B, 512] /
# [B, 2048]. Called as ``ResNet50(input_shape, *, rngs, input_size=224,
# dtype=None)`` (see ``ResNet``), like flax's ``ResNet50`` presets.
ResNet18 = functools.partial(ResNet, block=BasicBlock, layers=(2, 2, 2, 2))
ResNet50 = functools.partial(ResNet, block=Bottleneck, layers=(3, 4, 6, 3))
