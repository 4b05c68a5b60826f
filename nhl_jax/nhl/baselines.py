"""Weighting baselines for the per-length objectives.

Static weights, uncertainty weighting (Kendall et al. 2018), GradNorm
(Chen et al. 2018) and PCGrad (Yu et al. 2020), each in two forms sharing
one implementation:

- an optax ``GradientTransformationExtraArgs`` with the shape of
  ``nhl_jax.nhl.weighting.dominance_weighting``: ``update`` takes gradients
  stacked on a leading [M] axis (plus the [M] objectives as the keyword
  extra arg ``losses``) and returns ONE update, sum_k a_k g_k;
- a ``WeightingRule`` for the objective's fast path
  (``nhl_jax.nhl.objective``, ``--weighting=<name>``).

Every rule here reads the per-length gradients only through their [M, M]
Gram matrix on a shared parameter, which on the fast path is the hash-layer
kernel: <G_i, G_j> with G_k = F^T g_k (F [B, D] the features, g_k [B, K]
the output gradient of length k) comes from the [B, B] feature Gram matrix
(``weighting.column_products_from_outputs``) without forming any G_k.

**PCGrad on the hash layer.** Projecting g_i onto the normal plane of g_j
(g_i <- g_i - <g_i, g_j> / ||g_j||^2 g_j) keeps every projected gradient a
linear combination of the original ones, so the PCGrad update is
sum_i g_i^PC = sum_k a_k g_k with coefficients a computed from the Gram
matrix alone. Here the conflicts and projections are decided on the
hash-layer kernel gradients G_k, and the same coefficients weight the
whole network's gradients in the single backward pass of
sum_k sg(a_k) L_k: on the kernel this IS PCGrad (exactly), on the backbone
it applies the kernel's projection coefficients. Pass ``shared=None`` to
the transform for PCGrad on the full parameter vector instead.
"""

from collections.abc import Callable, Sequence
from typing import Annotated, Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from nhl_jax.hparams import Fraction, Range, Scale
from nhl_jax.models.nested import check_bits
from nhl_jax.nhl.weighting import WeightingRule
from nhl_jax.types import Array


class BaselineInfo(NamedTuple):
    """One step of a baseline rule (no gradient flows through it).

    Attributes:
      weights: [M] coefficients a_k of the per-length objectives.
      losses: [M] the objectives the rule saw.
      norms: [M] ||dL_k/dW|| on the shared layer (0 when not used).
      projected: [M] bool, g_k was projected by PCGrad (False otherwise).
    """

    weights: Array  # [M]
    losses: Array  # [M]
    norms: Array  # [M]
    projected: Array  # [M] bool


def _info(weights, losses, norms=None, projected=None) -> BaselineInfo:
    m = weights.shape[0]
    return BaselineInfo(
        weights=weights,
        losses=jax.lax.stop_gradient(losses),
        norms=jnp.zeros((m,)) if norms is None else norms,
        projected=(jnp.zeros((m,), bool) if projected is None
                   else projected),
    )


def gram_matrix(stacked: Any) -> Array:
    """[M, M] inner products <g_i, g_j> of [M]-stacked gradient trees."""
    leaves = jax.tree.leaves(stacked)
    flat = [x.reshape(x.shape[0], -1) for x in leaves]
    return sum(f @ f.T for f in flat)


def _check_losses(losses, m: int, name: str) -> Array:
    if losses is None:
        raise ValueError(
            f'{name} needs the per-length objectives: call update(..., '
            'losses=l) with l the [M] objectives.'
        )
    chex.assert_shape(losses, (m,))
    return jax.lax.stop_gradient(jnp.asarray(losses, jnp.float32))


# ---------------------------------------------------------------- static --


class StaticState(NamedTuple):
    """State of ``static_weighting`` (constant weights, kept for logging).

    Attributes:
      count: [] int32, number of updates.
      weights: [M] float32, the normalised weights.
    """

    count: Array  # [] int32
    weights: Array  # [M] float32


def static_weights(num_lengths: int, weights=None) -> np.ndarray:
    """Fixed weights normalised to sum M, short to long.

    Args:
      num_lengths: M.
      weights: M positive numbers, or None for MAH's halving 4:2:1 pattern
        extended to M lengths, 2^(M-1-k) (the shortest code weighs most).

    Returns:
      [M] float32 numpy weights, M w / sum(w).
    """
    if weights is None:
        weights = 2.0 ** -np.arange(num_lengths)
    w = np.asarray(weights, np.float64)
    if w.shape != (num_lengths,) or not np.all(np.isfinite(w)) or np.any(
            w <= 0):
        raise ValueError(
            f'static weights must be {num_lengths} positive numbers (one per '
            f'length), got {weights!r}.'
        )
    return (num_lengths * w / w.sum()).astype(np.float32)


def static_rule(bits: Sequence[int], *, weights=None) -> WeightingRule:
    """Constant weights (``static_weights``); reads no gradient.

    References:
      MAH, arXiv 1809.09329 (4:2:1 joint loss).
    """
    bits = check_bits(bits)
    w = jnp.asarray(static_weights(len(bits), weights))

    def init_fn(key):
        del key
        return StaticState(jnp.zeros((), jnp.int32), w)

    def weigh_fn(state, *, products, losses):
        del state, products
        return _info(w, losses)

    def update_fn(state, info):
        return StaticState(optax.safe_increment(state.count), info.weights)

    return WeightingRule(init_fn, weigh_fn, update_fn, uses_products=False)


def equal_rule(bits: Sequence[int]) -> WeightingRule:
    """Plain summation, sum_k L_k (``--weighting=none``)."""
    return static_rule(bits, weights=np.ones(len(check_bits(bits))))


# ----------------------------------------------------------- uncertainty --


class UncertaintyState(NamedTuple):
    """State of the uncertainty weighting.

    Attributes:
      count: [] int32, number of updates.
      log_vars: [M] float32, the learned log-variances s_k.
      weights: [M] float32, exp(-s_k) of the last update.
    """

    count: Array  # [] int32
    log_vars: Array  # [M] float32
    weights: Array  # [M] float32


def uncertainty_step(log_vars: Array, losses: Array, *,
                     learning_rate: float) -> Array:
    """One gradient-descent step on s of L = sum_k exp(-s_k) L_k + s_k.

    dL/ds_k = 1 - exp(-s_k) L_k, so s_k moves towards log L_k.

    Args:
      log_vars: [M] s_k.
      losses: [M] L_k (no gradient).
      learning_rate: step size on s.

    Returns:
      [M] updated s_k.
    """
    return log_vars - learning_rate * (1.0 - jnp.exp(-log_vars) * losses)


def uncertainty_rule(bits: Sequence[int], *,
                     learning_rate: Scale = 1e-2) -> WeightingRule:
    """Learned log-variances s_k: weights exp(-s_k), updated in the state.

    The network sees sum_k sg(exp(-s_k)) L_k (the s_k term has no network
    gradient); s takes its own plain gradient step per training step,
    which keeps the rule a pure function of its state instead of adding
    s to the model's parameters and optimizer. The objectives must be
    positive (s_k tends to log L_k).

    Args:
      bits: sorted code lengths.
      learning_rate: step size of s (initialised at 0: weights 1).

    References:
      Kendall, Gal & Cipolla, CVPR 2018 (arXiv 1705.07115), Eq. (7)-(10) in
      the form exp(-s) L + s with s = log sigma^2.
    """
    bits = check_bits(bits)
    m = len(bits)

    def init_fn(key):
        del key
        return UncertaintyState(jnp.zeros((), jnp.int32),
                                jnp.zeros((m,), jnp.float32),
                                jnp.ones((m,), jnp.float32))

    def weigh_fn(state, *, products, losses):
        del products
        losses = _check_losses(losses, m, 'uncertainty weighting')
        return _info(jnp.exp(-state.log_vars), losses)

    def update_fn(state, info):
        return UncertaintyState(
            optax.safe_increment(state.count),
            uncertainty_step(state.log_vars, info.losses,
                             learning_rate=learning_rate),
            info.weights.astype(jnp.float32))

    return WeightingRule(init_fn, weigh_fn, update_fn, uses_products=False)


# -------------------------------------------------------------- GradNorm --


class GradNormState(NamedTuple):
    """State of GradNorm.

    Attributes:
      count: [] int32, number of updates.
      weights: [M] float32, w_k for the next step (sum M).
      initial_losses: [M] float32, L_k(0) from the first update.
    """

    count: Array  # [] int32
    weights: Array  # [M] float32
    initial_losses: Array  # [M] float32


def gradnorm_step(weights: Array, norms: Array, losses: Array,
                  initial_losses: Array, *, alpha: float,
                  learning_rate: float, min_weight: float) -> Array:
    """One GradNorm update of the task weights.

    G_k = w_k ||dL_k/dW||, r_k = (L_k / L_k(0)) / mean_j(L_j / L_j(0)),
    L_grad = sum_k |G_k - mean(G) r_k^alpha| with the target held
    constant, so dL_grad/dw_k = sign(G_k - target_k) ||dL_k/dW||; then
    w <- w - learning_rate dL_grad/dw, floored at ``min_weight`` (a guard
    against sign flips, not in the paper) and renormalised to sum M.

    Args:
      weights: [M] w_k(t).
      norms: [M] ||dL_k/dW|| of the unweighted objectives on the shared
        layer W.
      losses: [M] L_k(t).
      initial_losses: [M] L_k(0) (positive).
      alpha: restoring-force strength.
      learning_rate: step size on w.
      min_weight: floor of w before renormalising.

    Returns:
      [M] w_k(t + 1), sum M.
    """
    m = weights.shape[0]
    grad_norms = weights * norms  # [M] G_k
    ratio = losses / jnp.where(initial_losses != 0, initial_losses, 1.0)
    target = jnp.mean(grad_norms) * (ratio / jnp.mean(ratio)) ** alpha
    grad = jnp.sign(grad_norms - target) * norms
    new = jnp.maximum(weights - learning_rate * grad, min_weight)
    return m * new / jnp.sum(new)


def gradnorm_rule(bits: Sequence[int], *,
                  alpha: Annotated[float, Range(0)] = 1.5,
                  learning_rate: Scale = 0.025,
                  min_weight: Fraction = 1e-3) -> WeightingRule:
    """GradNorm on the hash-layer kernel (the layer all lengths share).

    Args:
      bits: sorted code lengths.
      alpha: GradNorm's alpha >= 0 (1.5, the paper's NYUv2 value).
      learning_rate: step size of the weights (plain gradient descent).
      min_weight: floor of a weight before renormalising, in [0, 1].

    References:
      Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018 (arXiv 1711.02257),
      Eq. (1)-(2) and Algorithm 1.
    """
    bits = check_bits(bits)
    m = len(bits)

    def init_fn(key):
        del key
        return GradNormState(jnp.zeros((), jnp.int32),
                             jnp.ones((m,), jnp.float32),
                             jnp.ones((m,), jnp.float32))

    def weigh_fn(state, *, products, losses):
        losses = _check_losses(losses, m, 'GradNorm')
        gram = jax.lax.stop_gradient(products[..., -1])
        norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
        return _info(state.weights, losses, norms=norms)

    def update_fn(state, info):
        initial = jnp.where(state.count == 0, info.losses,
                            state.initial_losses)
        weights = gradnorm_step(
            state.weights, info.norms, info.losses, initial, alpha=alpha,
            learning_rate=learning_rate, min_weight=min_weight)
        return GradNormState(optax.safe_increment(state.count),
                             weights.astype(jnp.float32), initial)

    return WeightingRule(init_fn, weigh_fn, update_fn, uses_products=True)


# ---------------------------------------------------------------- PCGrad --


class PCGradState(NamedTuple):
    """State of PCGrad.

    Attributes:
      count: [] int32, number of updates (folded into the key).
      key: [2] uint32 raw key of the projection orders.
      projected: [M] int32; entry k counts the steps in which g_k was
        projected (it conflicted with another length's gradient).
      weights: [M] float32, the coefficients of the last update.
    """

    count: Array  # [] int32
    key: Array  # [2] uint32
    projected: Array  # [M] int32
    weights: Array  # [M] float32


def _raw_key(key: Array) -> Array:
    """[2] uint32 data of a typed or raw key (checkpoint-friendly)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return jnp.asarray(key, jnp.uint32)


def pcgrad_orders(key: Array, num_lengths: int) -> Array:
    """[M, M] int32; row i is the random order in which g_i is projected."""
    keys = jax.random.split(key, num_lengths)
    return jax.vmap(lambda k: jax.random.permutation(k, num_lengths))(keys)


def pcgrad_coefficients(gram: Array, orders: Array) -> tuple[Array, Array]:
    """PCGrad's projections as coefficients over the original gradients.

    For each i: g_i^PC = g_i; for j in ``orders[i]`` (j != i): if
    <g_i^PC, g_j> < 0, g_i^PC -= <g_i^PC, g_j> / ||g_j||^2 g_j. Every
    g_i^PC stays sum_k C[i, k] g_k, and only the Gram matrix is needed.

    Args:
      gram: [M, M] <g_i, g_j>.
      orders: [M, M] from ``pcgrad_orders``.

    Returns:
      ``(coefficients, projected)``: C [M, M] with g_i^PC = sum_k C[i, k]
      g_k (the update is sum_i g_i^PC, coefficients C.sum(0)), and [M] bool.

    References:
      Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020
      (arXiv 2001.06782), Algorithm 1.
    """
    m = gram.shape[0]
    chex.assert_shape([gram, orders], (m, m))

    def project(i, order):
        def body(p, carry):
            coeffs, hit = carry
            j = order[p]
            dot = coeffs @ gram[:, j]  # <g_i^PC, g_j>
            own = gram[j, j]
            conflict = (j != i) & (dot < 0) & (own > 0)
            scale = jnp.where(conflict, dot / jnp.where(conflict, own, 1.0),
                              0.0)
            coeffs = coeffs - scale * jax.nn.one_hot(j, m, dtype=gram.dtype)
            return coeffs, hit | conflict

        start = jax.nn.one_hot(i, m, dtype=gram.dtype)
        return jax.lax.fori_loop(0, m, body, (start, jnp.zeros((), bool)))

    return jax.vmap(project)(jnp.arange(m), orders)


def pcgrad_rule(bits: Sequence[int]) -> WeightingRule:
    """PCGrad on the hash-layer kernel (see the module docstring).

    The orders are drawn from the state's key folded with the step count.
    """
    bits = check_bits(bits)
    m = len(bits)

    def init_fn(key):
        return PCGradState(jnp.zeros((), jnp.int32), _raw_key(key),
                           jnp.zeros((m,), jnp.int32),
                           jnp.ones((m,), jnp.float32))

    def weigh_fn(state, *, products, losses):
        gram = jax.lax.stop_gradient(products[..., -1])
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key),
                                 state.count)
        coeffs, projected = pcgrad_coefficients(gram, pcgrad_orders(key, m))
        return _info(jnp.sum(coeffs, axis=0), losses, projected=projected)

    def update_fn(state, info):
        return PCGradState(optax.safe_increment(state.count), state.key,
                           state.projected + info.projected.astype(jnp.int32),
                           info.weights.astype(jnp.float32))

    return WeightingRule(init_fn, weigh_fn, update_fn, uses_products=True)


# --------------------------------------------------- optax transforms ------


def rule_transform(
    rule: WeightingRule,
    shared: Callable[[Any], Any] | None = None,
    key: Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    """A ``WeightingRule`` as an optax transform over [M]-stacked gradients.

    ``update(updates, state, params=None, *, losses=None)`` reads the Gram
    matrix of ``shared(updates)`` (all leaves when ``shared`` is None), the
    [M] objectives ``losses``, and returns sum_k a_k g_k.

    Args:
      rule: the weighting rule.
      shared: maps the stacked gradient tree to the [M, ...] gradients of
        the shared parameters, e.g. ``lambda g: g['head']['kernel']``.
      key: the rule's key (PCGrad); None for a fixed key(0).

    Returns:
      A ``GradientTransformationExtraArgs`` with the rule's state.
    """
    select = (lambda g: g) if shared is None else shared
    key = jax.random.key(0) if key is None else key

    def init_fn(params):
        del params
        return rule.init(key)

    def update_fn(updates, state, params=None, *, losses=None, **extra_args):
        del params, extra_args
        products = None
        if rule.uses_products:
            products = gram_matrix(select(updates))[..., None]  # [M, M, 1]
        info = rule.weigh(state, products=products, losses=losses)
        coeffs = jax.lax.stop_gradient(info.weights)
        combined = jax.tree.map(
            lambda g: jnp.tensordot(coeffs.astype(g.dtype), g, axes=1),
            updates)
        return combined, rule.update(state, info)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def static_weighting(bits: Sequence[int], *,
                     weights=None) -> optax.GradientTransformationExtraArgs:
    """sum_k w_k g_k with fixed weights (``static_rule``)."""
    return rule_transform(static_rule(bits, weights=weights))


def uncertainty_weighting(
    bits: Sequence[int], *, learning_rate: float = 1e-2
) -> optax.GradientTransformationExtraArgs:
    """sum_k exp(-s_k) g_k with learned s (``uncertainty_rule``); needs the
    [M] objectives as ``update(..., losses=l)``."""
    return rule_transform(uncertainty_rule(bits, learning_rate=learning_rate))


def gradnorm(
    bits: Sequence[int], shared: Callable[[Any], Any] | None = None, *,
    alpha: float = 1.5, learning_rate: float = 0.025,
    min_weight: float = 1e-3,
) -> optax.GradientTransformationExtraArgs:
    """GradNorm (``gradnorm_rule``) with norms on ``shared(updates)``;
    needs the [M] objectives as ``update(..., losses=l)``."""
    rule = gradnorm_rule(bits, alpha=alpha, learning_rate=learning_rate,
                         min_weight=min_weight)
    return rule_transform(rule, shared)


def pcgrad(
    bits: Sequence[int], key: Array,
    shared: Callable[[Any], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """PCGrad (``pcgrad_rule``) with conflicts decided on
    ``shared(updates)`` (all parameters when None), orders from ``key``."""
    return rule_transform(pcgrad_rule(bits), shared, key)
