"""DPN: Deep Polarized Network with random balanced target vectors."""

import typing
from typing import Literal

import jax.numpy as jnp

from nhl_jax.hparams import Fraction, Margin
from nhl_jax.losses import _centers, _common
from nhl_jax.types import HashLoss

Targets = Literal['random', 'distinct']


def dpn(margin: Margin = 1.0, p: Fraction = 0.5, *,
        targets: Targets = 'random',
        centers: _centers.Centers = None) -> HashLoss:
    """Bit-wise hinge that polarises each output towards its target sign.

    Targets T in {-1, +1}^{C x K} have exactly floor(p K) entries -1 at
    random positions per row (not Hadamard). With t_i from
    ``label_targets``:

      L = mean_ik max(0, m - u_ik t_ik),

    on the raw outputs, with no quantisation term. The reference's memory
    bank only serves the adaptive "-A" variant, which NHL never calls, so
    none is kept.

    Args:
      margin: polarisation margin m.
      p: fraction of -1 entries per target row.
      targets: ``'random'`` (the reference: independent rows, so two
        classes can get the same target; at 8 bits and 10 classes about
        half the seeds do) or ``'distinct'`` (redrawn until every two
        classes differ; with nested centres, already at the shortest
        length).
      centers: ``'independent'`` (the default: one table per length),
        ``'nested'`` (one table of the longest width, each length its
        prefix), or precomputed targets: a [C, K] table in {-1, +1}, or
        {K: table} for several lengths.

    Returns:
      A ``HashLoss`` whose state is a ``CentersState``.

    References:
      Fan et al., "Deep Polarized Network for Supervised Learning of Accurate
      Binary Hashing Codes", IJCAI 2020.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f'dpn: p must lie in [0, 1], got {p}.')
    if targets not in typing.get_args(Targets):
        raise ValueError(f"dpn: targets must be 'random' or 'distinct', got "
                         f'{targets!r}.')

    def build(key, num_classes, bits, prefix=None):
        if targets == 'distinct':
            return _centers.distinct_targets(key, num_classes, bits, p,
                                             prefix=prefix or bits)
        return _common.balanced_signs(key, num_classes, bits, int(bits * p))

    def build_nested(key, num_classes, bits):
        return build(key, num_classes, bits[-1], prefix=bits[0])

    def hinge(state, codes, labels, index):
        """[B, K] max(0, m - u_ik t_ik)."""
        _common.check_batch(codes, labels, index)
        targets = _common.label_targets(state, labels)
        return jnp.maximum(margin - codes * targets, 0.0)

    def apply_fn(state, codes, labels, index):
        return jnp.mean(hinge(state, codes, labels, index)), state

    def masked_fn(state, codes, mask, labels, index):
        return _common.masked_mean(hinge(state, codes, labels, index), mask)

    return _centers.centers_loss('dpn', centers, apply_fn, build,
                                 build_nested, masked_fn)
