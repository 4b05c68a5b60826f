"""The nested hash layer: one linear map whose prefixes are the short codes."""

from collections.abc import Sequence

import chex
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


class NestedHashLayer(nnx.Module):
    """ONE linear layer of width max(bits); length b_k uses its first b_k.

    The code of length b_k is h_k = x W[:, :b_k] + bias[:b_k], so every
    shorter code's parameters are a prefix of the longest code's. Kernel
    initialised N(0, 0.01^2), bias 0 (``bl_network.py:RML_E_layer``).

    Attributes:
      bits: the validated code lengths.
      linear: the ``nnx.Linear(in_features, bits[-1])`` layer.

    References:
      NHL, arXiv 2412.08922, Sec. 3 (nested hash layer).
    """

    def __init__(self, in_features: int, bits: Sequence[int], *,
                 rngs: nnx.Rngs, dtype=None):
        """Creates the layer.

        Args:
          in_features: feature width D.
          bits: sorted code lengths; the layer has D * b_M + b_M parameters.
          rngs: Flax NNX random streams (``params`` is used).
          dtype: computation dtype, e.g. ``jnp.bfloat16`` (None: that of the
            features / float32); the parameters are float32.

        Raises:
          ValueError: for invalid ``bits`` or b_M > D (a code wider than the
            feature has rank at most D; use a wider backbone or fewer bits).
        """
        self.bits = check_bits(bits)
        if self.bits[-1] > in_features:
            raise ValueError(
                f'longest code ({self.bits[-1]} bits) is wider than the '
                f'feature ({in_features}); use bits <= {in_features} or a '
                'wider backbone.'
            )
        self.linear = nnx.Linear(
            in_features,
            self.bits[-1],
            kernel_init=nnx.initializers.normal(stddev=0.01),
            bias_init=nnx.initializers.zeros_init(),
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
