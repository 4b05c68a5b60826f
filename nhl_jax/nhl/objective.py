"""One batch -> the NHL objective over every code length.

    L_total = sum_k sg(w_k) [ L_k(h_k) + lambda L_dis(k) ],  L_dis(M) = 0,

with an unmodified copy of the base loss per length (own state), the cascade
distillation of ``nhl_jax.nhl.distill`` and weights w from a weighting rule of
``WEIGHTINGS`` (``nhl_jax.nhl.weighting``: the dominance rules;
``nhl_jax.nhl.baselines``: static, uncertainty, GradNorm, PCGrad; all ones for
``weighting='none'``). One ``jax.grad`` of ``apply`` is one backward pass
through the network: rules that read gradients get them from head-only
per-length output gradients computed inside (the fast path of NHL,
arXiv 2412.08922, Eq. (6)-(7)), and the weights carry no gradient. Those
per-length gradients, one vjp of each length's own objective, also give
the total's gradient on the codes, so the losses are differentiated once:
with them the weighting `paper` adds much less to a step over plain nested
than a second differentiation would (``benchmarks/step_overhead.py``;
figures in benchmarks/RESULTS.md).
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nhl_jax import parallel
from nhl_jax.hparams import Weight, check_hyperparameter, check_kwargs
from nhl_jax.models.nested import check_bits, split_codes
from nhl_jax.nhl import baselines, distill, label_bank, stacked
from nhl_jax.nhl import weighting as weighting_lib
from nhl_jax.types import Array, HashLoss

# name -> factory(bits, **hyperparameters) -> weighting_lib.WeightingRule.
WEIGHTINGS = {
    'none': baselines.equal_rule,
    'paper': functools.partial(weighting_lib.dominance_rule, rule='paper'),
    'released': functools.partial(weighting_lib.dominance_rule,
                                  rule='released'),
    'static': baselines.static_rule,
    'uncertainty': baselines.uncertainty_rule,
    'gradnorm': baselines.gradnorm_rule,
    'pcgrad': baselines.pcgrad_rule,
}


def get_weighting(name: str, bits: Sequence[int],
                  **kwargs) -> weighting_lib.WeightingRule:
    """The weighting rule ``name`` for ``bits`` with its hyperparameters.

    Raises:
      ValueError: unknown name; ``UsageError`` (a ``ValueError``): an
        unknown hyperparameter or a value of the wrong type.
    """
    if name not in WEIGHTINGS:
        raise ValueError(
            f'Unknown weighting {name!r}; choose one of {list(WEIGHTINGS)}.'
        )
    check_kwargs(f'weighting {name!r}', WEIGHTINGS[name], kwargs, None)
    return WEIGHTINGS[name](bits, **kwargs)


class NHLMetrics(NamedTuple):
    """Per-length values of one step (all stop-gradient).

    Attributes:
      losses: [M] base loss L_k of each length.
      distill: [M] distillation term L_dis(k) (0 for the longest length).
      objectives: [M] L_k + lambda L_dis(k).
      info: the rule's info of the step: ``DominanceInfo`` (weights, raw
        weights, anti-domination, cosines) for ``'paper'``/``'released'``,
        ``baselines.BaselineInfo`` for the others.
    """

    losses: Array
    distill: Array
    objectives: Array
    info: Any

    @property
    def weights(self) -> Array:
        """[M] the weights used."""
        return self.info.weights


class NHLObjective(NamedTuple):
    """The NHL objective as a pair of pure functions.

    Attributes:
      init: ``init(key, *, num_train, num_classes) -> states``, a tuple of one
        base-loss state per length; a label bank [N, C] is kept in the
        first length's state only (``label_bank``).
      apply: ``apply(states, h, labels, index, *, features=None,
        weighting_state=None, loss_params=None) -> (total, (new_states,
        NHLMetrics))``, ready for ``jax.value_and_grad(..., has_aux=True)``.
        ``h`` is the [B, K_max] nested-layer output; ``features`` [B, D]
        (its input) is required by the rules that read gradients;
        ``weighting_state`` is the rule's state (None: its initial state);
        ``loss_params`` the tuple of per-length loss parameters (losses with
        ``init_params``), differentiable like the network's.
      init_weighting: ``init_weighting(key) -> state`` of the rule.
      update_weighting: ``update_weighting(state, metrics) -> state``, the
        rule's state after the step of ``metrics``.
      init_params: ``init_params(key, *, num_classes) -> tuple`` of one
        parameter pytree per length, or None if the loss has none.
      epoch_update: ``epoch_update(states, loss_params) -> states``, the
        loss's closed-form update after every epoch, or None.
    """

    init: Callable[..., tuple[Any, ...]]
    apply: Callable[..., tuple[Array, tuple[tuple[Any, ...], NHLMetrics]]]
    init_weighting: Callable[[Any], Any]
    update_weighting: Callable[[Any, NHLMetrics], Any]
    init_params: Callable[..., tuple[Any, ...]] | None = None
    epoch_update: Callable[..., tuple[Any, ...]] | None = None


class _Lengths(NamedTuple):
    """What ``apply`` weighs: each length's values, stacked [M].

    ``products`` (the rule's gradient products) and ``linearised``
    (``weights -> total``, its gradient taken from each length's own vjp)
    only for the rules that read gradients.
    """

    objectives: Array
    losses: Array
    distill: Array
    states: tuple[Any, ...]
    products: Array | None = None
    linearised: Callable[[Array], Array] | None = None


def _linearised(value: Array, grads, primals) -> Array:
    """``value`` whose gradient on ``primals`` is ``grads``, taken as given.

    sg(value) + sum <sg(g), x - sg(x)>: the same value, and a first-order
    gradient that costs one multiply-add instead of a backward pass.
    """
    total = jax.lax.stop_gradient(value)
    for g, x in zip(jax.tree.leaves(grads), jax.tree.leaves(primals)):
        if g.dtype != jax.dtypes.float0:  # integer leaves have no gradient
            total = total + jnp.vdot(jax.lax.stop_gradient(g),
                                     x - jax.lax.stop_gradient(x))
    return total


def nhl_objective(
    loss: HashLoss,
    bits: Sequence[int],
    *,
    distill_weight: Weight = 0.1,
    weighting: str = 'none',
    weighting_kwargs: dict | None = None,
    topology: str = 'adjacent',
    stack_lengths: bool = False,
) -> NHLObjective:
    """Builds the multi-length NHL objective around one base loss.

    Args:
      loss: the base loss; each length gets its own state.
      bits: sorted code lengths b_1 < ... < b_M.
      distill_weight: lambda of the cascade distillation, in [0, 1000]
        (``hparams.MAX_WEIGHT``; 0 turns it off).
      weighting: a key of ``WEIGHTINGS``.
      weighting_kwargs: the rule's hyperparameters, e.g.
        ``{'weights': (4, 2, 1)}`` for ``'static'``.
      topology: distillation teachers, see ``distill.cascade_distill``.
      stack_lengths: run every length in one vmap over masked codes when
        the loss has a ``masked`` form (``nhl_jax.nhl.stacked``: traced
        once, equal to float rounding, but each length's work spans all
        K_max columns); False, or a loss without one, unrolls a copy per
        length.

    Returns:
      An ``NHLObjective``.

    Raises:
      UsageError: a distill weight that is not a finite number in range,
        or what ``get_weighting`` raises.

    References:
      NHL, arXiv 2412.08922, total objective.
    """
    check_hyperparameter('nhl_objective', nhl_objective, 'distill_weight',
                         distill_weight)
    bits = check_bits(bits)
    rule = get_weighting(weighting, bits, **dict(weighting_kwargs or {}))
    if topology not in distill.TOPOLOGIES:
        raise ValueError(
            f'Unknown distillation topology {topology!r}; choose one of '
            f'{sorted(distill.TOPOLOGIES)}.'
        )
    m = len(bits)
    stacked_path = stack_lengths and m > 1 and stacked.supports(loss)

    # One program for every length's state: drawn op by op, the centres
    # and banks of M lengths are dozens of small programs, each a
    # compilation (or a cache load) at the start of every run.
    @functools.partial(jax.jit, static_argnames=('num_train', 'num_classes'))
    def init_fn(key, *, num_train, num_classes):
        if loss.init_lengths is not None:
            return tuple(loss.init_lengths(
                key, num_train=num_train, num_classes=num_classes, bits=bits))
        keys = jax.random.split(key, m)
        return tuple(
            loss.init(k, num_train=num_train, num_classes=num_classes, bits=b)
            for k, b in zip(keys, bits)
        )

    def one_loss(state, codes, labels, index, params, features):
        kw = {}
        if loss.init_params is not None:
            kw['params'] = params
        if loss.features:
            kw['features'] = features
        return loss.apply(state, codes, labels, index, **kw)

    def per_length(h, states, labels, index, loss_params, features, shards):
        codes = split_codes(h, bits)
        params = loss_params if loss_params is not None else (None,) * m
        values, new_states = zip(*(
            one_loss(s, c, labels, index, p, features)
            for s, c, p in zip(states, codes, params)))
        base = jnp.stack(values)  # [M]
        dis = jnp.concatenate(
            [distill.cascade_distill(codes, topology=topology,
                                     batch_shards=shards), jnp.zeros(1)]
        )  # [M]
        return base + distill_weight * dis, (tuple(new_states), base, dis)

    def apply_fn(states, h, labels, index, *, features=None,
                 weighting_state=None, loss_params=None):
        if weighting_state is None:
            weighting_state = rule.init(jax.random.key(0))
        if loss.features and features is None:
            raise ValueError(
                'this base loss reads the backbone features: call '
                'apply(..., features=x) with x the [B, D] hash-layer input.')
        # Static: with the batch split over devices, the sums over its rows
        # are taken per device and all-reduced, never gathered.
        shards = parallel.batch_shards()
        if stacked_path:
            out = _stacked_lengths(states, h, labels, index, features, shards)
        elif rule.uses_products:
            out = _unrolled_lengths_with_grads(h, states, labels, index,
                                               loss_params, features, shards)
        else:
            objs, (new_states, base, dis) = per_length(
                h, states, labels, index, loss_params=loss_params,
                features=features, shards=shards)
            out = _Lengths(objs, base, dis, new_states)
        info = rule.weigh(weighting_state, products=out.products,
                          losses=jax.lax.stop_gradient(out.objectives))
        weights = jax.lax.stop_gradient(info.weights)
        if out.linearised is not None:
            total = out.linearised(weights)
        else:
            total = jnp.sum(weights * out.objectives)
        metrics = NHLMetrics(*jax.lax.stop_gradient(
            (out.losses, out.distill, out.objectives)), info)
        return total, (out.states, metrics)

    def _unrolled_lengths_with_grads(h, states, labels, index, loss_params,
                                     features, shards):
        """``_Lengths`` of the per-length copies, with the rule's products
        and the total linearised through each length's own vjp."""
        objs, grads, primals, (new_states, base, dis) = _per_length_grads(
            h, states, labels, index, loss_params, features, shards)
        products = _products(jnp.stack([
            jnp.pad(g[0], ((0, 0), (0, bits[-1] - b)))
            for g, b in zip(grads, bits)]), features, shards)

        def linearised(weights):
            return sum(w * _linearised(o, g, x) for w, o, g, x in zip(
                weights, objs, grads, primals))

        return _Lengths(objs, base, dis, new_states, products, linearised)

    def _per_length_grads(h, states, labels, index, loss_params, features,
                          shards):
        """Each objective and its gradient on its own inputs, one vjp each.

        Objective k reads only code k (its teachers are stop-gradient), its
        loss parameters and, for losses that read them, the features. So
        its vjp on those inputs is one backward pass of length k alone,
        and the M of them give both the rule's products and the total's
        gradient (``_linearised``): no second backward through the losses.
        """
        _check_features(features)
        codes = split_codes(h, bits)
        params = loss_params if loss_params is not None else (None,) * m
        own_features = features if loss.features else None
        objs, grads, primals, auxes = [], [], [], []
        for k in range(m):
            primal = (codes[k], params[k], own_features)
            value, vjp_fn, aux = jax.vjp(
                functools.partial(length_objective, k, codes, states[k],
                                  labels, index, shards=shards),
                *primal, has_aux=True)
            objs.append(value)
            grads.append(vjp_fn(jnp.ones_like(value)))
            primals.append(primal)
            auxes.append(aux)
        new_states, base, dis = zip(*auxes)
        return (jnp.stack(objs), grads, primals,
                (tuple(new_states), jnp.stack(base), jnp.stack(dis)))

    def length_objective(k, codes, state, labels, index, code, params,
                         features, *, shards):
        """L_k(code) + lambda L_dis(k), and (new state, L_k, L_dis(k))."""
        value, new_state = one_loss(state, code, labels, index, params,
                                    features)
        dis = (distill.length_distill(code, codes, k, topology=topology,
                                      batch_shards=shards)
               if k < m - 1 else jnp.zeros((), value.dtype))
        return value + distill_weight * dis, (new_state, value, dis)

    def _check_features(features):
        if features is None:
            raise ValueError(
                f'weighting={weighting!r} needs the hash-layer input: call '
                'apply(..., features=x) with x the [B, D] backbone features.'
            )

    def _stacked_lengths(states, h, labels, index, features, shards):
        """``_Lengths`` through ``stacked.length_values``: one vmap."""
        if rule.uses_products:
            _check_features(features)
        values = stacked.length_values(
            loss, h, states, labels, index, bits=bits, topology=topology,
            distill_weight=distill_weight, batch_shards=shards,
            out_grads=rule.uses_products)
        out = _Lengths(values.objectives, values.losses, values.distill,
                       tuple(states))
        if not rule.uses_products:
            return out
        return out._replace(
            products=_products(values.out_grads, features, shards),
            linearised=lambda w: stacked.linearised_total(w, values, h))

    def _products(out_grads, features, shards):
        """Q [M, M, M] of the per-length head gradients (Eq. (6)-(7)),
        from out_grads [M, B, K_max] (zero beyond each length)."""
        columns = weighting_lib.column_products_from_outputs(
            jax.lax.stop_gradient(features), jax.lax.stop_gradient(out_grads),
            batch_shards=shards)
        return weighting_lib.prefix_products(columns, bits)

    def update_weighting(state, metrics):
        return rule.update(state, metrics.info)

    def init_params(key, *, num_classes):
        keys = jax.random.split(key, m)
        return tuple(loss.init_params(k, num_classes=num_classes, bits=b)
                     for k, b in zip(keys, bits))

    def epoch_update(states, loss_params):
        params = loss_params if loss_params is not None else (None,) * m
        return tuple(loss.epoch_update(s, p) for s, p in zip(states, params))

    # Every length writes the same labels: its state keeps them once.
    return label_bank.share_labels(NHLObjective(
        init_fn, apply_fn, rule.init, update_weighting,
        init_params if loss.init_params is not None else None,
        epoch_update if loss.epoch_update is not None else None))

