"""Multi-length hash heads: nested (NHL), flat and cascade (MAH).

Every head maps backbone features [B, D] to one continuous code per length
through the same interface::

    head = get_head('cascade')(D, bits, rngs=nnx.Rngs(0))
    outputs = head.codes(features)  # tuple of M arrays [B, b_k], pre-tanh

``codes`` returns the raw linear outputs, sorted like ``bits`` (shortest
first); MAH applies ``tanh`` itself, NHL's base losses use them as they are.
Every head takes the flax ``dtype`` of its matmuls (e.g. ``jnp.bfloat16``)
and returns its codes in it; the parameters are float32, and the systems
cast the codes to float32 before any loss.

- ``nested``: NHL's ``NestedHashLayer``, ONE Linear(D, b_M) whose prefixes are
  the shorter codes (``nhl_jax.models.nested``).
- ``flat``: M independent Linear(D, b_k) on the shared feature.
- ``cascade``: a long -> short chain: z_M = W_M f + c_M, then
  z_k = W_k z_{k+1} + c_k, each linear reading the longer head's PRE-tanh
  output (2048 -> 16 -> 8 -> 4 for bits 4, 8, 16).

The MAH heads are initialised like torch's ``nn.Linear`` (weights and bias
U(-1/sqrt(fan_in), 1/sqrt(fan_in))), as in the MAH code.

References:
  MAH, arXiv 1809.09329, and Luoyadan/MAH-Pytorch ``utils/cnn_model.py``
  (``multihead`` and ``cascade``).
"""

import math
from collections.abc import Sequence

import jax
from flax import nnx

from nhl_jax.models.layers import PARAM_DTYPE
from nhl_jax.models.nested import NestedHashLayer, check_bits
from nhl_jax.types import Array


def _torch_linear(in_features: int, out_features: int, *, dtype,
                  rngs: nnx.Rngs) -> nnx.Linear:
    """A Linear initialised as torch's default (kaiming-uniform, a = sqrt 5)."""
    bound = 1.0 / math.sqrt(in_features)

    def bias_init(key, shape, dtype):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nnx.Linear(
        in_features, out_features,
        kernel_init=nnx.initializers.variance_scaling(
            1.0 / 3.0, 'fan_in', 'uniform'),
        bias_init=bias_init, dtype=dtype, param_dtype=PARAM_DTYPE,
        rngs=rngs)


def _check_width(in_features: int, bits: Sequence[int]) -> tuple[int, ...]:
    bits = check_bits(bits)
    if bits[-1] > in_features:
        raise ValueError(
            f'longest code ({bits[-1]} bits) is wider than the feature '
            f'({in_features}); use bits <= {in_features} or a wider backbone.'
        )
    return bits


class FlatHeads(nnx.Module):
    """M parallel heads Linear(D, b_k) on the same feature (MAH "flat").

    Attributes:
      bits: the validated code lengths.
      linears: ``nnx.List`` of M Linear layers, aligned with ``bits``.
    """

    def __init__(self, in_features: int, bits: Sequence[int], *,
                 rngs: nnx.Rngs, dtype=None):
        """Creates the heads.

        Args:
          in_features: feature width D.
          bits: sorted code lengths; D * sum(bits) + sum(bits) parameters.
          rngs: NNX random streams.
          dtype: computation dtype (None: that of the features / float32).

        Raises:
          ValueError: for invalid ``bits`` or b_M > D.
        """
        self.bits = _check_width(in_features, bits)
        self.linears = nnx.List([
            _torch_linear(in_features, b, dtype=dtype, rngs=rngs)
            for b in self.bits
        ])

    def codes(self, x: Array) -> tuple[Array, ...]:
        """Maps features [B, D] to M pre-tanh codes [B, b_k]."""
        return tuple(linear(x) for linear in self.linears)

    def __call__(self, x: Array) -> tuple[Array, ...]:
        """Same as ``codes``."""
        return self.codes(x)


class CascadeHeads(nnx.Module):
    """A long -> short chain of linears (MAH "cascade").

    The longest code is z_M = W_M f + c_M [B, b_M]; each shorter one is
    z_k = W_k z_{k+1} + c_k with W_k [b_{k+1}, b_k], read from the longer
    code BEFORE its tanh (``cnn_model.py``: ``y1 = self.linear1(y2)``).

    Attributes:
      bits: the validated code lengths.
      linears: ``nnx.List`` of M Linear layers aligned with ``bits``:
        linears[M-1] is Linear(D, b_M), linears[k] Linear(b_{k+1}, b_k).
    """

    def __init__(self, in_features: int, bits: Sequence[int], *,
                 rngs: nnx.Rngs, dtype=None):
        """Creates the chain.

        Args:
          in_features: feature width D.
          bits: sorted code lengths.
          rngs: NNX random streams.
          dtype: computation dtype (None: that of the features / float32).

        Raises:
          ValueError: for invalid ``bits`` or b_M > D.
        """
        self.bits = _check_width(in_features, bits)
        inputs = (*self.bits[1:], in_features)  # each head's input width
        self.linears = nnx.List([
            _torch_linear(a, b, dtype=dtype, rngs=rngs)
            for a, b in zip(inputs, self.bits)
        ])

    def codes(self, x: Array) -> tuple[Array, ...]:
        """Maps features [B, D] to M pre-tanh codes [B, b_k], shortest first."""
        outputs = []
        for linear in reversed(self.linears):  # longest first
            x = linear(x)
            outputs.append(x)
        return tuple(reversed(outputs))

    def __call__(self, x: Array) -> tuple[Array, ...]:
        """Same as ``codes``."""
        return self.codes(x)


# Head name -> class built as cls(in_features, bits, *, rngs, dtype); each has
# ``codes(features [B, D]) -> tuple of M [B, b_k]`` pre-tanh outputs.
HEADS = {
    'nested': NestedHashLayer,
    'flat': FlatHeads,
    'cascade': CascadeHeads,
}


def get_head(name: str) -> type[nnx.Module]:
    """The head class registered as ``name``.

    Raises:
      ValueError: for an unknown name (the message lists the valid ones).
    """
    if name not in HEADS:
        raise ValueError(
            f'Unknown head {name!r}; choose one of {sorted(HEADS)}.'
        )
    return HEADS[name]
