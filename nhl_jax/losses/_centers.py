"""Centre tables shared by CSQ and DPN: independent or nested per length.

NHL gives every length its own copy of the base loss, so CSQ and DPN draw
one centre table per length (``centers='independent'``, the reference).
With ``centers='nested'`` one table of the longest width is drawn and
length b takes its first b columns, so the 8-bit target of a class is the
prefix of its 16-bit target, as the nested codes themselves are.
"""

import math
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from nhl_jax.losses import _common
from nhl_jax.types import Array, HashLoss, PRNGKey

Mode = Literal['independent', 'nested']
CENTER_MODES = typing.get_args(Mode)
# A construction mode, or precomputed tables: one [C, K] array (any array
# or nested sequence) or {K: table} for several lengths; None: the default.
Centers = Mode | np.ndarray | jax.Array | Sequence | Mapping | None


def check_mode(method: str, centers) -> str | None:
    """The construction mode of a ``centers=`` argument, or None for tables.

    Raises:
      ValueError: for a string that is not a mode.
    """
    if centers is None:
        return 'independent'
    if isinstance(centers, str):
        if centers not in CENTER_MODES:
            raise ValueError(
                f'{method}: centers must be one of {list(CENTER_MODES)} or '
                f'a [C, K] table, got {centers!r}.')
        return centers
    return None


def rows_distinct(table: Array) -> Array:
    """Whether every two rows of the ±1 ``table`` [C, K] differ (a bool)."""
    off_diag = ~np.eye(table.shape[0], dtype=bool)
    return jnp.all(_common.pairwise_hamming(table)[off_diag] > 0)


def nested_hadamard_centers(key: PRNGKey, num_classes: int,
                            bits: Sequence[int], *,
                            retries: int = 20) -> Array:
    """One [C, K_max] CSQ table whose every b-column prefix is a CSQ table.

    A Sylvester Hadamard row r of H_{K_max} restricted to its first b
    columns is row r mod b of H_b. Class c < 2 b_1 takes row c mod K_max,
    negated for c >= b_1: its b_1-prefix is [H_{b_1}; -H_{b_1}][c], so the
    shortest length gets exactly the independent CSQ table, and every
    length b >= 2 b_1 gets distinct rows of H_b (pairwise distance b/2, as
    the independent table there). Rows r < b_1 alone would also nest, but
    their long codes repeat the b_1-bit pattern, which gives the long
    lengths nothing to add (measured: mAP flat from 8 to 128 bits).
    Classes beyond 2 b_1 get balanced random rows of width K_max: of
    ``retries`` draws, the first that passes CSQ's separation test at the
    most lengths is kept (at 8 bits no 17th code is 3 bits from all of
    [H_8; -H_8], so there no draw can pass).

    Args:
      key: PRNG key.
      num_classes: C.
      bits: the sorted lengths b_1 < ... < b_M.
      retries: random fills tried when C > 2 b_1.

    Returns:
      [C, K_max] float32 in {-1, +1}.
    """
    k0, kmax = bits[0], bits[-1]
    if any(b & (b - 1) for b in bits):
        return _common.random_signs(key, (num_classes, kmax))
    c = np.arange(min(num_classes, 2 * k0))
    signs = np.where(c >= k0, -1.0, 1.0).astype(np.float32)[:, None]
    rows = jnp.asarray(signs * _common.hadamard(kmax)[c % kmax])
    extra = num_classes - rows.shape[0]
    if extra <= 0:
        return rows
    candidates = _common.filled_candidates(key, rows, extra, retries)
    passed = jnp.stack([jax.vmap(_common.csq_separated)(candidates[:, :, :b])
                        for b in bits]).sum(0)  # [R]
    return candidates[jnp.argmax(passed)]


def distinct_targets(key: PRNGKey, num_classes: int, bits: int, p: float,
                     *, prefix: int, retries: int = 50) -> Array:
    """DPN's balanced random targets, redrawn until the classes differ.

    Each of ``retries`` draws has floor(p K) entries -1 per row; the first
    draw whose first ``prefix`` columns already differ between every two
    classes is kept (prefix = K: the rows themselves). Distinct prefixes
    make every longer prefix distinct too.

    Raises:
      ValueError: when fewer than C distinct prefixes exist at all.
    """
    num_neg = int(bits * p)
    possible = (math.comb(bits, num_neg) if prefix == bits else 2 ** prefix)
    if possible < num_classes:
        raise ValueError(
            f'dpn: {num_classes} classes cannot get distinct targets at '
            f'{prefix} bits with p={p} (only {possible} exist); use longer '
            "codes or targets='random'.")
    keys = jax.random.split(key, retries)
    candidates = jax.vmap(
        lambda k: _common.balanced_signs(k, num_classes, bits, num_neg))(keys)
    ok = jax.vmap(rows_distinct)(candidates[:, :, :prefix])
    return _common.first_accepted(candidates, ok)


def nested_states(key: PRNGKey, num_classes: int, bits: Sequence[int],
                  table: Array) -> tuple[_common.CentersState, ...]:
    """Per-length ``CentersState`` as prefixes of one [C, K_max] table.

    The multi-label fill bits are nested the same way.
    """
    fill = _common.random_signs(jax.random.fold_in(key, 1), (bits[-1],))
    return tuple(_common.CentersState(centers=table[:, :b].astype(jnp.float32),
                                      fill=fill[:b].astype(jnp.float32))
                 for b in bits)


def centers_loss(method: str, centers, apply_fn: Callable,
                 build: Callable, build_nested: Callable,
                 masked_fn: Callable | None = None) -> HashLoss:
    """A centre-based ``HashLoss`` for each ``centers=`` option.

    Args:
      method: the loss name, for messages.
      centers: ``'independent'`` (or None), ``'nested'``, or given tables
        (one [C, K] table or {K: table}).
      apply_fn: the loss's ``apply``.
      build: ``build(key, C, K) -> [C, K]``, one length's table.
      build_nested: ``build_nested(key, C, bits) -> [C, K_max]``.
      masked_fn: the loss's ``HashLoss.masked`` form, if it has one.

    Returns:
      The ``HashLoss``; with ``'nested'`` it has ``init_lengths``.
    """
    mode = check_mode(method, centers)

    def init_fn(key, *, num_train, num_classes, bits):
        del num_train
        given = None if mode else centers
        return _common.centers_state(key, num_classes, bits, build, given)

    def init_lengths(key, *, num_train, num_classes, bits):
        del num_train
        bits = tuple(bits)
        table = build_nested(jax.random.fold_in(key, 0), num_classes, bits)
        return nested_states(key, num_classes, bits, table)

    def init_one_nested(key, *, num_train, num_classes, bits):
        return init_lengths(key, num_train=num_train,
                            num_classes=num_classes, bits=(bits,))[0]

    if mode == 'nested':
        return HashLoss(init_one_nested, apply_fn, init_lengths=init_lengths,
                        masked=masked_fn)
    return HashLoss(init_fn, apply_fn, masked=masked_fn)
