"""One batch -> the NHL objective over every code length.

    L_total = sum_k sg(w_k) [ L_k(h_k) + lambda L_dis(k) ],  L_dis(M) = 0,

with an unmodified copy of the base loss per length (own state), the cascade
distillation of ``nhl_jax.distill`` and weights w from ``nhl_jax.weighting``
(all ones for ``weighting='none'``). One ``jax.grad`` of ``apply`` is one
backward pass through the network: the weights come from head-only gradients
computed inside (the fast path of papers.md 2.3) and carry no gradient.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nhl_jax import distill
from nhl_jax import weighting as weighting_lib
from nhl_jax.nested import check_bits, split_codes
from nhl_jax.types import Array, HashLoss

WEIGHTINGS = ('none', *sorted(weighting_lib.RULES))


class NHLMetrics(NamedTuple):
    """Per-length values of one step (all stop-gradient).

    Attributes:
      losses: [M] base loss L_k of each length.
      distill: [M] distillation term L_dis(k) (0 for the longest length).
      objectives: [M] L_k + lambda L_dis(k).
      dominance: the step's ``DominanceInfo`` (weights, raw weights,
        anti-domination, cosines). For ``weighting='none'`` nothing is
        computed: weights and raw are ones, the rest False / 0.
    """

    losses: Array
    distill: Array
    objectives: Array
    dominance: weighting_lib.DominanceInfo

    @property
    def weights(self) -> Array:
        """[M] the weights used."""
        return self.dominance.weights


class NHLObjective(NamedTuple):
    """The NHL objective as a pair of pure functions.

    Attributes:
      init: ``init(key, *, num_train, num_classes) -> states``, a tuple of one
        base-loss state per length.
      apply: ``apply(states, h, labels, index, *, features=None) ->
        (total, (new_states, NHLMetrics))``, ready for
        ``jax.value_and_grad(..., has_aux=True)``. ``h`` is the [B, K_max]
        nested-layer output; ``features`` [B, D] (its input) is required by
        the dominance weighting.
    """

    init: Callable[..., tuple[Any, ...]]
    apply: Callable[..., tuple[Array, tuple[tuple[Any, ...], NHLMetrics]]]


def nhl_objective(
    loss: HashLoss,
    bits: Sequence[int],
    *,
    distill_weight: float = 0.1,
    weighting: str = 'none',
    topology: str = 'adjacent',
) -> NHLObjective:
    """Builds the multi-length NHL objective around one base loss.

    Args:
      loss: the base loss; each length gets its own state.
      bits: sorted code lengths b_1 < ... < b_M.
      distill_weight: lambda of the cascade distillation (0 turns it off).
      weighting: ``'none'``, ``'paper'`` or ``'released'``.
      topology: distillation teachers, see ``distill.cascade_distill``.

    Returns:
      An ``NHLObjective``.

    References:
      NHL, arXiv 2412.08922, total objective (papers.md 2.5).
    """
    bits = check_bits(bits)
    if weighting not in WEIGHTINGS:
        raise ValueError(
            f'Unknown weighting {weighting!r}; choose one of {list(WEIGHTINGS)}.'
        )
    if topology not in distill.TOPOLOGIES:
        raise ValueError(
            f'Unknown distillation topology {topology!r}; choose one of '
            f'{sorted(distill.TOPOLOGIES)}.'
        )
    m = len(bits)

    def init_fn(key, *, num_train, num_classes):
        keys = jax.random.split(key, m)
        return tuple(
            loss.init(k, num_train=num_train, num_classes=num_classes, bits=b)
            for k, b in zip(keys, bits)
        )

    def per_length(h, states, labels, index):
        codes = split_codes(h, bits)
        values, new_states = zip(
            *(loss.apply(s, c, labels, index) for s, c in zip(states, codes))
        )
        base = jnp.stack(values)  # [M]
        dis = jnp.concatenate(
            [distill.cascade_distill(codes, topology=topology), jnp.zeros(1)]
        )  # [M]
        return base + distill_weight * dis, (tuple(new_states), base, dis)

    def apply_fn(states, h, labels, index, *, features=None):
        if weighting == 'none':
            objs, (new_states, base, dis) = per_length(h, states, labels, index)
            info = _uniform_info(m)
        else:
            objs, info, (new_states, base, dis) = _weighted(
                per_length, h, states, labels, index, features
            )
        total = jnp.sum(info.weights * objs)
        metrics = NHLMetrics(*jax.lax.stop_gradient((base, dis, objs)), info)
        return total, (new_states, metrics)

    def _weighted(fn, h, states, labels, index, features):
        if features is None:
            raise ValueError(
                f'weighting={weighting!r} needs the hash-layer input: call '
                'apply(..., features=x) with x the [B, D] backbone features.'
            )
        objs, vjp_fn, aux = jax.vjp(
            lambda h_: fn(h_, states, labels, index), h, has_aux=True
        )
        (out_grads,) = jax.vmap(vjp_fn)(jnp.eye(m, dtype=objs.dtype))
        info = weighting_lib.analysis_from_outputs(
            jax.lax.stop_gradient(features),
            jax.lax.stop_gradient(out_grads),
            bits,
            rule=weighting,
        )
        return objs, info, aux

    return NHLObjective(init_fn, apply_fn)


def _uniform_info(m: int) -> weighting_lib.DominanceInfo:
    """The ``DominanceInfo`` of plain summation (nothing measured)."""
    return weighting_lib.DominanceInfo(
        weights=jnp.ones((m,)),
        raw=jnp.ones((m,)),
        anti_domination=jnp.zeros((m, m), bool),
        cosine=jnp.zeros((m, m)),
    )
