"""Weighting baselines: paper formulas in NumPy, transforms, the fast path."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax import cli, data, train
from nhl_jax.cli.configs import default
from nhl_jax.nhl import baselines
from nhl_jax.nhl.objective import (
    WEIGHTINGS,
    get_weighting,
    nhl_objective,
)
from tests.support import objective_setup as toy
from tests.support.objective_setup import (
    BITS,
    C,
    N,
)

M = 3


def _stacked(seed, d=4, k=6):
    """[M]-stacked gradients of a {'body', 'head'} tree, some conflicting."""
    rng = np.random.default_rng(seed)
    head = rng.standard_normal((M, d, k)).astype(np.float32)
    head[1:] -= 0.8 * head[:1]  # longer lengths pull against the shortest
    body = rng.standard_normal((M, 5)).astype(np.float32)
    return {'body': jnp.asarray(body), 'head': {'kernel': jnp.asarray(head)}}


def _flat(tree):
    """[M, P] numpy rows, one flattened gradient per length."""
    return np.concatenate([np.asarray(x, np.float64).reshape(M, -1)
                           for x in jax.tree.leaves(tree)], axis=1)


def _combined(tree, coeffs):
    return jax.tree.map(
        lambda g: np.tensordot(np.asarray(coeffs, np.float32), g, axes=1),
        tree)


# ------------------------------------------------ NumPy references ------


def _ref_uncertainty(s, loss, lr):
    """Kendall et al.: d/ds [exp(-s) L + s] = 1 - exp(-s) L."""
    return s - lr * (1.0 - np.exp(-s) * loss)


def _ref_gradnorm(w, kernels, loss, loss0, alpha, lr):
    """Chen et al. Algorithm 1, dL_grad/dw by central differences."""
    norms = np.sqrt(np.sum(kernels.reshape(len(w), -1) ** 2, axis=1))
    ratio = (loss / loss0) / np.mean(loss / loss0)
    target = np.mean(w * norms) * ratio ** alpha  # held constant

    def l_grad(v):
        return np.sum(np.abs(v * norms - target))

    eps = 1e-6
    grad = np.array([(l_grad(w + eps * e) - l_grad(w - eps * e)) / (2 * eps)
                     for e in np.eye(len(w))])
    new = w - lr * grad
    return len(w) * new / new.sum()


def _ref_pcgrad(g, orders):
    """Yu et al. Algorithm 1 on explicit vectors g [M, P]."""
    out = []
    for i in range(len(g)):
        gi = g[i].copy()
        for j in orders[i]:
            if j != i and gi @ g[j] < 0:
                gi = gi - (gi @ g[j]) / (g[j] @ g[j]) * g[j]
        out.append(gi)
    return np.stack(out)


# ------------------------------------------------------------ rules -----


def test_static_weights_are_normalised_and_default_halves():
    np.testing.assert_allclose(baselines.static_weights(3),
                               3 * np.array([4, 2, 1]) / 7, rtol=1e-6)
    np.testing.assert_allclose(baselines.static_weights(3, (2.0, 1.5, 1.0)),
                               3 * np.array([2, 1.5, 1]) / 4.5, rtol=1e-6)
    for bad in [(1.0, 2.0), (1.0, 0.0, 2.0), (1.0, float('nan'), 1.0)]:
        with pytest.raises(ValueError, match='3 positive numbers'):
            baselines.static_weights(3, bad)


def test_static_transform_is_the_weighted_sum():
    tx = baselines.static_weighting((4, 8, 16), weights=(4, 2, 1))
    grads = _stacked(0)
    updates, state = jax.jit(tx.update)(grads, tx.init(None))
    w = 3 * np.array([4, 2, 1]) / 7
    chex.assert_trees_all_close(updates, _combined(grads, w), rtol=1e-5)
    assert int(state.count) == 1


def test_uncertainty_update_follows_the_log_variance_gradient():
    tx = baselines.uncertainty_weighting((4, 8, 16), learning_rate=0.1)
    state = tx.init(None)
    s = np.zeros(M)
    for step, loss in enumerate([[2.0, 0.5, 1.0], [1.5, 0.2, 3.0]]):
        grads = _stacked(step)
        updates, state = jax.jit(tx.update)(grads, state,
                                            losses=jnp.asarray(loss))
        chex.assert_trees_all_close(updates, _combined(grads, np.exp(-s)),
                                    rtol=1e-5, atol=1e-6)
        s = _ref_uncertainty(s, np.asarray(loss), 0.1)
        np.testing.assert_allclose(state.log_vars, s, rtol=1e-5)
    # s_k -> log L_k: a constant loss is a fixed point.
    fixed = baselines.uncertainty_step(jnp.log(jnp.asarray([2.0, 0.5])),
                                       jnp.asarray([2.0, 0.5]),
                                       learning_rate=1.0)
    np.testing.assert_allclose(fixed, np.log([2.0, 0.5]), atol=1e-6)


def test_gradnorm_weight_update_matches_the_paper():
    tx = baselines.gradnorm((4, 8, 16), lambda g: g['head']['kernel'],
                            alpha=1.5, learning_rate=0.05)
    state = tx.init(None)
    w, loss0 = np.ones(M), None
    for step, loss in enumerate([[2.0, 1.0, 3.0], [1.0, 0.9, 1.2],
                                 [0.5, 0.8, 1.0]]):
        grads = _stacked(step)
        updates, state = jax.jit(tx.update)(grads, state,
                                            losses=jnp.asarray(loss))
        chex.assert_trees_all_close(updates, _combined(grads, w), rtol=1e-5,
                                    atol=1e-6)
        loss0 = np.asarray(loss) if loss0 is None else loss0
        kernels = np.asarray(grads['head']['kernel'], np.float64)
        w = _ref_gradnorm(w, kernels, np.asarray(loss), loss0, 1.5, 0.05)
        np.testing.assert_allclose(state.weights, w, rtol=1e-5)
        np.testing.assert_allclose(state.initial_losses, loss0)
    assert not np.allclose(w, 1.0)  # the test really moved the weights


def test_pcgrad_hand_made_conflict():
    g = {'w': jnp.asarray([[1.0, 0.0], [-1.0, 1.0]])}
    tx = baselines.pcgrad((4, 8), jax.random.key(0))
    updates, state = jax.jit(tx.update)(g, tx.init(None))
    # g1 - (-1/2) g2 = [0.5, 0.5]; g2 - (-1/1) g1 = [0, 1].
    np.testing.assert_allclose(updates['w'], [0.5, 1.5], rtol=1e-6)
    np.testing.assert_array_equal(state.projected, [1, 1])


@pytest.mark.parametrize('seed', range(5))
def test_pcgrad_projected_vectors_match_algorithm_1(seed):
    m = 4
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((m, 7))
    g[1:] -= 0.7 * g[:1]
    orders = baselines.pcgrad_orders(jax.random.key(seed), m)
    coeffs, projected = jax.jit(baselines.pcgrad_coefficients)(
        jnp.asarray(g @ g.T, jnp.float32), orders)
    expected = _ref_pcgrad(g, np.asarray(orders))
    np.testing.assert_allclose(np.asarray(coeffs) @ g, expected, rtol=1e-4,
                               atol=1e-5)
    changed = ~np.all(np.isclose(expected, g), axis=1)
    np.testing.assert_array_equal(projected, changed)
    assert changed.any()  # the case really has conflicts


def test_pcgrad_transform_sums_the_projected_gradients():
    grads = _stacked(3)
    key = jax.random.key(7)
    tx = baselines.pcgrad(BITS, key)
    updates, state = jax.jit(tx.update)(grads, tx.init(None))
    order_key = jax.random.fold_in(key, 0)
    expected = _ref_pcgrad(_flat(grads), np.asarray(
        baselines.pcgrad_orders(order_key, M))).sum(0)
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(updates)])
    np.testing.assert_allclose(flat, expected, rtol=1e-4, atol=1e-5)
    assert int(state.count) == 1 and state.projected.any()


class JitTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_equals_eager(self):
        txs = [baselines.static_weighting(BITS),
               baselines.uncertainty_weighting(BITS),
               baselines.gradnorm(BITS, lambda g: g['head']['kernel']),
               baselines.pcgrad(BITS, jax.random.key(1))]
        grads, loss = _stacked(4), jnp.asarray([1.0, 2.0, 0.5])
        for tx in txs:
            update = self.variant(tx.update)
            state = tx.init(None)
            for _ in range(2):
                out, state = update(grads, state, losses=loss)
            ref, ref_state = tx.update(grads, tx.update(
                grads, tx.init(None), losses=loss)[1], losses=loss)
            chex.assert_trees_all_close(out, ref, rtol=1e-5, atol=1e-6)
            chex.assert_trees_all_close(state, ref_state, rtol=1e-5,
                                        atol=1e-6)


# ------------------------------------------------------- fast path ------


RULES = {  # name: (hyperparameters, transform on explicit gradients)
    'static': ({'weights': (3.0, 2.0, 1.0)},
               lambda key: baselines.static_weighting(BITS,
                                                      weights=(3, 2, 1))),
    'uncertainty': ({'learning_rate': 0.5},
                    lambda key: baselines.uncertainty_weighting(
                        BITS, learning_rate=0.5)),
    'gradnorm': ({'learning_rate': 0.5},
                 lambda key: baselines.gradnorm(
                     BITS, lambda g: g['head']['kernel'], learning_rate=0.5)),
    'pcgrad': ({}, lambda key: baselines.pcgrad(
        BITS, key, lambda g: g['head']['kernel'])),
}


@pytest.mark.parametrize('name', sorted(RULES))
def test_fast_path_equals_transform_on_kernel_gradients(name):
    kwargs, make_tx = RULES[name]
    params, x, labels, index = toy.setup(1)
    loss = toy.toy_loss()  # its lengths conflict, so PCGrad projects
    obj = nhl_objective(loss, BITS, distill_weight=0.1, weighting=name,
                        weighting_kwargs=kwargs)
    states = obj.init(jax.random.key(0), num_train=N, num_classes=C)
    key = jax.random.key(3)
    tx = make_tx(key)
    w_state, tx_state = obj.init_weighting(key), tx.init(params)

    def fast(p, w_state):
        features, h = toy.forward(p, x)
        return obj.apply(states, h, labels, index, features=features,
                         weighting_state=w_state)

    fast_grad = jax.jit(jax.value_and_grad(fast, has_aux=True))
    objectives = jax.jit(
        lambda p: toy.per_length(loss, states, p, x, labels, index, 0.1))
    jacobian = jax.jit(jax.jacrev(objectives))
    tx_update, update_weighting = jax.jit(tx.update), jax.jit(
        obj.update_weighting)
    weights = []
    for _ in range(2):  # the second step uses the updated state
        (_, (_, metrics)), grads = fast_grad(params, w_state)
        updates, tx_state = tx_update(jacobian(params), tx_state,
                                      losses=objectives(params))
        chex.assert_trees_all_close(grads, updates, rtol=1e-4, atol=1e-5)
        w_state = update_weighting(w_state, metrics)
        chex.assert_trees_all_close(w_state, tx_state, rtol=1e-4, atol=1e-6)
        weights.append(np.asarray(metrics.weights))
    assert not np.allclose(weights[-1], 1.0)  # the rule really weighted


def test_registry_errors_name_the_choices():
    with pytest.raises(ValueError, match=r"weighting 'gradnom'.*'pcgrad'"):
        get_weighting('gradnom', BITS)
    with pytest.raises(ValueError, match=r"no hyperparameter.*\['alpha'"):
        get_weighting('gradnorm', BITS, beta=1.0)
    with pytest.raises(ValueError, match='3 positive numbers'):
        get_weighting('static', BITS, weights=(1.0, 2.0))
    assert {'none', 'paper', 'released', 'static', 'uncertainty', 'gradnorm',
            'pcgrad'} <= set(WEIGHTINGS)


@pytest.mark.parametrize('name', ['static', 'uncertainty', 'gradnorm',
                                  'pcgrad'])
def test_train_step_with_each_rule_is_finite(name):
    config = default.get_config()
    config.update({'dataset': 'digits', 'bits': (8, 16), 'batch_size': 32,
                   'weighting': name})
    splits = data.load_splits('digits', seed=0)
    setup, state = cli.create_train_state(cli.resolve(config),
                                          train.DataInfo.of(splits))
    compiled = train.compile_step(setup.steps['train'])

    def step(state, batch):
        return compiled(state, batch, None)

    first = jax.tree.map(np.asarray, state.extra.weighting)
    batches = data.train_batches(splits.train, 32, seed=0, epoch=1)
    for _, batch in zip(range(2), batches):
        state, metrics = step(state, batch)
    assert np.isfinite(metrics['loss']) and np.all(
        np.isfinite(metrics['weights']))
    assert int(state.extra.weighting.count) == 2
    chex.assert_trees_all_equal_shapes_and_dtypes(first,
                                                  state.extra.weighting)
