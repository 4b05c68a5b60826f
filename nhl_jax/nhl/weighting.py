"""Dominance-aware dynamic weighting of the per-length NHL objectives.

Notation: g_i^k is the gradient of length i's objective
restricted to the hash-layer kernel columns of length k, W[:, :b_k]; length
i "anti-dominates" a shorter length k when <g_i^k, g_k^k> < 0. Only the
kernel is used (not the bias, not the backbone), as in the released code.

Everything is computed from one [M, M, M] table of restricted inner products
Q[i, j, k] = <g_i^k, g_j^k>, which is cheap to get either from the kernel
gradients (``dominance_analysis``) or, for a linear head, from the features
and the output gradients without ever forming [M, D, K] (``analysis_from_
outputs``, the training fast path).
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from nhl_jax import parallel
from nhl_jax.models.nested import check_bits
from nhl_jax.types import Array


class WeightingRule(NamedTuple):
    """A weighting of the M per-length objectives as three pure functions.

    The objective's fast path (``nhl_jax.nhl.objective``) and the optax
    transforms use the same rule. ``weigh`` gives the coefficients a_k of
    the ONE backward pass of sum_k sg(a_k) L_k; ``update`` folds the step
    into the rule's state (counters, learned weights).

    Attributes:
      init: ``init(key) -> state``, a NamedTuple with at least ``count``
        ([] int32) and ``weights`` ([M] float32).
      weigh: ``weigh(state, *, products, losses) -> info``; ``products`` is
        Q [M, M, M] of ``prefix_products`` (None unless ``uses_products``),
        ``losses`` the [M] per-length objectives (no gradient); ``info`` is
        a NamedTuple whose ``weights`` [M] are the coefficients a_k.
      update: ``update(state, info) -> state``.
      uses_products: whether ``weigh`` reads ``products`` (their per-length
        output gradients cost one vjp over the M objectives).
    """

    init: Callable[[Any], Any]
    weigh: Callable[..., Any]
    update: Callable[[Any, Any], Any]
    uses_products: bool


class DominanceInfo(NamedTuple):
    """Weights and conflict diagnostics of one step.

    Attributes:
      weights: [M] weights, normalised to sum to M.
      raw: [M] weights before normalisation (all <= 1; < 1 means capped).
      anti_domination: [M, M] bool; entry [i, k] is True when the longer
        length i anti-dominates length k (i > k and <g_i^k, g_k^k> < 0).
      cosine: [M, M] cosine between g_i^k and g_k^k (entry [i, k]).
    """

    weights: Array  # [M]
    raw: Array  # [M]
    anti_domination: Array  # [M, M] bool
    cosine: Array  # [M, M]


class DominanceState(NamedTuple):
    """State of ``dominance_weighting``: counters for logging.

    Attributes:
      count: [] int32, number of updates.
      anti_domination: [M] int32; entry k counts the steps in which some
        longer length anti-dominated length k.
      capped: [M] int32; entry k counts the steps in which length k's weight
        was capped below 1 (for ``rule='released'``, entry 1 is the released
        code's ``anti_rate`` numerator).
      weights: [M] float32, the weights of the last update.
    """

    count: Array  # [] int32
    anti_domination: Array  # [M] int32
    capped: Array  # [M] int32
    weights: Array  # [M] float32


def column_products(head_grads: Array) -> Array:
    """Per-column inner products c[i, j, col] = <g_i[:, col], g_j[:, col]>.

    Args:
      head_grads: [M, D, K] per-length kernel gradients.

    Returns:
      [M, M, K].
    """
    return jnp.einsum('idc,jdc->ijc', head_grads, head_grads)


def column_products_from_outputs(features: Array, out_grads: Array, *,
                                 batch_shards: int = 1) -> Array:
    """``column_products`` of g_i = features^T out_grads[i] for a linear head.

    For h = x W + b, dL_i/dW = x^T dL_i/dh. When the whole batch is on one
    device and B <= D, the products go through the [B, B] feature Gram
    matrix, which costs O(B^2 (D + M K)) instead of O(M B D K) for forming
    the kernel gradients. The Gram matrix pairs rows of every device, so
    a batch split over devices takes the kernel gradients instead: each
    device sums its own rows into [M, D, K] and one all-reduce adds them,
    where the Gram path would gather the features and output gradients.

    Args:
      features: [B, D] inputs of the hash layer.
      out_grads: [M, B, K] gradient of each length's objective w.r.t. the
        layer outputs.
      batch_shards: devices the batch's rows are split over
        (``parallel.batch_shards()`` inside a sharded step).

    Returns:
      [M, M, K], equal to ``column_products(einsum('bd,mbk->mdk', ...))``.
    """
    chex.assert_rank([features, out_grads], [2, 3])
    parallel.check_batch_shards(batch_shards)
    batch, width = features.shape
    if batch_shards > 1 or batch > width:
        return column_products(jnp.einsum('bd,mbk->mdk', features, out_grads))
    gram = features @ features.T  # [B, B]
    mixed = jnp.einsum('ab,jbc->jac', gram, out_grads)  # [M, B, K]
    return jnp.einsum('iac,jac->ijc', out_grads, mixed)


def prefix_products(columns: Array, bits: Sequence[int]) -> Array:
    """Sums per-column products over each length's prefix.

    Args:
      columns: [M, M, K_max] from ``column_products``.
      bits: sorted code lengths.

    Returns:
      Q [M, M, M] with Q[i, j, k] = <g_i^k, g_j^k> = sum_{c < b_k} columns.
    """
    bits = check_bits(bits)
    chex.assert_shape(columns, (len(bits), len(bits), bits[-1]))
    cumulative = jnp.cumsum(columns, axis=-1)
    return cumulative[..., jnp.asarray(bits) - 1]


def _paper_raw(q: Array) -> Array:
    """Reconstructed NHL Eq. (6)-(7): recursive caps, alpha_1 = 1.

    alpha_i = min(1, min_{k < i, <g_i^k, g_k^k> < 0}
                     alpha_k ||g_k^k||^2 / ((m - k) (-<g_i^k, g_k^k>))),
    with 1-based k, so that <sum_{i >= k} alpha_i g_i^k, g_k^k> >= 0.
    """
    m = q.shape[0]
    alphas = [jnp.ones((), q.dtype)]
    for i in range(1, m):
        caps = [jnp.ones((), q.dtype)]
        for k in range(i):
            dot, own = q[i, k, k], q[k, k, k]
            conflict = dot < 0
            safe = jnp.where(conflict, -dot, 1.0)
            cap = alphas[k] * own / ((m - 1 - k) * safe)
            caps.append(jnp.where(conflict, cap, 1.0))
        alphas.append(jnp.min(jnp.stack(caps)))
    return jnp.stack(alphas)


def _released_raw(q: Array, beta: float = 1.0) -> Array:
    """The released code's rule (model_grand_sd.py, slips S1-S4).

    alpha_{j,k} = beta n_j^2 / ((m-1)(-d_jk)) if -d_jk > beta n_j^2/(m-1),
    else 1, with d_jk = <g_j^j, g_k^j>, n_j = ||g_1 restricted to b_j|| (the
    shortest length's gradient for every j: slip S1) and the constant m-1
    (S2); then alpha_{j,k} <- min(alpha_{j,k}, alpha_{j,j+1}) (S4) and
    w_k = prod_{j<k} alpha_{j,k} (S3). The leftover unweighted head gradient
    (S5) is not reproduced.
    """
    m = q.shape[0]
    if m == 1:
        return jnp.ones((1,), q.dtype)
    threshold = beta * q[0, 0, :] / (m - 1)  # [M], indexed by j
    alpha = {}
    for j in range(m - 1):
        for k in range(j + 1, m):
            d = q[j, k, j]
            capped = (d < 0) & (-d > threshold[j])
            a = jnp.where(capped, threshold[j] / jnp.where(capped, -d, 1.0),
                          1.0)
            alpha[j, k] = a if k == j + 1 else jnp.minimum(a, alpha[j, j + 1])
    weights = [jnp.ones((), q.dtype)]
    for k in range(1, m):
        weights.append(jnp.prod(jnp.stack([alpha[j, k] for j in range(k)])))
    return jnp.stack(weights)


RULES = {'paper': _paper_raw, 'released': _released_raw}


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(
            f'Unknown dominance rule {rule!r}; choose one of {sorted(RULES)}.'
        )


def analysis_from_products(q: Array, *, rule: str = 'paper') -> DominanceInfo:
    """Weights and diagnostics from the restricted products Q [M, M, M].

    Args:
      q: [M, M, M] from ``prefix_products``.
      rule: ``'paper'`` (reconstructed Eq. 6-7) or ``'released'``.

    Returns:
      A ``DominanceInfo``; no gradient flows through it.
    """
    _check_rule(rule)
    q = jax.lax.stop_gradient(q)
    m = q.shape[0]
    raw = RULES[rule](q)
    cross = jnp.diagonal(q, axis1=1, axis2=2)  # [i, k]: <g_i^k, g_k^k>
    self_sq = jnp.diagonal(q, axis1=0, axis2=1).T  # [i, k]: ||g_i^k||^2
    own = jnp.diagonal(cross)  # [k]: ||g_k^k||^2
    longer = jnp.tril(jnp.ones((m, m), bool), -1)
    norms = jnp.sqrt(jnp.maximum(self_sq * own[None, :], 0.0))
    return DominanceInfo(
        weights=m * raw / jnp.sum(raw),
        raw=raw,
        anti_domination=longer & (cross < 0),
        cosine=jnp.where(norms > 0, cross / jnp.where(norms > 0, norms, 1.0),
                         0.0),
    )


def dominance_analysis(
    head_grads: Array, bits: Sequence[int], *, rule: str = 'paper'
) -> DominanceInfo:
    """Dominance weights and diagnostics from per-length kernel gradients.

    Args:
      head_grads: [M, D, K_max]; entry i is the gradient of length i's
        objective w.r.t. the hash-layer kernel.
      bits: sorted code lengths, K_max = bits[-1].
      rule: ``'paper'`` or ``'released'`` (see ``RULES``).

    Returns:
      A ``DominanceInfo``.

    References:
      NHL, arXiv 2412.08922 v2, Eq. (6)-(7) (reconstructed).
    """
    bits = check_bits(bits)
    _check_rule(rule)
    chex.assert_rank(head_grads, 3)
    chex.assert_axis_dimension(head_grads, 0, len(bits))
    chex.assert_axis_dimension(head_grads, 2, bits[-1])
    q = prefix_products(column_products(head_grads), bits)
    return analysis_from_products(q, rule=rule)


def dominance_weights(
    head_grads: Array, bits: Sequence[int], *, rule: str = 'paper'
) -> Array:
    """The [M] dominance weights (sum M) of ``dominance_analysis``."""
    return dominance_analysis(head_grads, bits, rule=rule).weights


def analysis_from_outputs(
    features: Array, out_grads: Array, bits: Sequence[int], *, rule: str,
    batch_shards: int = 1,
) -> DominanceInfo:
    """``dominance_analysis`` for a linear head from its inputs and outputs.

    Args:
      features: [B, D] inputs of the hash layer.
      out_grads: [M, B, K_max] gradient of each length's objective w.r.t. the
        hash-layer outputs.
      bits: sorted code lengths.
      rule: ``'paper'`` or ``'released'``.
      batch_shards: see ``column_products_from_outputs``.

    Returns:
      The same ``DominanceInfo`` as ``dominance_analysis`` on the kernel
      gradients features^T out_grads[i].
    """
    columns = column_products_from_outputs(features, out_grads,
                                           batch_shards=batch_shards)
    return analysis_from_products(prefix_products(columns, bits), rule=rule)


def dominance_weighting(
    bits: Sequence[int],
    head_kernel: Callable[[Any], Array],
    *,
    rule: str = 'paper',
) -> optax.GradientTransformationExtraArgs:
    """Aggregates per-length gradients into their dominance-weighted sum.

    The transformation has the shape of optax's experimental ``Aggregator``:
    its ``update`` takes gradients stacked on a leading [M] axis (e.g. from
    ``jax.jacrev`` of the [M] per-length objectives) and returns one update
    of the parameters' shape, sum_k w_k g_k. Chain it in front of an
    optimizer: ``optax.chain(dominance_weighting(...), optax.adam(1e-3))``.

    Args:
      bits: sorted code lengths.
      head_kernel: maps the stacked gradient tree to the [M, D, K_max]
        hash-layer kernel gradients, e.g. ``lambda g: g['head']['kernel']``.
      rule: ``'paper'`` or ``'released'``.

    Returns:
      A ``GradientTransformationExtraArgs`` with ``DominanceState``.
    """
    bits = check_bits(bits)
    _check_rule(rule)
    m = len(bits)

    def init_fn(params):
        del params
        return init_state(m)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        info = dominance_analysis(head_kernel(updates), bits, rule=rule)
        weighted = jax.tree.map(
            lambda g: jnp.tensordot(info.weights.astype(g.dtype), g, axes=1),
            updates,
        )
        return weighted, update_state(state, info)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def init_state(num_lengths: int) -> DominanceState:
    """Zero counters and unit weights for M = ``num_lengths`` lengths."""
    return DominanceState(
        count=jnp.zeros((), jnp.int32),
        anti_domination=jnp.zeros((num_lengths,), jnp.int32),
        capped=jnp.zeros((num_lengths,), jnp.int32),
        weights=jnp.ones((num_lengths,), jnp.float32),
    )


def update_state(state: DominanceState, info: DominanceInfo) -> DominanceState:
    """Folds one step's ``DominanceInfo`` into the counters."""
    return DominanceState(
        count=optax.safe_increment(state.count),
        anti_domination=state.anti_domination
        + jnp.any(info.anti_domination, axis=0).astype(jnp.int32),
        capped=state.capped + (info.raw < 1).astype(jnp.int32),
        weights=info.weights.astype(jnp.float32),
    )


def dominance_rule(bits: Sequence[int], *,
                   rule: str = 'paper') -> WeightingRule:
    """The dominance weighting as a ``WeightingRule`` (the fast path's).

    Args:
      bits: sorted code lengths.
      rule: ``'paper'`` or ``'released'``.

    Returns:
      A ``WeightingRule`` with ``DominanceState`` and ``DominanceInfo``.
    """
    bits = check_bits(bits)
    _check_rule(rule)

    def init_fn(key):
        del key
        return init_state(len(bits))

    def weigh_fn(state, *, products, losses):
        del state, losses
        return analysis_from_products(products, rule=rule)

    return WeightingRule(init_fn, weigh_fn, update_state, uses_products=True)
