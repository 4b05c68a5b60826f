"""Deployment of binary networks: packed 1-bit weights, XNOR-popcount.

``pack(module)`` returns a copy of a trained module in which every
``BinaryConv3x3`` / ``BinaryDense`` is replaced by a packed layer: its
latent float weights become sign bits packed into uint32 words (32 weights
per word, rows padded to whole words) and its alpha scales [C_out] float32.
Everything else (stem, BatchNorm, RSign / RPReLU shifts, shortcuts, hash
layer) stays float32. At run time a packed layer packs the signs of its
+-1 inputs (computed by the preceding RSign), and takes the dot products
with XNOR and popcount: for +-1 vectors a, w over the valid positions V,

    a . w = 2 popcount(XNOR(a, w) & V) - popcount(V),

where V masks out the zero padding of a convolution and the tail of the
last word. ``nnx.state(pack(module))`` is the deployable export.

``model_bytes`` counts what that export stores, against all-float32;
``seconds_per_image`` times a forward pass.
"""

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nhl_jax.models.bnn.layers import (
    BinaryConv3x3,
    BinaryDense,
    weight_scale,
)
from nhl_jax.models.layers import im2col_3x3
from nhl_jax.types import Array

_WORD = 32


class Packed(nnx.Variable):
    """A deployed, non-trainable array: packed sign bits or alpha scales."""


def pack_bits(bits: Array) -> Array:
    """Packs booleans into uint32 words, little-endian within a word.

    Args:
      bits: [..., N] bool.

    Returns:
      [..., ceil(N / 32)] uint32; bit i of word j is bits[..., 32 j + i];
      the tail of the last word is 0.
    """
    n = bits.shape[-1]
    words = -(-n // _WORD)
    pad = [(0, 0)] * (bits.ndim - 1) + [(0, words * _WORD - n)]
    bits = jnp.pad(bits, pad).reshape(*bits.shape[:-1], words, _WORD)
    shifts = jnp.arange(_WORD, dtype=jnp.uint32).reshape(
        (1,) * (bits.ndim - 1) + (_WORD,))
    return jnp.sum(bits.astype(jnp.uint32) << shifts, axis=-1,
                   dtype=jnp.uint32)


def xnor_popcount_dot(a_bits: Array, valid: Array, w_bits: Array) -> Array:
    """+-1 dot products from packed bits: 2 popcount(XNOR & V) - popcount(V).

    Args:
      a_bits: [..., W] uint32, the inputs' signs (1 for +1).
      valid: [..., W] uint32, 1 where an input is +-1, 0 for padding.
      w_bits: [O, W] uint32, the weights' signs (1 for +1).

    Returns:
      [..., O] int32: sum over the valid positions of a_i * w_i.
    """
    lead = (1,) * (a_bits.ndim - 1)
    w = w_bits.reshape(lead + w_bits.shape)  # [1.., O, W]
    xnor = ~(a_bits[..., None, :] ^ w) & valid[..., None, :]  # [..., O, W]
    matches = jnp.sum(jax.lax.population_count(xnor).astype(jnp.int32), -1)
    count = jnp.sum(jax.lax.population_count(valid).astype(jnp.int32), -1)
    return 2 * matches - count[..., None]


def packed_matmul(x: Array, w_bits: Array, scale: Array) -> Array:
    """(x @ sign(W)) * alpha from packed weights, for x in {-1, 0, +1}.

    Args:
      x: [..., N] float; +-1 inputs, 0 for padding.
      w_bits: [O, ceil(N / 32)] uint32 packed signs of W [N, O] transposed.
      scale: alpha [O].

    Returns:
      [..., O] float32.
    """
    dots = xnor_popcount_dot(pack_bits(x > 0), pack_bits(x != 0), w_bits)
    return dots.astype(jnp.float32) * scale.reshape(
        (1,) * (dots.ndim - 1) + (-1,))


def _pack_kernel(kernel: Array) -> tuple[Packed, Packed]:
    """Latent [..., O] -> (sign bits [O, words] uint32, alpha [O])."""
    signs = kernel.reshape(-1, kernel.shape[-1]).T >= 0  # [O, N]
    return Packed(pack_bits(signs)), Packed(weight_scale(kernel))


class PackedConv3x3(nnx.Module):
    """A ``BinaryConv3x3`` deployed: packed sign bits and alpha scales."""

    def __init__(self, layer: BinaryConv3x3):
        self.stride = layer.stride
        self.bits, self.scale = _pack_kernel(layer.kernel[...])

    def __call__(self, x: Array) -> Array:
        """Maps +-1 inputs [B, H, W, C_in] to [B, H', W', C_out]."""
        patches = im2col_3x3(x, self.stride)  # [B, H', W', 9 C_in]
        return packed_matmul(patches, self.bits[...], self.scale[...])


class PackedDense(nnx.Module):
    """A ``BinaryDense`` deployed: packed sign bits and alpha scales."""

    def __init__(self, layer: BinaryDense):
        self.bits, self.scale = _pack_kernel(layer.kernel[...])

    def __call__(self, x: Array) -> Array:
        """Maps +-1 inputs [B, D_in] to [B, D_out]."""
        return packed_matmul(x, self.bits[...], self.scale[...])


# Binary layer type -> its deployed form.
PACKERS = {BinaryConv3x3: PackedConv3x3, BinaryDense: PackedDense}


def pack(module: nnx.Module) -> nnx.Module:
    """A copy of ``module`` with every binary layer packed (see the top).

    Args:
      module: a trained module (e.g. a backbone or a ``HashNet``); it is
        not modified. Its train / eval mode is kept by the copy.

    Returns:
      The deployable copy; it has no latent float binary weights left.
    """
    copy = nnx.clone(module)
    found = [(path, node) for path, node in nnx.iter_graph(copy)
             if type(node) in PACKERS]
    for path, node in found:
        deployed = PACKERS[type(node)](node)
        if not path:  # the module itself is a binary layer
            return deployed
        _set_child(copy, path, deployed)
    return copy


def _set_child(root: nnx.Module, path, value) -> None:
    """Replaces the submodule at ``path`` (attribute names, list indices)."""
    parent = root
    for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    if isinstance(path[-1], int):
        parent[path[-1]] = value
    else:
        setattr(parent, path[-1], value)


class ModelBytes(NamedTuple):
    """Storage of a model in bytes (parameters and batch statistics)."""

    deployed: int  # 1-bit binary weights (in uint32 words) + float32 rest
    float32: int  # every weight, latent binary ones included, as float32
    binary_weights: int  # number of weights stored as one bit
    float_values: int  # number of float32 values stored when deployed


def model_bytes(module: nnx.Module) -> ModelBytes:
    """Bytes of ``module`` as deployed by ``pack`` vs all-float32.

    Deployed: each binary layer's C_out x N weights cost C_out ceil(N / 32)
    uint32 words plus C_out float32 scales; every other parameter and batch
    statistic (stem, BN, shifts, shortcuts, hash layer) costs 4 bytes.
    Activations' signs are computed at run time and stored nowhere.

    Args:
      module: a (trained or fresh) module with binary layers, or none.

    Returns:
      ``ModelBytes``.
    """
    kinds = (nnx.Param, nnx.BatchStat)
    full = jax.tree.leaves(nnx.state(module, kinds))
    binary = sum(int(np.prod(node.kernel.shape))
                 for _, node in nnx.iter_graph(module)
                 if type(node) in PACKERS)
    packed = nnx.state(pack(module), (*kinds, Packed))
    deployed = jax.tree.leaves(packed)
    floats = sum(int(x.size) for x in deployed if x.dtype == jnp.float32)
    return ModelBytes(
        deployed=sum(int(x.size) * x.dtype.itemsize for x in deployed),
        float32=4 * sum(int(x.size) for x in full),
        binary_weights=binary,
        float_values=floats,
    )


def seconds_per_image(module: nnx.Module, images: Array, *,
                      repeats: int = 5) -> float:
    """Inference time per image of ``module`` in eval mode, jitted.

    The first call compiles and is not timed; the fastest of ``repeats``
    timed calls on the whole batch is divided by the batch size.

    Args:
      module: maps images [B, ...] to anything (not modified).
      images: one batch [B, ...] as the module takes it.
      repeats: timed calls.

    Returns:
      Seconds per image on the default device.
    """
    graphdef, state = nnx.split(module)

    @jax.jit
    def forward(state, x):
        model = nnx.merge(graphdef, state)
        model.eval()
        return model(x)

    jax.block_until_ready(forward(state, images))
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(forward(state, images))
        best = min(best, time.perf_counter() - start)
    return best / images.shape[0]
