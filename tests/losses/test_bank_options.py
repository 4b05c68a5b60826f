"""The bank losses' collapse remedies: ``warmup`` and ``bank_codes``."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax import losses
from nhl_jax.errors import UsageError
from tests.support import references_deephash as ref
from tests.support import references_params as ref_params
from tests.support.loss_batches import B, C, K, N
from tests.support.loss_batches import batch as _batch
from tests.support.loss_batches import labels as _labels

# The losses whose references take a bank; dfh is checked without one.
REFERENCED = ref.BANK + ['dsdh']
ALL = REFERENCED + ['dfh']


def _state(name, seed=0, **options):
    """``init``'s state with a random bank (multi-hot labels)."""
    state = losses.get(name, **options).init(
        jax.random.key(seed), num_train=N, num_classes=C, bits=K)
    rng = np.random.default_rng(seed + 1)
    return state._replace(
        codes=jnp.asarray(rng.uniform(-1, 1, (N, K)), jnp.float32),
        labels=jnp.asarray(_labels(rng, 'multihot', N)))


def _squashed(name, codes):
    """The codes the loss stores and compares (NumPy)."""
    u = np.asarray(codes, np.float64)
    if name in ('idhn', 'isdh'):
        return u / (np.abs(u) + 1.0)
    return np.clip(u, -1.0, 1.0) if name == 'dbdh' else u


def _reference(name, codes, labels, index, bank_u, bank_y, write=True):
    if name == 'dsdh':  # B = W = 0: the classification term is mean(y^2)
        zeros_b, zeros_w = np.zeros((len(bank_u), K)), np.zeros((K, C))
        return ref_params.dsdh(codes, labels, index, bank_u, bank_y,
                               zeros_b, zeros_w, write=write)[0]
    return getattr(ref, name)(codes, labels, index, bank_u, bank_y,
                              write=write)[0]


@pytest.mark.parametrize('name', REFERENCED)
def test_sign_bank_stores_signs_and_matches_the_reference(name):
    codes, labels, index = _batch(seed=4)
    state = _state(name, bank_codes='sign')
    loss = losses.get(name, bank_codes='sign')
    value, new = jax.jit(loss.apply)(state, codes, labels, index)
    bank_u = np.array(state.codes, np.float64)
    bank_y = np.array(state.labels, np.float64)
    bank_u[index] = np.sign(_squashed(name, codes))
    bank_y[index] = labels
    expected = _reference(name, codes, labels, index, bank_u, bank_y,
                          write=False)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(new.codes, bank_u.astype(np.float32))
    np.testing.assert_array_equal(new.labels, bank_y.astype(np.float32))


@pytest.mark.parametrize('name', REFERENCED)
def test_warmup_compares_the_batch_with_itself_then_the_bank(name):
    codes, labels, index = _batch(seed=6)
    loss = losses.get(name, warmup=2)
    apply = jax.jit(loss.apply)
    state = _state(name, warmup=2)
    in_batch = _reference(name, codes, labels, np.arange(B),
                          np.zeros((B, K)), np.zeros((B, C)))
    bank = _reference(name, codes, labels, index, state.codes, state.labels)
    for count, expected in ((0, in_batch), (1, in_batch), (2, bank),
                            (7, bank)):
        value, new = apply(state._replace(count=jnp.int32(count)), codes,
                           labels, index)
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)
        assert int(new.count) == count + 1
        # The bank is written during the warm-up too.
        np.testing.assert_allclose(new.codes[index],
                                   _squashed(name, codes), rtol=1e-6)
    assert abs(in_batch - bank) > 1e-3


@pytest.mark.parametrize('name', ALL)
def test_default_state_has_no_counter_and_options_keep_shapes(name):
    assert losses.get(name).init(jax.random.key(0), num_train=N,
                                 num_classes=C, bits=K).count is None
    codes, labels, index = _batch(seed=8)
    options = dict(warmup=3, bank_codes='sign')
    state = _state(name, **options)
    apply = losses.get(name, **options).apply
    _, new = jax.eval_shape(apply, state, codes, labels, index)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, new)
    assert new.count.dtype == jnp.int32
    # In and after the warm-up: one program, finite non-zero gradients.
    grad = jax.jit(jax.grad(lambda u, s: apply(s, u, labels, index)[0]))
    for count in (0, 5):
        g = grad(codes, state._replace(count=jnp.int32(count)))
        chex.assert_tree_all_finite(g)
        assert np.abs(g).sum() > 0


@pytest.mark.parametrize('name', ['dpsh'])
def test_jit_equals_eager(name):
    codes, labels, index = _batch(seed=8)
    options = dict(warmup=3, bank_codes='sign')
    loss = losses.get(name, **options)
    state = _state(name, **options)
    eager, eager_state = loss.apply(state, codes, labels, index)
    jitted, jit_state = jax.jit(loss.apply)(state, codes, labels, index)
    np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(eager_state, jit_state, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('kw,problem', [
    ({'bank_codes': 'binary'}, "must be one of ['relaxed', 'sign']"),
    ({'warmup': -1}, 'must be >= 0'),
    ({'warmup': 1.5}, 'must be an int'),
])
def test_bad_options_are_refused_in_one_line(kw, problem):
    with pytest.raises(UsageError, match=problem.replace('[', r'\[')):
        losses.get('dpsh', **kw)
    with pytest.raises(ValueError, match=next(iter(kw))):
        losses.LOSSES['idhn'](**kw)
