"""Every length in one vmap (``nhl_jax.nhl.stacked``) against the copies."""

import chex
import jax
import numpy as np
import pytest

from nhl_jax import losses
from nhl_jax.nhl import distill, stacked
from nhl_jax.nhl.objective import nhl_objective
from tests.support import objective_setup as toy
from tests.support.objective_setup import BITS, C, N

MASKED = sorted(n for n in losses.LOSSES if losses.get(n).masked is not None)


def test_the_losses_with_a_masked_form():
    # A new masked form must join the equality tests below by name.
    assert MASKED == ['csq', 'dpn']
    assert stacked.supports(losses.get('dpn'))
    assert not stacked.supports(losses.get('dsh'))  # its bank changes


def test_prefix_masks():
    expected = np.zeros((3, 16), np.float32)
    expected[0, :4] = expected[1, :8] = expected[2, :] = 1.0
    np.testing.assert_array_equal(stacked.prefix_masks(BITS), expected)


@pytest.mark.parametrize('topology', sorted(distill.TOPOLOGIES))
@pytest.mark.parametrize('m', [1, 2, 4])
def test_teacher_table_lists_each_lengths_teachers_as_a_mean(topology, m):
    index, weight = stacked.teacher_table(topology, m)
    for k in range(m):
        teachers = distill.TOPOLOGIES[topology](k, m) if k < m - 1 else ()
        listed = {int(t): float(w) for t, w in zip(index[k], weight[k])
                  if w != 0}
        assert listed == pytest.approx(
            {t: 1.0 / len(teachers) for t in teachers})
        # Padding points at the length itself, weighted 0.
        assert all(int(t) == k for t, w in zip(index[k], weight[k])
                   if w == 0)


@pytest.mark.parametrize('name', MASKED)
@pytest.mark.parametrize('centers', ['independent', 'nested'])
def test_masked_form_equals_apply_on_the_prefix(name, centers):
    loss = losses.get(name, centers=centers)
    _, x, labels, index = toy.setup(2)
    h = jax.random.normal(jax.random.key(3), (x.shape[0], BITS[-1]))
    states = nhl_objective(loss, BITS).init(
        jax.random.key(0), num_train=N, num_classes=C)
    masks = stacked.prefix_masks(BITS)

    @jax.jit  # one program: op by op, each length's shapes compile anew
    def both(states, h):
        padded = stacked.stack_states(states, BITS[-1])
        got = [loss.masked(jax.tree.map(lambda a, k=k: a[k], padded),
                           h * masks[k][None, :], masks[k], labels, index)
               for k in range(len(BITS))]
        want = [loss.apply(s, h[:, :b], labels, index)[0]
                for s, b in zip(states, BITS)]
        return jax.numpy.stack(got), jax.numpy.stack(want)

    got, want = both(states, h)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _apply(name, rule, topology, stack, centers='independent'):
    """value, metrics and gradients on (h, features) of one objective."""
    params, x, labels, index = toy.setup(1)
    loss = (toy.toy_loss() if name == 'toy'
            else losses.get(name, centers=centers))
    obj = nhl_objective(loss, BITS,
                        distill_weight=0.1, weighting=rule,
                        topology=topology, stack_lengths=stack)
    states = obj.init(jax.random.key(0), num_train=N, num_classes=C)
    features, h = toy.forward(params, x)

    def total(h, features):
        return obj.apply(states, h, labels, index, features=features)

    (value, (new_states, metrics)), grads = jax.jit(jax.value_and_grad(
        total, argnums=(0, 1), has_aux=True))(h, features)
    chex.assert_trees_all_equal(new_states, states)
    return value, metrics, grads


@pytest.mark.parametrize(('name', 'rule', 'topology', 'centers'), [
    # The toy loss's longer lengths anti-dominate the shortest: capped
    # weights (asserted below), so the products are compared too.
    ('toy', 'paper', 'adjacent', None),
    ('toy', 'released', 'all_longer', None),
    ('dpn', 'none', 'longest_only', 'independent'),
    ('csq', 'pcgrad', 'adjacent', 'nested'),
])
def test_stacked_path_equals_the_per_length_copies(name, rule, topology,
                                                   centers):
    value, metrics, grads = _apply(name, rule, topology, True, centers)
    ref_value, ref_metrics, ref_grads = _apply(name, rule, topology, False,
                                               centers)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for got, want in [(metrics.losses, ref_metrics.losses),
                      (metrics.distill, ref_metrics.distill),
                      (metrics.objectives, ref_metrics.objectives),
                      (metrics.weights, ref_metrics.weights)]:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert float(metrics.distill[-1]) == 0.0
    if name == 'toy':
        assert not np.allclose(metrics.weights, 1.0)
    assert float(np.abs(np.asarray(metrics.distill[:-1])).sum()) > 0
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-5, atol=1e-6)
    assert float(np.abs(np.asarray(grads[0])).sum()) > 0


def test_stacked_path_jit_equals_eager():
    params, x, labels, index = toy.setup(1)
    # 'none': op by op, the vjps of the product rules cost seconds.
    obj = nhl_objective(losses.get('dpn'), BITS, distill_weight=0.1,
                        weighting='none', stack_lengths=True)
    states = obj.init(jax.random.key(0), num_train=N, num_classes=C)
    features, h = toy.forward(params, x)
    eager = obj.apply(states, h, labels, index, features=features)
    jitted = jax.jit(obj.apply)(states, h, labels, index, features=features)
    chex.assert_trees_all_close(jitted, eager, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(('stack', 'calls'), [(True, 1), (False, 3)])
def test_the_loss_is_traced_once_for_every_length(stack, calls):
    traced = []
    loss = losses.get('dpn')
    counting = loss._replace(
        apply=lambda *a, **k: traced.append('apply') or loss.apply(*a, **k),
        masked=lambda *a: traced.append('masked') or loss.masked(*a))
    params, x, labels, index = toy.setup(1)
    obj = nhl_objective(counting, BITS, weighting='paper',
                        stack_lengths=stack)
    states = obj.init(jax.random.key(0), num_train=N, num_classes=C)
    features, h = toy.forward(params, x)
    jax.make_jaxpr(lambda h: obj.apply(states, h, labels, index,
                                       features=features)[0])(h)
    assert len(traced) == calls


def test_row_sum_distillation_of_a_split_batch_matches_under_the_vmap():
    # batch_shards > 1 picks the [K, K] row-sum form of the distillation
    # (no row gathered across devices); inside the vmap over lengths it
    # must give the Gram form's values and gradients.
    params, x, labels, index = toy.setup(1)
    loss = losses.get('dpn')
    states = nhl_objective(loss, BITS).init(
        jax.random.key(0), num_train=N, num_classes=C)
    _, h = toy.forward(params, x)
    got, want = (stacked.length_values(
        loss, h, states, labels, index, bits=BITS, topology='adjacent',
        distill_weight=0.1, batch_shards=shards, out_grads=True)
        for shards in (2, 1))
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
    assert float(want.distill[0]) > 0
