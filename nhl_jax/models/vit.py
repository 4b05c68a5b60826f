"""torchvision's Vision Transformer (``vit_b_16``) as an NNX backbone.

The architecture mirrors torchvision exactly: a strided ``conv_proj`` cuts
the image into patches, a learned ``class_token`` is prepended, a learned
``encoder.pos_embedding`` is added, then ``depth`` pre-norm encoder layers
(LayerNorm eps 1e-6 -> multi-head self-attention -> residual -> LayerNorm
-> MLP with exact GELU -> residual) and a final LayerNorm. The features are
the class token's output [B, width]; there is no classification head and
no dropout.

``load_torchvision_vit`` copies a torchvision state dict (``.npz``, or
``.pth`` / ``.pt`` with torch) in by torchvision's key names, e.g.::

    import torch, torchvision, numpy as np
    sd = torchvision.models.vit_b_16(weights='IMAGENET1K_V1').state_dict()
    np.savez('vit_b_16.npz', **{k: v.numpy() for k, v in sd.items()})

Inputs are NHWC floats already normalised with ``VisionTransformer.
input_mean`` / ``input_std`` (ImageNet statistics for [0, 1] images).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nhl_jax.models.layers import PARAM_DTYPE
from nhl_jax.models.pretrained import (  # noqa: F401 (re-exported errors)
    WeightsNotFoundError,
    _identity,
    _Target,
    read_state_dict,
    write_checked,
)
from nhl_jax.types import Array

_LN_EPS = 1e-6
# torchvision: MLP Linear weights xavier_uniform, biases normal(std 1e-6);
# nn.MultiheadAttention: in_proj xavier_uniform, biases zero.
_XAVIER = nnx.initializers.xavier_uniform()
_TINY_NORMAL = nnx.initializers.normal(1e-6)
_POS_NORMAL = nnx.initializers.normal(0.02)


def _layer_norm(width: int, *, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """torch's LayerNorm(width, eps=1e-6), with two-pass variance.

    Under a bfloat16 ``dtype``, flax computes the statistics and the
    normalisation in float32 and casts only the output.
    """
    return nnx.LayerNorm(width, epsilon=_LN_EPS, use_fast_variance=False,
                         dtype=dtype, param_dtype=PARAM_DTYPE, rngs=rngs)


def _linear(in_f: int, out_f: int, *, bias_init=nnx.initializers.zeros,
            dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(in_f, out_f, kernel_init=_XAVIER, bias_init=bias_init,
                      dtype=dtype, param_dtype=PARAM_DTYPE, rngs=rngs)


class SelfAttention(nnx.Module):
    """torch's ``nn.MultiheadAttention`` used as self-attention.

    ``in_proj`` is the packed q, k, v projection (torch's ``in_proj_weight``
    [3 * width, width] / ``in_proj_bias``); ``out_proj`` maps back.
    """

    def __init__(self, width: int, heads: int, *, dtype=None,
                 rngs: nnx.Rngs):
        """Creates the layer.

        Args:
          width: model width D; must be divisible by ``heads``.
          heads: number of attention heads.
          dtype: computation dtype (None: that of the inputs / float32).
          rngs: NNX random streams.
        """
        if width % heads:
            raise ValueError(f'width {width} is not divisible by heads '
                             f'{heads}.')
        self.heads = heads
        kw = {'dtype': dtype, 'rngs': rngs}
        self.in_proj = _linear(width, 3 * width, **kw)
        self.out_proj = _linear(width, width, **kw)

    def __call__(self, x: Array) -> Array:
        """[B, N, D] -> [B, N, D]."""
        b, n, d = x.shape
        qkv = self.in_proj(x).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, Dh]
        q = q * (1.0 / math.sqrt(d // self.heads))
        logits = jnp.einsum('bqhc,bkhc->bhqk', q, k)
        # Softmax in float32 even under bfloat16 compute.
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        out = jnp.einsum('bhqk,bkhc->bqhc', weights.astype(v.dtype), v)
        return self.out_proj(out.reshape(b, n, d))


class MLP(nnx.Module):
    """torchvision's MLPBlock: Linear -> exact GELU -> Linear."""

    def __init__(self, width: int, hidden: int, *, dtype=None,
                 rngs: nnx.Rngs):
        """Creates the block (torch's ``mlp.0`` = fc1, ``mlp.3`` = fc2)."""
        kw = {'bias_init': _TINY_NORMAL, 'dtype': dtype, 'rngs': rngs}
        self.fc1 = _linear(width, hidden, **kw)
        self.fc2 = _linear(hidden, width, **kw)

    def __call__(self, x: Array) -> Array:
        """[B, N, D] -> [B, N, D]."""
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class EncoderBlock(nnx.Module):
    """torchvision's pre-norm ``EncoderBlock`` (no dropout)."""

    def __init__(self, width: int, heads: int, mlp: int, *, dtype=None,
                 rngs: nnx.Rngs):
        """Creates the block.

        Args:
          width: model width D.
          heads: attention heads.
          mlp: hidden width of the MLP.
          dtype: computation dtype (None: that of the inputs / float32).
          rngs: NNX random streams.
        """
        kw = {'dtype': dtype, 'rngs': rngs}
        self.ln_1 = _layer_norm(width, **kw)
        self.self_attention = SelfAttention(width, heads, **kw)
        self.ln_2 = _layer_norm(width, **kw)
        self.mlp = MLP(width, mlp, **kw)

    def __call__(self, x: Array) -> Array:
        """[B, N, D] -> [B, N, D]."""
        x = x + self.self_attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Encoder(nnx.Module):
    """Position embedding, the encoder layers and the final LayerNorm."""

    def __init__(self, tokens: int, width: int, depth: int, heads: int,
                 mlp: int, *, dtype=None, rngs: nnx.Rngs):
        """Creates the encoder for ``tokens`` tokens (patches + class)."""
        kw = {'dtype': dtype, 'rngs': rngs}
        self.pos_embedding = nnx.Param(
            _POS_NORMAL(rngs.params(), (1, tokens, width), PARAM_DTYPE))
        self.layers = nnx.List([EncoderBlock(width, heads, mlp, **kw)
                                for _ in range(depth)])
        self.ln = _layer_norm(width, **kw)

    def __call__(self, x: Array) -> Array:
        """[B, tokens, D] -> [B, tokens, D]."""
        x = x + self.pos_embedding[...].astype(x.dtype)
        for layer in self.layers:
            x = layer(x)
        return self.ln(x)


class VisionTransformer(nnx.Module):
    """torchvision's VisionTransformer without its head: images -> features.

    Attributes:
      features: feature width D (= ``width``).
      input_size: side the input is resized to, or None for no resizing.
      image_size: side the network runs at (``input_size`` or H of
        ``input_shape``).
      input_mean: per-channel mean to subtract from [0, 1] RGB inputs.
      input_std: per-channel std to divide [0, 1] RGB inputs by.
    """

    input_mean = (0.485, 0.456, 0.406)
    input_std = (0.229, 0.224, 0.225)

    def __init__(self, input_shape: Sequence[int], *, patch: int, width: int,
                 depth: int, heads: int, mlp: int,
                 input_size: int | None = 224, dtype=None, rngs: nnx.Rngs):
        """Creates the network.

        Args:
          input_shape: (H, W, C) of one image; C sets ``conv_proj``'s
            in-channels, and H = W sets the image size if ``input_size`` is
            None.
          patch: patch side; the image side must be a multiple of it.
          width: model width D (the feature width).
          depth: number of encoder layers.
          heads: attention heads per layer.
          mlp: hidden width of each MLP.
          input_size: if set, inputs whose H x W differ from
            ``input_size x input_size`` are first resized bilinearly to it, on
            device. None feeds the input as is (then it must be square).
          dtype: computation dtype, e.g. ``jnp.bfloat16`` on GPUs; parameters
            and the returned features stay float32.
          rngs: NNX random streams.
        """
        h, w, c = (int(s) for s in input_shape[-3:])
        size = input_size if input_size is not None else h
        if input_size is None and h != w:
            raise ValueError(f'input_shape {tuple(input_shape)} is not '
                             'square; set input_size.')
        if size % patch:
            raise ValueError(f'image side {size} is not a multiple of the '
                             f'patch {patch}.')
        self.input_size = input_size
        self.image_size = size
        self.patch = patch
        self.features = width
        fan_in = c * patch * patch
        self.conv_proj = nnx.Conv(
            c, width, (patch, patch), (patch, patch), padding='VALID',
            kernel_init=nnx.initializers.normal(math.sqrt(1.0 / fan_in)),
            dtype=dtype, param_dtype=PARAM_DTYPE, rngs=rngs)
        self.class_token = nnx.Param(jnp.zeros((1, 1, width), PARAM_DTYPE))
        tokens = (size // patch) ** 2 + 1
        self.encoder = Encoder(tokens, width, depth, heads, mlp, dtype=dtype,
                               rngs=rngs)

    def __call__(self, x: Array) -> Array:
        """Maps normalised images [B, H, W, C] (float) to features [B, D]."""
        x = _resize(x, self.input_size)
        if x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f'expected {self.image_size}x{self.image_size} '
                             f'images, got shape {x.shape}.')
        x = self.conv_proj(x)  # [B, h, w, D]
        b, d = x.shape[0], x.shape[-1]
        x = x.reshape(b, -1, d)  # row-major patches, as torch's flatten(2)
        cls = jnp.broadcast_to(self.class_token[...].astype(x.dtype),
                               (b, 1, d))
        x = self.encoder(jnp.concatenate([cls, x], axis=1))
        return x[:, 0].astype(jnp.float32)


def _resize(x: Array, size: int | None) -> Array:
    """Bilinear resize of [B, H, W, C] to the square ``size`` (if set)."""
    if size is None or x.shape[1:3] == (size, size):
        return x
    shape = (x.shape[0], size, size, x.shape[3])
    return jax.image.resize(x, shape, method='bilinear')


# torchvision ``vit_b_16`` without heads: features [B, 768]. Called as
# ``ViT_B16(input_shape, *, rngs, input_size=224, dtype=None)``.
ViT_B16 = functools.partial(VisionTransformer, patch=16, width=768, depth=12,
                            heads=12, mlp=3072)


# ---------------------------------------------------------------------------
# torchvision state-dict loading.


def _linear_to_flax(w: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> Flax kernel [in, out]."""
    return w.T


def _conv_to_flax(w: np.ndarray) -> np.ndarray:
    """[O, I, H, W] -> [H, W, I, O]."""
    return w.transpose(2, 3, 1, 0)


def _param(var: nnx.Variable) -> _Target:
    """A target whose torch layout equals the Flax one."""
    return _Target(var, tuple(var.shape), _identity)


def _linear_targets(name: str, linear: nnx.Linear, weight: str = 'weight',
                    bias: str = 'bias') -> dict[str, _Target]:
    i, o = linear.kernel.shape
    return {f'{name}{weight}': _Target(linear.kernel, (o, i), _linear_to_flax),
            f'{name}{bias}': _param(linear.bias)}


def _ln_targets(name: str, ln: nnx.LayerNorm) -> dict[str, _Target]:
    return {f'{name}.weight': _param(ln.scale), f'{name}.bias': _param(ln.bias)}


def _block_targets(prefix: str, block: EncoderBlock) -> dict[str, _Target]:
    """The torchvision keys of one encoder layer."""
    attn = block.self_attention
    out = _ln_targets(prefix + 'ln_1', block.ln_1)
    out.update(_linear_targets(prefix + 'self_attention.', attn.in_proj,
                               'in_proj_weight', 'in_proj_bias'))
    out.update(_linear_targets(prefix + 'self_attention.out_proj.',
                               attn.out_proj))
    out.update(_ln_targets(prefix + 'ln_2', block.ln_2))
    out.update(_linear_targets(prefix + 'mlp.0.', block.mlp.fc1))
    out.update(_linear_targets(prefix + 'mlp.3.', block.mlp.fc2))
    return out


def _targets(model: VisionTransformer) -> dict[str, _Target]:
    """torchvision key -> target for every parameter, torchvision order."""
    conv = model.conv_proj
    h, w, i, o = conv.kernel.shape
    out = {'class_token': _param(model.class_token),
           'conv_proj.weight': _Target(conv.kernel, (o, i, h, w),
                                       _conv_to_flax),
           'conv_proj.bias': _param(conv.bias),
           'encoder.pos_embedding': _param(model.encoder.pos_embedding)}
    for n, block in enumerate(model.encoder.layers):
        out.update(_block_targets(f'encoder.layers.encoder_layer_{n}.',
                                  block))
    out.update(_ln_targets('encoder.ln', model.encoder.ln))
    return out


def torchvision_vit_shapes(model: VisionTransformer
                           ) -> dict[str, tuple[int, ...]]:
    """The torchvision state-dict keys and shapes that ``model`` expects.

    Args:
      model: a ``VisionTransformer`` (or an abstract one from
        ``nnx.eval_shape``).

    Returns:
      {key: torch-layout shape}, without ``heads.*``.
    """
    return {k: t.torch_shape for k, t in _targets(model).items()}


def load_torchvision_vit(model: VisionTransformer, path: str | os.PathLike,
                         *, check_only: bool = False) -> VisionTransformer:
    """Copies a torchvision ViT state dict into ``model`` in place.

    Every key and shape is checked before anything is written, so on error
    the model is unchanged. Values are cast to each variable's dtype and put
    on its device / sharding. Layouts: Linear ``weight [out, in]`` ->
    ``kernel [in, out]`` (also the packed ``in_proj_weight [3D, D]``), conv
    ``[O, I, H, W]`` -> ``[H, W, I, O]``, LayerNorm ``weight`` -> ``scale``.

    Args:
      model: a ``VisionTransformer`` (e.g. ``ViT_B16(...)``, 3 channels and
        ``input_size=224`` for ImageNet weights: the position embedding fixes
        the image size).
      path: ``.npz`` (NumPy only) or ``.pth`` / ``.pt`` (needs torch) holding
        torchvision's state dict; ``heads.*`` is ignored.
      check_only: only check the file (``model`` may be abstract, from
        ``nnx.eval_shape``); nothing is written.

    Returns:
      ``model``, for chaining.

    Raises:
      WeightsNotFoundError: the file does not exist.
      WeightsFileError: the file cannot be read, or a tensor holds NaN/inf.
      ValueError: missing keys, unexpected keys or wrong shapes; the message
        names the file, the first offending key and expected vs got shapes.
      ImportError: a torch file, but torch is not installed.
    """
    write_checked(_targets(model), _without_heads(read_state_dict(path)),
                  path, write=not check_only)
    return model


def _without_heads(state_dict: Mapping[str, np.ndarray]
                   ) -> dict[str, np.ndarray]:
    """Drops the classifier ``heads.*`` that a featurising ViT lacks."""
    return {k: v for k, v in state_dict.items() if not k.startswith('heads.')}
