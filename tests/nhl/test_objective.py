"""The NHL objective: per-length losses, distillation, weighting fast path."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nhl_jax import losses
from nhl_jax.errors import UsageError
from nhl_jax.nhl import distill, label_bank, weighting
from nhl_jax.nhl.objective import nhl_objective
from tests.support import objective_setup as toy
from tests.support.objective_setup import BITS, C, N


def _loss(name):
    return toy.toy_loss() if name == 'toy' else losses.get(name)


@pytest.mark.parametrize('name', ['dsh', 'csq', 'dtsh'])
def test_unweighted_objective_is_the_sum_of_per_length_objectives(name):
    params, x, labels, index = toy.setup()
    loss = losses.get(name)
    obj = nhl_objective(loss, BITS, distill_weight=0.1)
    states = obj.init(jax.random.key(0), num_train=N, num_classes=C)
    _, h = toy.forward(params, x)
    total, (new_states, metrics) = jax.jit(obj.apply)(states, h, labels, index)
    # Each length's own full state, its label bank included.
    full = label_bank.attach(states)
    expected = toy.per_length(loss, full, params, x, labels, index, 0.1)
    np.testing.assert_allclose(metrics.objectives, expected, rtol=1e-5)
    np.testing.assert_allclose(total, expected.sum(), rtol=1e-5)
    np.testing.assert_allclose(metrics.weights, 1.0)
    for k, b in enumerate(BITS):
        _, ref_state = loss.apply(full[k], h[:, :b], labels, index)
        chex.assert_trees_all_close(label_bank.attach(new_states)[k],
                                    ref_state)
    chex.assert_trees_all_equal_shapes_and_dtypes(states, new_states)


def test_each_length_has_its_own_state_and_centres():
    obj = nhl_objective(losses.get('csq'), BITS)
    states = obj.init(jax.random.key(0), num_train=N, num_classes=C)
    assert [s.centers.shape for s in states] == [(C, b) for b in BITS]
    obj = nhl_objective(losses.get('dsh'), BITS)
    states = obj.init(jax.random.key(0), num_train=N, num_classes=C)
    assert [s.codes.shape for s in states] == [(N, b) for b in BITS]


@pytest.mark.parametrize('rule', ['paper', 'released'])
@pytest.mark.parametrize('name', ['toy', 'dsh', 'csq', 'dtsh'])
def test_fast_path_equals_optax_transform(name, rule):
    params, x, labels, index = toy.setup(1)
    loss = _loss(name)
    obj = nhl_objective(loss, BITS, distill_weight=0.1, weighting=rule)
    states = obj.init(jax.random.key(0), num_train=N, num_classes=C)

    def fast(p):
        features, h = toy.forward(p, x)
        return obj.apply(states, h, labels, index, features=features)

    (_, (_, metrics)), fast_grads = jax.jit(
        jax.value_and_grad(fast, has_aux=True))(params)
    per_length = jax.jit(jax.jacrev(lambda p: toy.per_length(
        loss, states, p, x, labels, index, 0.1)))(params)
    tx = weighting.dominance_weighting(BITS, lambda g: g['head']['kernel'],
                                       rule=rule)
    updates, tx_state = tx.update(per_length, tx.init(params))
    np.testing.assert_allclose(metrics.weights, tx_state.weights, rtol=1e-4)
    chex.assert_trees_all_close(fast_grads, updates, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('rule', ['paper', 'released'])
def test_weighting_is_active_in_the_fast_path_test_setup(rule):
    """Guards the test above: its toy setup really produces capped weights."""
    params, x, labels, index = toy.setup(1)
    obj = nhl_objective(toy.toy_loss(), BITS, weighting=rule)
    states = obj.init(jax.random.key(0), num_train=N, num_classes=C)
    features, h = toy.forward(params, x)
    _, (_, metrics) = obj.apply(states, h, labels, index, features=features)
    assert not np.allclose(metrics.weights, 1.0)
    assert metrics.info.anti_domination.any()


def test_weights_carry_no_gradient():
    params, x, labels, index = toy.setup(1)
    loss = toy.toy_loss()
    obj = nhl_objective(loss, BITS, weighting='paper')
    states = obj.init(jax.random.key(0), num_train=N, num_classes=C)
    features, h = toy.forward(params, x)
    _, (_, metrics) = obj.apply(states, h, labels, index, features=features)

    def frozen(h_):  # the same weights as constants
        codes = [h_[:, :b] for b in BITS]
        base = jnp.stack([loss.apply(s, c, labels, index)[0]
                          for s, c in zip(states, codes)])
        dis = jnp.concatenate([distill.cascade_distill(codes), jnp.zeros(1)])
        return jnp.sum(metrics.weights * (base + 0.1 * dis))

    grad = jax.grad(lambda h_: obj.apply(states, h_, labels, index,
                                         features=features)[0])(h)
    np.testing.assert_allclose(grad, jax.grad(frozen)(h), rtol=1e-5,
                               atol=1e-7)


@pytest.mark.parametrize(('name', 'rule'), [('pcdh', 'paper'),
                                            ('dpn', 'pcgrad')])
def test_gradient_rules_give_the_gradient_of_the_weighted_sum(name, rule):
    # The product rules take the total's gradient from each length's own
    # vjp; it must equal autodiff of sum_k w_k obj_k with w held fixed, on
    # the codes, the features (PCDH reads them) and the loss parameters.
    params, x, labels, index = toy.setup(1)
    loss = losses.get(name)
    obj = nhl_objective(loss, BITS, distill_weight=0.1, weighting=rule)
    states = obj.init(jax.random.key(0), num_train=N, num_classes=C)
    loss_params = (obj.init_params(jax.random.key(1), num_classes=C)
                   if obj.init_params is not None else None)
    features, h = toy.forward(params, x)

    def total(obj, h, f, p):
        return obj.apply(states, h, labels, index, features=f,
                         loss_params=p)

    value, (_, metrics) = total(obj, h, features, loss_params)
    fixed = nhl_objective(loss, BITS, distill_weight=0.1, weighting='static',
                          weighting_kwargs={'weights': metrics.weights})
    grads = jax.jit(jax.grad(lambda *a: total(obj, *a)[0],
                             argnums=(0, 1, 2)))(h, features, loss_params)
    expected = jax.jit(jax.grad(lambda *a: total(fixed, *a)[0],
                                argnums=(0, 1, 2)))(h, features, loss_params)
    np.testing.assert_allclose(value, total(fixed, h, features,
                                            loss_params)[0], rtol=1e-6)
    chex.assert_trees_all_close(grads, expected, rtol=1e-5, atol=1e-6)
    if name == 'pcdh':  # the features' and parameters' gradients are there
        assert float(jnp.abs(grads[1]).sum()) > 0
        assert all(float(jnp.abs(g).sum()) > 0
                   for g in jax.tree.leaves(grads[2]))


def test_distill_weight_zero_leaves_base_losses():
    params, x, labels, index = toy.setup()
    obj = nhl_objective(losses.get('dpn'), BITS, distill_weight=0.0)
    states = obj.init(jax.random.key(0), num_train=N, num_classes=C)
    _, h = toy.forward(params, x)
    _, (_, metrics) = obj.apply(states, h, labels, index)
    np.testing.assert_allclose(metrics.objectives, metrics.losses)
    assert metrics.distill[-1] == 0 and np.all(metrics.distill[:-1] > 0)


@pytest.mark.parametrize('weight,problem', [
    (-1.0, r'lie in \[0, 1000\], got -1.0'),
    (float('nan'), 'be finite, got nan'),
    (1e30, r'lie in \[0, 1000\], got 1e\+30'),
    ('0.1', "be a number, got '0.1'"),
])
def test_distill_weight_is_a_finite_weight_in_range(weight, problem):
    with pytest.raises(UsageError, match=(
            f'nhl_objective hyperparameter distill_weight must {problem}; '
            'pass e.g. distill_weight=0.1.')):
        nhl_objective(losses.get('dpn'), BITS, distill_weight=weight)


def test_weighting_hyperparameters_are_finite_and_in_range():
    with pytest.raises(UsageError, match='learning_rate must be finite'):
        nhl_objective(losses.get('dpn'), BITS, weighting='gradnorm',
                      weighting_kwargs={'learning_rate': float('inf')})
    with pytest.raises(UsageError, match=r'min_weight must lie in \[0, 1\]'):
        nhl_objective(losses.get('dpn'), BITS, weighting='gradnorm',
                      weighting_kwargs={'min_weight': 2.0})


def test_errors():
    with pytest.raises(ValueError, match=r"weighting 'dominance'.*'paper'"):
        nhl_objective(losses.get('dpn'), BITS, weighting='dominance')
    with pytest.raises(ValueError, match='topology'):
        nhl_objective(losses.get('dpn'), BITS, topology='ring')
    with pytest.raises(ValueError, match='strictly increasing'):
        nhl_objective(losses.get('dpn'), (16, 8))
    obj = nhl_objective(losses.get('dpn'), BITS, weighting='paper')
    states = obj.init(jax.random.key(0), num_train=N, num_classes=C)
    params, x, labels, index = toy.setup()
    with pytest.raises(ValueError, match='features=x'):
        obj.apply(states, toy.forward(params, x)[1], labels, index)


def test_train_step_with_adam_reduces_every_length():
    params, x, labels, index = toy.setup(2)
    obj = nhl_objective(losses.get('dpn'), BITS, weighting='paper')
    states = obj.init(jax.random.key(0), num_train=N, num_classes=C)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, states):
        def fn(p):
            features, h = toy.forward(p, x)
            return obj.apply(states, h, labels, index, features=features)

        (_, (states, metrics)), grads = jax.value_and_grad(fn, has_aux=True)(
            params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, states, metrics

    first = None
    for _ in range(60):
        params, opt_state, states, metrics = step(params, opt_state, states)
        first = metrics.losses if first is None else first
    assert np.all(np.asarray(metrics.losses) < 0.8 * np.asarray(first))
