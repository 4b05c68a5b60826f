"""ODH's semantic self-adaptive hash centres, one table per code length.

The centres come from the warm-up classifier's class-weight matrix W [C, D]
(one row per class): p = sigmoid(MLP(W)), centre = sign(p - 0.5), with an
identity straight-through gradient, so the centres move as W and the MLP
learn. On a nested head every length b_k needs its own [C, b_k] table; two
ways are offered (``CENTERS``):

- ``'prefix'``: one MLP to b_M outputs; the centres of length b_k are the
  first b_k columns, just as the codes are prefixes of the nested layer.
- ``'separate'``: one MLP per length (shared nothing).

``'hadamard'`` gives CSQ's fixed Hadamard centres instead (the ablation
"without ODH's centres"); they ignore W and are never trained.
"""

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from nhl_jax.losses import hadamard_centers
from nhl_jax.models.nested import check_bits
from nhl_jax.types import Array


def sign_ste(x: Array) -> Array:
    """sign(x) in the forward pass (0 -> +1), identity gradient backward.

    The ``hash`` autograd function of the ODH code (torch.sign forward,
    grad_output returned as is); 0 maps to +1 as in ``nhl_jax.retrieval``.

    Args:
      x: any shape.

    Returns:
      The same shape, values in {-1, +1}, with d out / d x = 1.
    """
    signs = jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype)
    return x + jax.lax.stop_gradient(signs - x)


def centers_from_logits(z: Array) -> Array:
    """Centres sign(sigmoid(z) - 0.5) with the identity straight-through.

    Args:
      z: [C, K] MLP outputs.

    Returns:
      [C, K] in {-1, +1}; the gradient reaches z through the sigmoid.
    """
    chex.assert_rank(z, 2)
    return sign_ste(jax.nn.sigmoid(z) - 0.5)


class CenterMLP(nnx.Module):
    """Linear D -> hidden, ReLU, Linear hidden -> K (``Label_func.mlp``)."""

    def __init__(self, in_features: int, hidden: int, out_features: int, *,
                 rngs: nnx.Rngs):
        self.hidden = nnx.Linear(in_features, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, out_features, rngs=rngs)

    def __call__(self, w: Array) -> Array:
        """Maps class weights [C, D] to centre logits [C, K]."""
        return self.out(jax.nn.relu(self.hidden(w)))


class PrefixCenters(nnx.Module):
    """One MLP to b_M bits; length b_k uses the first b_k columns."""

    def __init__(self, in_features: int, bits: Sequence[int], *,
                 num_classes: int, hidden: int, rngs: nnx.Rngs):
        del num_classes
        self.bits = check_bits(bits)
        self.mlp = CenterMLP(in_features, hidden, self.bits[-1], rngs=rngs)

    def __call__(self, w: Array) -> tuple[Array, ...]:
        """Class weights [C, D] -> one [C, b_k] table per length."""
        table = centers_from_logits(self.mlp(w))
        return tuple(table[:, :b] for b in self.bits)


class SeparateCenters(nnx.Module):
    """One MLP per length, each to its own b_k bits."""

    def __init__(self, in_features: int, bits: Sequence[int], *,
                 num_classes: int, hidden: int, rngs: nnx.Rngs):
        del num_classes
        self.bits = check_bits(bits)
        self.mlps = nnx.List([CenterMLP(in_features, hidden, b, rngs=rngs)
                              for b in self.bits])

    def __call__(self, w: Array) -> tuple[Array, ...]:
        """Class weights [C, D] -> one [C, b_k] table per length."""
        return tuple(centers_from_logits(mlp(w)) for mlp in self.mlps)


class FixedTable(nnx.Variable):
    """A constant centre table: neither a parameter nor trained."""


class HadamardCenters(nnx.Module):
    """CSQ's Hadamard centres per length (fixed; W is ignored)."""

    def __init__(self, in_features: int, bits: Sequence[int], *,
                 num_classes: int, hidden: int, rngs: nnx.Rngs):
        del in_features, hidden
        self.bits = check_bits(bits)
        keys = jax.random.split(rngs.params(), len(self.bits))
        self.tables = nnx.List([
            FixedTable(hadamard_centers(k, num_classes, b))
            for k, b in zip(keys, self.bits)])

    def __call__(self, w: Array) -> tuple[Array, ...]:
        """Returns the fixed [C, b_k] tables (``w`` is unused)."""
        del w
        return tuple(t[...] for t in self.tables)


# name -> module class; every one maps W [C, D] to a tuple of [C, b_k].
CENTERS = {
    'prefix': PrefixCenters,
    'separate': SeparateCenters,
    'hadamard': HadamardCenters,
}


def make_centers(name: str, in_features: int, bits: Sequence[int], *,
                 num_classes: int, hidden: int | None = None,
                 rngs: nnx.Rngs) -> nnx.Module:
    """Builds the centre module registered as ``name``.

    Args:
      name: a key of ``CENTERS``.
      in_features: D, the width of the class-weight rows.
      bits: sorted code lengths.
      num_classes: C.
      hidden: width of the MLP's hidden layer (None: D, as in ODH).
      rngs: NNX random streams.

    Raises:
      ValueError: for an unknown name (listing the valid ones).
    """
    if name not in CENTERS:
        raise ValueError(
            f'Unknown centres {name!r}; choose one of {sorted(CENTERS)}.'
        )
    return CENTERS[name](in_features, bits, num_classes=num_classes,
                         hidden=hidden or in_features, rngs=rngs)
