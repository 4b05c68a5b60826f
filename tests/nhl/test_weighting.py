"""Dominance-aware weighting: hand-made cases, references, optax transform."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.experimental import aggregating

from nhl_jax.nhl import weighting
from tests.support import references as ref

BITS = (2, 4, 8)


def _grads(seed, bits=BITS, d=5, nested=True):
    """[M, D, K_max] gradients; nested: zero beyond each length's columns."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((len(bits), d, bits[-1])).astype(np.float32)
    if nested:
        for i, b in enumerate(bits):
            g[i, :, b:] = 0.0
    return g


@pytest.mark.parametrize('rule', ['paper', 'released'])
def test_no_conflict_gives_all_ones(rule):
    g = np.abs(_grads(0))  # all entries >= 0: every inner product >= 0
    info = weighting.dominance_analysis(g, BITS, rule=rule)
    np.testing.assert_allclose(info.weights, 1.0)
    assert not info.anti_domination.any()


@pytest.mark.parametrize('rule', ['paper', 'released'])
def test_one_conflict_gives_the_cap(rule):
    g = np.zeros((2, 1, 2), np.float32)
    g[0, 0, 0] = 1.0  # ||g_1^1||^2 = 1
    g[1, 0, 0] = -4.0  # <g_2^1, g_1^1> = -4: cap 1 / ((2 - 1) * 4) = 0.25
    g[1, 0, 1] = 3.0
    info = weighting.dominance_analysis(g, (1, 2), rule=rule)
    np.testing.assert_allclose(info.raw, [1.0, 0.25])
    np.testing.assert_allclose(info.weights, [1.6, 0.4], rtol=1e-6)
    np.testing.assert_array_equal(info.anti_domination, [[0, 0], [1, 0]])
    np.testing.assert_allclose(info.cosine[1, 0], -1.0, rtol=1e-6)


def test_mild_conflict_is_not_capped():
    g = np.zeros((2, 1, 2), np.float32)
    g[0, 0, 0], g[1, 0, 0] = 1.0, -0.5  # cap 1 / 0.5 = 2 > 1
    info = weighting.dominance_analysis(g, (1, 2))
    np.testing.assert_allclose(info.weights, [1.0, 1.0])
    assert info.anti_domination[1, 0]


@pytest.mark.parametrize('seed', range(20))
def test_paper_rule_matches_reference_and_keeps_dominance(seed):
    bits = (2, 4, 8, 16)
    g = _grads(seed, bits)
    g[1:] -= 0.6 * np.abs(g[:1])  # push longer lengths against the shortest
    w = weighting.dominance_weights(g, bits, rule='paper')
    np.testing.assert_allclose(w, ref.dominance_weights_paper(g, bits),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.sum(w), len(bits), rtol=1e-6)
    guarantee = ref.dominance_guarantee(g, bits, np.asarray(w, np.float64))
    scale = np.sum(g.astype(np.float64) ** 2)
    assert np.all(guarantee >= -1e-5 * scale), guarantee


@pytest.mark.parametrize('nested', [True, False])
@pytest.mark.parametrize('seed', range(10))
def test_released_rule_matches_a_port_of_the_code(seed, nested):
    bits = (2, 4, 8, 16)
    g = _grads(seed, bits, nested=nested)
    g[1:] -= 0.6 * np.abs(g[:1])
    info = weighting.dominance_analysis(g, bits, rule='released')
    expected, anti = ref.dominance_weights_released(g, bits)
    np.testing.assert_allclose(info.weights, expected, rtol=1e-5, atol=1e-6)
    assert bool(info.raw[1] < 1) == anti


def test_released_rule_differs_from_paper_rule():
    differ = 0
    for seed in range(10):
        g = _grads(seed, (2, 4, 8, 16))
        g[1:] -= 0.6 * np.abs(g[:1])
        differ += not np.allclose(
            weighting.dominance_weights(g, (2, 4, 8, 16), rule='paper'),
            weighting.dominance_weights(g, (2, 4, 8, 16), rule='released'))
    assert differ > 0


@pytest.mark.parametrize('batch, width, shards',
                         [(6, 9, 1), (9, 4, 1), (6, 9, 2), (9, 4, 3)])
def test_products_from_outputs_equal_products_of_kernel_grads(batch, width,
                                                              shards):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((batch, width)).astype(np.float32)
    out = rng.standard_normal((3, batch, 8)).astype(np.float32)
    kernel = np.einsum('bd,mbk->mdk', feats, out)
    np.testing.assert_allclose(
        jax.jit(functools.partial(weighting.column_products_from_outputs,
                                  batch_shards=shards))(feats, out),
        weighting.column_products(kernel), rtol=1e-4, atol=1e-4)


def test_products_of_a_sharded_batch_skip_the_gram_matrix():
    # B <= D takes the [B, B] Gram path on one device only: it pairs rows
    # of every device, so a split batch would gather them (issue 32).
    feats, out = jnp.ones((4, 8)), jnp.ones((3, 4, 8))

    def shapes(shards):
        jaxpr = jax.make_jaxpr(functools.partial(
            weighting.column_products_from_outputs, batch_shards=shards))(
                feats, out)
        return {v.aval.shape for e in jaxpr.eqns for v in e.outvars}

    assert (4, 4) in shapes(1)
    assert (4, 4) not in shapes(2)
    with pytest.raises(ValueError, match='batch_shards must be an int >= 1'):
        weighting.column_products_from_outputs(feats, out, batch_shards=0)


def test_jit_and_bad_rule():
    g = _grads(1)
    fn = jax.jit(weighting.dominance_weights, static_argnames=('bits', 'rule'))
    np.testing.assert_allclose(fn(g, bits=BITS, rule='paper'),
                               weighting.dominance_weights(g, BITS), rtol=1e-6)
    with pytest.raises(ValueError, match=r"rule 'papers'.*'released'"):
        weighting.dominance_weights(g, BITS, rule='papers')
    with pytest.raises(AssertionError):
        weighting.dominance_weights(g[:2], BITS)


def _stacked(seed):
    """Per-length gradients of a {'body', 'head'} tree, stacked on [M]."""
    rng = np.random.default_rng(seed)
    head = _grads(seed)
    head[1:] -= 0.6 * np.abs(head[:1])
    body = rng.standard_normal((len(BITS), 3, 4)).astype(np.float32)
    return {'body': jnp.asarray(body), 'head': {'kernel': jnp.asarray(head)}}


def _params():
    return {'body': jnp.zeros((3, 4)), 'head': {'kernel': jnp.zeros((5, 8))}}


def test_transform_returns_weighted_sum_and_counts():
    tx = weighting.dominance_weighting(BITS, lambda g: g['head']['kernel'])
    state = tx.init(_params())
    grads = _stacked(3)
    updates, state = jax.jit(tx.update)(grads, state)
    w = weighting.dominance_weights(grads['head']['kernel'], BITS)
    chex.assert_trees_all_close(
        updates, jax.tree.map(lambda g: jnp.tensordot(w, g, axes=1), grads),
        rtol=1e-5)
    info = weighting.dominance_analysis(grads['head']['kernel'], BITS)
    assert int(state.count) == 1
    np.testing.assert_array_equal(state.anti_domination,
                                  np.any(info.anti_domination, axis=0))
    np.testing.assert_allclose(state.weights, w)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, tx.init(_params()))


@pytest.mark.parametrize('combine', ['chain', 'process'])
def test_chains_with_adam(combine):
    dom = weighting.dominance_weighting(BITS, lambda g: g['head']['kernel'])
    if combine == 'chain':
        tx = optax.chain(dom, optax.adam(1e-2))
    else:
        tx = aggregating.process(optax.identity(), dom, optax.adam(1e-2))
    plain = optax.adam(1e-2)
    params = _params()
    state, plain_state = tx.init(params), plain.init(params)
    for step in range(3):
        grads = _stacked(step)
        updates, state = jax.jit(tx.update)(grads, state, params)
        w = weighting.dominance_weights(grads['head']['kernel'], BITS)
        summed = jax.tree.map(functools.partial(jnp.tensordot, w, axes=1),
                              grads)
        expected, plain_state = plain.update(summed, plain_state, params)
        chex.assert_trees_all_close(updates, expected, rtol=1e-5, atol=1e-7)
        params = optax.apply_updates(params, updates)
