"""Hash centres and targets of the centre-based losses (CSQ, DPN, MDSH)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from nhl_jax import losses
from nhl_jax.errors import UsageError
from nhl_jax.losses import _common
from tests.support import references as ref


@pytest.mark.parametrize('k', [1, 2, 8, 64, 128])
def test_hadamard_is_sylvester_like_scipy(k):
    h = _common.hadamard(k)
    np.testing.assert_array_equal(h, scipy.linalg.hadamard(k))
    np.testing.assert_array_equal(h, ref.sylvester_hadamard(k))


def test_hadamard_rejects_non_power_of_two():
    with pytest.raises(ValueError, match='power of 2'):
        _common.hadamard(12)


def _hamming(centers):
    c = np.asarray(centers)
    return 0.5 * (c.shape[1] - c @ c.T)


def test_csq_centers_are_hadamard_rows_when_enough():
    state = losses.csq().init(jax.random.key(0), num_train=1, num_classes=10,
                              bits=8)
    h = scipy.linalg.hadamard(8)
    np.testing.assert_array_equal(state.centers, np.concatenate([h, -h])[:10])


def test_csq_fills_extra_classes_with_balanced_rows():
    c, k = 100, 16  # ImageNet100 at 16 bits: 68 random rows beyond 2K
    centers = np.asarray(
        losses.csq().init(jax.random.key(1), num_train=1, num_classes=c,
                          bits=k).centers
    )
    assert set(np.unique(centers)) == {-1.0, 1.0}
    np.testing.assert_array_equal((centers[2 * k:] < 0).sum(1), k // 2)
    np.testing.assert_array_equal(centers[:k], scipy.linalg.hadamard(k))


def test_csq_fill_keeps_first_draw_that_meets_the_distance_rule():
    key = jax.random.key(2)
    c, k = 20, 8
    got = np.asarray(_common.hadamard_centers(key, c, k, retries=20))
    keys = jax.random.split(key, 20)
    h = scipy.linalg.hadamard(k)
    for i, sub in enumerate(keys):
        fill = np.asarray(_common.balanced_signs(sub, c - 2 * k, k, k // 2))
        cand = np.concatenate([h, -h, fill])
        d = _hamming(cand)[~np.eye(c, dtype=bool)]
        if (d.min() > k / 4 and d.mean() >= k / 2) or i == 19:
            np.testing.assert_array_equal(got, cand)
            return


@pytest.mark.parametrize('rows,bits,num_neg', [(10, 8, 4), (3, 128, 64),
                                                (7, 24, 6), (1, 1, 0)])
def test_balanced_signs_are_the_ranks_of_the_uniforms(rows, bits, num_neg):
    key = jax.random.key(rows * bits)
    u = np.asarray(jax.random.uniform(key, (rows, bits)))
    ranks = np.argsort(np.argsort(u, kind='stable'), kind='stable')
    want = np.where(ranks < num_neg, -1.0, 1.0)
    got = _common.balanced_signs(key, rows, bits, num_neg)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, want)
    keys = jax.random.split(key, 4)  # as the centres draw them: vmapped
    np.testing.assert_array_equal(
        jax.jit(jax.vmap(lambda k: _common.balanced_signs(
            k, rows, bits, num_neg)))(keys)[2],
        _common.balanced_signs(keys[2], rows, bits, num_neg))


def test_balanced_signs_break_ties_as_a_stable_sort(monkeypatch):
    # Equal uniforms (rare in float32): the earlier column ranks first.
    monkeypatch.setattr(jax.random, 'uniform',
                        lambda key, shape: jnp.full(shape, 0.5))
    got = _common.balanced_signs(jax.random.key(0), 2, 6, 2)
    np.testing.assert_array_equal(got, [[-1, -1, 1, 1, 1, 1]] * 2)


def test_non_power_of_two_bits_get_random_signs():
    centers = _common.hadamard_centers(jax.random.key(0), 10, 12)
    assert centers.shape == (10, 12)
    assert set(np.unique(centers)) == {-1.0, 1.0}


@pytest.mark.parametrize('p', [0.5, 0.25])
def test_dpn_targets_have_exactly_floor_pk_negatives(p):
    state = losses.dpn(p=p).init(jax.random.key(3), num_train=1,
                                 num_classes=10, bits=24)
    np.testing.assert_array_equal((np.asarray(state.centers) < 0).sum(1),
                                  int(24 * p))
    assert len({tuple(r) for r in np.asarray(state.centers)}) == 10


def test_mdsh_centers_follow_the_reference_start():
    short = losses.mdsh().init(jax.random.key(0), num_train=1, num_classes=10,
                               bits=16).centers
    h = scipy.linalg.hadamard(16)
    np.testing.assert_array_equal(short, np.concatenate([h, -h])[:10])
    long = losses.mdsh().init(jax.random.key(0), num_train=1, num_classes=10,
                              bits=128).centers
    assert set(np.unique(long)) == {-1.0, 1.0}
    assert not np.array_equal(long, scipy.linalg.hadamard(128)[:10])


def test_init_is_seeded():
    a = losses.dpn().init(jax.random.key(5), num_train=1, num_classes=4, bits=8)
    b = losses.dpn().init(jax.random.key(5), num_train=1, num_classes=4, bits=8)
    c = losses.dpn().init(jax.random.key(6), num_train=1, num_classes=4, bits=8)
    np.testing.assert_array_equal(a.centers, b.centers)
    assert not np.array_equal(a.centers, c.centers)


@pytest.mark.parametrize('name', ['csq', 'dpn', 'mdsh'])
def test_precomputed_centers_are_used(name):
    table = np.where(np.random.default_rng(0).random((5, 8)) < 0.5, -1, 1)
    state = losses.get(name, centers=table).init(
        jax.random.key(0), num_train=1, num_classes=5, bits=8)
    np.testing.assert_array_equal(state.centers, table)
    assert state.centers.dtype == jnp.float32


def test_precomputed_centers_per_length():
    rng = np.random.default_rng(1)
    tables = {k: np.where(rng.random((5, k)) < 0.5, -1.0, 1.0) for k in (8, 16)}
    loss = losses.dpn(centers=tables)
    for k in (8, 16):
        state = loss.init(jax.random.key(0), num_train=1, num_classes=5, bits=k)
        np.testing.assert_array_equal(state.centers, tables[k])
    with pytest.raises(ValueError, match=r'no centres given for 32 bits'):
        loss.init(jax.random.key(0), num_train=1, num_classes=5, bits=32)


@pytest.mark.parametrize('table, match', [
    (np.ones((5, 16)), r'shape \(5, 16\), expected .* \(5, 8\)'),
    (np.zeros((5, 8)), 'only -1 and \\+1'),
])
def test_bad_precomputed_centers_are_rejected(table, match):
    with pytest.raises(ValueError, match=match):
        losses.csq(centers=table).init(jax.random.key(0), num_train=1,
                                       num_classes=5, bits=8)


def test_targets_match_the_reference_rule():
    rng = np.random.default_rng(0)
    state = losses.csq().init(jax.random.key(0), num_train=1, num_classes=6,
                              bits=8)
    onehot = np.eye(6, dtype=np.float32)[rng.integers(0, 6, 10)]
    multi = (rng.random((10, 6)) < 0.5).astype(np.float32)
    multi[:, 0] = 1.0
    multi[0] = [1, 1, 0, 0, 0, 0]  # c0 + c1 has zero entries: the fill applies
    for y in (onehot, multi):
        np.testing.assert_array_equal(
            losses.label_targets(state, jnp.asarray(y)),
            ref.center_targets(y, state.centers, state.fill),
        )
    np.testing.assert_array_equal(  # one-hot: exactly the class centre
        losses.label_targets(state, jnp.asarray(onehot)),
        np.asarray(state.centers)[onehot.argmax(1)],
    )


@pytest.mark.parametrize('name,kw,match', [
    ('dpn', {'margin': 'x'}, "margin must be a number, got 'x'"),
    ('dsh', {'pairs': 3}, r"pairs must be one of \['bank', 'batch'\], got 3"),
    ('csq', {'lam': True}, 'lam must be a number'),
    ('dtsh', {'margin': 1.0}, r"has no hyperparameter\(s\) \['margin'\]"),
    # Values: finite, and in the range the annotation declares.
    ('dpn', {'margin': float('nan')}, 'margin must be finite, got nan'),
    ('dsh', {'margin': float('inf')}, 'margin must be finite, got inf'),
    ('dpn', {'margin': -5}, 'margin must be >= 0, got -5;'),
    ('dpn', {'p': 1.5}, r'p must lie in \[0, 1\], got 1.5'),
    ('csq', {'lam': 1e30}, r'lam must lie in \[0, 1000\], got 1e\+30'),
    ('dch', {'gamma': 0.0}, 'gamma must be > 0, got 0.0'),
    ('hashnet', {'step_continuation': 0}, 'must be >= 1, got 0'),
])
def test_get_checks_hyperparameter_names_and_types(name, kw, match):
    with pytest.raises(ValueError, match=match):
        losses.get(name, **kw)


def _eager_inputs(labels, index, classes=3):
    loss = losses.get('dsh')
    state = loss.init(jax.random.key(0), num_train=10, num_classes=classes,
                      bits=8)
    codes = jnp.ones((len(index), 8), jnp.float32)
    return loss, state, codes, jnp.asarray(labels, jnp.float32), jnp.asarray(
        index, jnp.int32)


@pytest.mark.parametrize('labels,index,match', [
    (2 * np.eye(3)[[0, 1]], [0, 1], r'labels must be multi-hot 0/1'),
    (np.eye(4)[[0, 1]], [0, 1], 'labels have 4 classes, the state was'),
    (np.eye(3)[[0, 1]], [0, 10], r'index must lie in \[0, 10\), got 0..10'),
    (np.eye(3)[[0, 1]], [-1, 2], r'index must lie in \[0, 10\)'),
    (np.eye(3)[[0, 1, 2]], [0, 1], 'disagree on the batch size'),
])
def test_apply_refuses_bad_batches_eagerly(labels, index, match):
    loss, state, codes, y, i = _eager_inputs(labels, index)
    codes = jnp.ones((2, 8), jnp.float32)
    with pytest.raises(ValueError, match=match):
        loss.apply(state, codes, y, i)


def test_shape_checks_hold_under_jit_and_values_are_free():
    loss, state, codes, y, i = _eager_inputs(np.eye(4)[[0, 1]], [0, 1])
    with pytest.raises(ValueError, match='labels have 4 classes'):
        jax.jit(loss.apply)(state, codes, y, i)
    # Under jit the values are not checked (the trainer checks its data).
    loss, state, codes, y, i = _eager_inputs(np.eye(3)[[0, 1]], [0, 10])
    value, _ = jax.jit(loss.apply)(state, codes, y, i)
    assert np.isfinite(value)


@pytest.mark.parametrize('name', ['dpn', 'dsh', 'orthohash'])
def test_codes_of_another_width_than_the_state_name_both(name):
    """Centres, a bank, a codebook: a JAX broadcasting TypeError before."""
    loss = losses.get(name)
    state = loss.init(jax.random.key(0), num_train=10, num_classes=3, bits=8)
    codes, labels = jnp.ones((2, 16)), jnp.eye(3)[:2]
    with pytest.raises(UsageError, match=(
            f'{name}: codes have 16 bits, the state was built for 8;')):
        jax.jit(loss.apply)(state, codes, labels, jnp.arange(2))


@pytest.mark.parametrize('entry,sizes,match', [
    ('init', {'num_classes': 0}, 'num_classes to be a positive int, got 0'),
    ('init', {'num_train': -1}, 'num_train to be a positive int, got -1'),
    ('init', {'bits': 8.0}, 'bits to be a positive int, got 8.0'),
    ('init_lengths', {'bits': (8, 0)}, r'bits to be .*, got \(8, 0\)'),
])
def test_init_sizes_are_positive_ints(entry, sizes, match):
    loss = losses.get('dpn', centers='nested')
    kw = {'num_train': 10, 'num_classes': 3, 'bits': 8, **sizes}
    with pytest.raises(UsageError, match=f'dpn: init needs {match}'):
        getattr(loss, entry)(jax.random.key(0), **kw)


def test_init_params_sizes_are_positive_ints():
    with pytest.raises(UsageError, match='num_classes to be a positive int'):
        losses.get('greedyhash').init_params(jax.random.key(0),
                                             num_classes=0, bits=8)
