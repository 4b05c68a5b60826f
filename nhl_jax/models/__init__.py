"""Backbones by name, and the hashing model = backbone + nested hash layer.

Mixed precision, the flax way: ``get_backbone(..., dtype=)`` and
``HashNet(..., dtype=)`` build every layer with ``dtype`` as its compute
dtype and float32 parameters, and ``preprocess`` casts the normalised
images to ``dtype``, so under ``jnp.bfloat16`` every matmul and convolution
runs in bfloat16 while the optimizer keeps float32 master weights.
Backbones return float32 features; the heads return codes in ``dtype``.
"""

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from nhl_jax.models.bnn.backbones import BinaryCNN, ReActNet18
from nhl_jax.models.layers import PatchConv3x3, max_pool_2x2
from nhl_jax.models.resnet import ResNet18, ResNet50
from nhl_jax.models.small import MLP, SmallCNN
from nhl_jax.models.vit import ViT_B16, load_torchvision_vit
from nhl_jax.models import pretrained
from nhl_jax.models import heads
from nhl_jax.errors import UsageError
from nhl_jax.types import Array

BACKBONES = {
    'mlp': MLP,
    'cnn': SmallCNN,
    'resnet18': ResNet18,
    'resnet50': ResNet50,
    'vit_b16': ViT_B16,
    'bnn_cnn': BinaryCNN,  # binary (nhl_jax.models.bnn): FP stem and shortcuts
    'reactnet18': ReActNet18,
}

# Loaders of pretrained weights from a local file, by backbone name.
PRETRAINED = {
    'resnet18': pretrained.load_torchvision_resnet,
    'resnet50': pretrained.load_torchvision_resnet,
    'vit_b16': load_torchvision_vit,
}


def load_pretrained(name: str, backbone: nnx.Module, path: str) -> None:
    """Loads local pretrained weights into ``backbone`` in place.

    Raises:
      ValueError: if backbone ``name`` has no pretrained loader, or the file
        is missing or does not match (the message names file and key).
    """
    if name not in PRETRAINED:
        raise ValueError(
            f'backbone {name!r} has no pretrained weights loader; choose one '
            f'of {sorted(PRETRAINED)} or leave pretrained unset.'
        )
    PRETRAINED[name](backbone, path)


def check_pretrained(name: str, input_shape: Sequence[int], path: str,
                     **kwargs) -> None:
    """Reads ``path`` and checks that it fits backbone ``name``; loads nothing.

    Run before any file of a run is written, so that a truncated file, a
    wrong architecture or NaN weights stop it at once; the backbone is
    abstract (``nnx.eval_shape``), so no weights are allocated.

    Args:
      name: a key of ``PRETRAINED``.
      input_shape: (H, W, C) of one image.
      path: the weights file.
      **kwargs: the backbone's own keyword arguments.

    Raises:
      UsageError: one line naming the file and its first problem (missing,
        unreadable, NaN / inf, another architecture, torch not installed).
    """
    abstract = nnx.eval_shape(lambda: get_backbone(
        name, input_shape, rngs=nnx.Rngs(0), **kwargs))
    try:
        PRETRAINED[name](abstract, path, check_only=True)
    except ImportError:
        raise UsageError(
            f'pretrained file {path!r} is a torch file and reading it needs '
            'PyTorch: pip install torch, or convert it to .npz (see the '
            'README, pretrained backbones).') from None
    except pretrained.WeightsMismatchError as e:
        # Its first line names the first problem and the count.
        raise UsageError(f'{str(e).splitlines()[0]}; use the weights of '
                         f'torchvision\'s {name}.') from None
    except (TypeError, ValueError) as e:
        raise UsageError(str(e).splitlines()[0]) from None


def get_backbone(name: str, input_shape: Sequence[int], *, rngs: nnx.Rngs,
                 dtype=jnp.float32, **kwargs) -> nnx.Module:
    """Builds the backbone registered as ``name``.

    Args:
      name: a key of ``BACKBONES``.
      input_shape: (H, W, C) of one image.
      rngs: NNX random streams.
      dtype: computation dtype of every layer (e.g. ``jnp.bfloat16``); the
        parameters and the returned features are float32.
      **kwargs: the backbone's own keyword arguments.

    Returns:
      The module; its ``features`` attribute is the feature width D.

    Raises:
      ValueError: for an unknown name (the message lists the valid ones).
    """
    if name not in BACKBONES:
        raise ValueError(
            f'Unknown backbone {name!r}; choose one of {sorted(BACKBONES)}.'
        )
    return BACKBONES[name](tuple(input_shape), rngs=rngs, dtype=dtype,
                           **kwargs)


def preprocess(images: Array, mean=None, std=None,
               dtype=jnp.float32) -> Array:
    """uint8 images [B, H, W, C] -> [0, 1], then (x - mean) / std, in dtype.

    Args:
      images: [B, H, W, C] uint8 (or float in [0, 255]).
      mean: optional per-channel mean [C] of the backbone's training data
        (e.g. ImageNet's for a pretrained ResNet); RGB statistics are
        averaged when the images have another number of channels.
      std: optional per-channel std [C].
      dtype: dtype of the result, the backbone's compute dtype.

    Returns:
      [B, H, W, C] in ``dtype``.
    """
    # Normalised in float32 and cast once: the first layer then computes in
    # dtype, and (x - mean) / std is not rounded twice.
    x = jnp.asarray(images, jnp.float32) / 255.0
    if mean is not None:
        x = x - _per_channel(mean, x.shape[-1])
    if std is not None:
        x = x / _per_channel(std, x.shape[-1])
    return x.astype(dtype)


def _per_channel(values, channels: int) -> Array:
    """[1, 1, 1, C] statistics; RGB ones are averaged for grey images."""
    values = jnp.asarray(values, jnp.float32)
    if values.shape[0] != channels:
        values = jnp.full((channels,), jnp.mean(values))
    return values[None, None, None, :]


class HashNet(nnx.Module):
    """Backbone features -> a hash head for every code length (nested)."""

    def __init__(self, backbone: nnx.Module, bits: Sequence[int], *,
                 rngs: nnx.Rngs, head: str = 'nested', dtype=jnp.float32,
                 head_init: str | None = None):
        """Creates the model.

        Args:
          backbone: a module with a ``features`` width attribute, built with
            the same ``dtype`` (``get_backbone(..., dtype=dtype)``).
          bits: sorted code lengths.
          rngs: NNX random streams.
          head: a key of ``nhl_jax.models.heads.HEADS``; NHL uses 'nested', MAH
            also 'flat' and 'cascade' (read through ``head.codes``).
          dtype: computation dtype of the input normalisation and the head
            (e.g. ``jnp.bfloat16``); the parameters are float32.
          head_init: the nested layer's init, a key of
            ``nested.HEAD_INITS``; None: the head's own.
        """
        self.dtype = dtype
        self.backbone = backbone
        init = {} if head_init is None else {'init': head_init}
        self.head = heads.get_head(head)(backbone.features, bits, rngs=rngs,
                                         dtype=dtype, **init)

    def features(self, images: Array) -> Array:
        """Backbone features [B, D] (float32) of uint8 images [B, H, W, C].

        Inputs are normalised with the backbone's ``input_mean`` and
        ``input_std`` when it declares them (pretrained backbones do), and
        enter the backbone in ``dtype``.
        """
        return self.backbone(preprocess(
            images, getattr(self.backbone, 'input_mean', None),
            getattr(self.backbone, 'input_std', None), self.dtype))

    def __call__(self, images: Array) -> tuple[Array, Array]:
        """Maps uint8 images [B, H, W, C] to (features [B, D], h [B, K_max]).

        ``h`` is the nested layer's output, in ``dtype``; the flat and
        cascade heads give a tuple of M codes [B, b_k] instead.
        """
        features = self.features(images)
        return features, self.head(features)


__all__ = [
    'BACKBONES',
    'BinaryCNN',
    'HashNet',
    'MLP',
    'PRETRAINED',
    'ResNet18',
    'ResNet50',
    'ViT_B16',
    'PatchConv3x3',
    'ReActNet18',
    'SmallCNN',
    'get_backbone',
    'check_pretrained',
    'load_pretrained',
    'max_pool_2x2',
    'preprocess',
]
