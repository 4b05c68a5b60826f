"""The nested hash layer: one linear map whose prefixes are the short codes."""

import math
from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from nhl_jax.models.layers import PARAM_DTYPE
from nhl_jax.types import Array, Bits


def check_bits(bits: Sequence[int]) -> Bits:
    """Validates code lengths and returns them as a tuple.

    Args:
      bits: code lengths b_1 < ... < b_M.

    Returns:
      ``tuple(bits)``.

    Raises:
      ValueError: unless ``bits`` is a non-empty, strictly increasing sequence
        of positive ints.
    """
    if isinstance(bits, (str, bytes)) or not isinstance(bits, Sequence):
        raise ValueError(
            f'bits must be a sorted tuple of code lengths, got {bits!r}; '
            'pass e.g. bits=(8, 16, 32).'
        )
    values = tuple(bits)
    if not values or not all(
        isinstance(b, int) and not isinstance(b, bool) and b > 0
        for b in values
    ):
        raise ValueError(
            f'bits must be a non-empty tuple of positive ints, got {bits!r}; '
            'pass e.g. bits=(8, 16, 32).'
        )
    if any(a >= b for a, b in zip(values, values[1:])):
        raise ValueError(
            f'bits must be strictly increasing with no duplicates, got '
            f'{bits!r}; pass {tuple(sorted(set(values)))}.'
        )
    return values


def split_codes(h: Array, bits: Sequence[int]) -> tuple[Array, ...]:
    """Cuts the nested outputs into one code per length.

    Args:
      h: [B, K_max] outputs of a ``NestedHashLayer`` with K_max = bits[-1].
      bits: sorted code lengths.

    Returns:
      A tuple of M arrays; entry k is the prefix h[:, :bits[k]], [B, b_k].
    """
    bits = check_bits(bits)
    chex.assert_rank(h, 2)
    chex.assert_axis_dimension(h, 1, bits[-1])
    return tuple(h[:, :b] for b in bits)


def _normal_init(in_features: int):
    del in_features

    def kernel_init(key, shape, dtype=jnp.float32):
        # N(0, 1) draws, then the scale, as two programs: inside one jit
        # (the state's creation) XLA would fold 0.01 into the draw's own
        # constants and round the weights differently from an eager init.
        unit = jax.lax.optimization_barrier(jax.random.normal(key, shape,
                                                              dtype))
        return unit * jnp.asarray(0.01, dtype)

    return kernel_init, nnx.initializers.zeros_init()


def _torch_init(in_features: int):
    # kaiming_uniform(a=sqrt(5)) is U(+-1/sqrt(fan_in)): variance scaling
    # 1/3 of a uniform; torch draws the bias from the same interval.
    bound = 1.0 / math.sqrt(in_features)

    def bias_init(key, shape, dtype):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return (nnx.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform'),
            bias_init)


# Name -> (in_features -> (kernel_init, bias_init)) of the nested layer:
# 'normal' is the NHL code's N(0, 0.01^2) kernel and zero bias
# (bl_network.py:RML_E_layer); 'torch' is torch.nn.Linear's default,
# weights and bias U(-1/sqrt(D), 1/sqrt(D)), as in DeepHash-pytorch.
HEAD_INITS = {'normal': _normal_init, 'torch': _torch_init}


class NestedHashLayer(nnx.Module):
    """ONE linear layer of width max(bits); length b_k uses its first b_k.

    The code of length b_k is h_k = x W[:, :b_k] + bias[:b_k], so every
    shorter code's parameters are a prefix of the longest code's. Kernel
    initialised N(0, 0.01^2), bias 0 (``bl_network.py:RML_E_layer``), or as
    torch's ``nn.Linear`` (``init='torch'``, ``HEAD_INITS``).

    Attributes:
      bits: the validated code lengths.
      linear: the ``nnx.Linear(in_features, bits[-1])`` layer.

    References:
      NHL, arXiv 2412.08922, Sec. 3 (nested hash layer).
    """

    def __init__(self, in_features: int, bits: Sequence[int], *,
                 rngs: nnx.Rngs, dtype=None, init: str = 'normal'):
        """Creates the layer.

        Args:
          in_features: feature width D.
          bits: sorted code lengths; the layer has D * b_M + b_M parameters.
          rngs: Flax NNX random streams (``params`` is used).
          dtype: computation dtype, e.g. ``jnp.bfloat16`` (None: that of the
            features / float32); the parameters are float32.
          init: a key of ``HEAD_INITS``: 'normal' (the NHL code's) or
            'torch' (``nn.Linear``'s default, U(+-1/sqrt(D))).

        Raises:
          ValueError: for invalid ``bits``, an unknown ``init`` or b_M > D (a
            code wider than the feature has rank at most D; use a wider
            backbone or fewer bits).
        """
        if init not in HEAD_INITS:
            raise ValueError(f'unknown head init {init!r}; choose one of '
                             f'{sorted(HEAD_INITS)}.')
        self.bits = check_bits(bits)
        if self.bits[-1] > in_features:
            raise ValueError(
                f'longest code ({self.bits[-1]} bits) is wider than the '
                f'feature ({in_features}); use bits <= {in_features} or a '
                'wider backbone.'
            )
        kernel_init, bias_init = HEAD_INITS[init](in_features)
        self.linear = nnx.Linear(
            in_features,
            self.bits[-1],
            kernel_init=kernel_init,
            bias_init=bias_init,
            dtype=dtype,
            param_dtype=PARAM_DTYPE,
            rngs=rngs,
        )

    def __call__(self, x: Array) -> Array:
        """Maps features [B, D] to nested outputs [B, K_max] (in dtype)."""
        return self.linear(x)

    def codes(self, x: Array) -> tuple[Array, ...]:
        """Per-length continuous codes, a tuple of [B, b_k] arrays."""
        return split_codes(self(x), self.bits)
