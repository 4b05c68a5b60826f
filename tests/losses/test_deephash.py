"""The DeepHash-pytorch losses against loop-based float64 NumPy references."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax import losses
from tests.support import references_deephash as ref
from tests.support.loss_batches import KINDS, B, C, K, N
from tests.support.loss_batches import batch as _batch
from tests.support.loss_batches import labels as _labels

BANK = ref.BANK
NAMES = ref.NAMES


def _state(name, seed=0, step=45):
    """A state as ``init`` builds it, banks and counters made non-trivial."""
    state = losses.get(name).init(
        jax.random.key(seed), num_train=N, num_classes=C, bits=K
    )
    rng = np.random.default_rng(seed + 1)
    bank_codes = jnp.asarray(rng.uniform(-1, 1, (N, K)), jnp.float32)
    # Multi-hot bank rows give IDHN/ISDH soft pairs (0.01 < s < 0.99).
    bank_labels = jnp.asarray(_labels(rng, 'multihot', N))
    if isinstance(state, losses.BankState):
        return losses.BankState(bank_codes, bank_labels)
    if isinstance(state, losses.DFHState):
        centers = jnp.asarray(rng.standard_normal((K, C)), jnp.float32)
        return losses.DFHState(bank_codes, bank_labels, centers)
    if isinstance(state, losses.HashNetState):
        return state._replace(step=jnp.asarray(step, jnp.int32))
    return state


def _reference(name, state, codes, labels, index, **kw):
    """Float64 NumPy reference value of one loss."""
    if name in BANK:
        return getattr(ref, name)(codes, labels, index, state.codes,
                                  state.labels, **kw)[0]
    if name == 'dfh':
        return ref.dfh(codes, labels, index, state.codes, state.labels,
                       state.centers, **kw)[0]
    if name == 'hashnet':
        beta = ref.hashnet_scale(int(state.step), int(state.num_train), B)
        return ref.hashnet(codes, labels, scale=beta)
    if name == 'qsmih':
        return ref.qsmih(codes, labels)
    return ref.shcir(codes, labels, state.centers)


def test_all_are_registered():
    assert set(NAMES) <= set(losses.LOSSES)


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('name', NAMES)
def test_matches_numpy_reference(name, kind):
    codes, labels, index = _batch(seed=len(name), kind=kind)
    state = _state(name)
    value, _ = jax.jit(losses.get(name).apply)(state, codes, labels, index)
    expected = _reference(name, state, codes, labels, index)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', NAMES)
def test_jit_equals_eager_and_state_is_stable(name):
    codes, labels, index = _batch(seed=3)
    loss = losses.get(name)
    state = _state(name)
    eager, eager_state = loss.apply(state, codes, labels, index)
    jitted, jit_state = jax.jit(loss.apply)(state, codes, labels, index)
    chex.assert_shape(eager, ())
    assert eager.dtype == jnp.float32
    np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(eager_state, jit_state, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, eager_state)


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('scale', [1.5, 0.0])
def test_gradients_are_finite(name, scale):
    codes, labels, index = _batch(seed=5, scale=scale)
    loss = losses.get(name)
    for state in (_state(name), loss.init(jax.random.key(0), num_train=N,
                                          num_classes=C, bits=K)):
        grad = jax.grad(lambda u, s=state: loss.apply(s, u, labels,
                                                      index)[0])(codes)
        chex.assert_shape(grad, (B, K))
        chex.assert_tree_all_finite(grad)
        if scale:
            assert np.abs(grad).sum() > 0


@pytest.mark.parametrize('kind', ['onehot', 'multihot'])
@pytest.mark.parametrize('name', NAMES)
def test_gradient_matches_reference_finite_differences(name, kind):
    codes, labels, index = _batch(seed=11, kind=kind)
    state = _state(name)
    grad = jax.grad(
        lambda u: losses.get(name).apply(state, u, labels, index)[0]
    )(codes)
    kw = {}
    if name in BANK + ['dfh']:
        # The bank holds detached codes: differentiate with it frozen at the
        # written state, as the gradient of the loss sees it.
        _, written = losses.get(name).apply(state, codes, labels, index)
        state = state._replace(codes=written.codes, labels=written.labels)
        kw['write'] = False
    if name == 'dfh':
        kw['steps'] = 0  # the centre refit does not change this step's value
    u64 = codes.astype(np.float64)
    numeric = np.zeros_like(u64)
    eps = 1e-6
    for i, j in np.ndindex(*u64.shape):
        up, down = u64.copy(), u64.copy()
        up[i, j] += eps
        down[i, j] -= eps
        numeric[i, j] = (
            _reference(name, state, up, labels, index, **kw)
            - _reference(name, state, down, labels, index, **kw)
        ) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-5)


@pytest.mark.parametrize('name', BANK)
def test_bank_is_written_before_the_loss(name):
    codes, labels, index = _batch(seed=7)
    state = _state(name)
    _, new = losses.get(name).apply(state, codes, labels, index)
    _, ref_codes, ref_labels = getattr(ref, name)(
        codes, labels, index, state.codes, state.labels)
    np.testing.assert_allclose(new.codes, ref_codes, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(new.labels, ref_labels)
    untouched = np.setdiff1d(np.arange(N), index)
    np.testing.assert_array_equal(new.codes[untouched],
                                  state.codes[untouched])


@pytest.mark.parametrize('name', BANK + ['dfh'])
def test_bank_gets_no_gradient(name):
    """The gradient is the same when the written rows are already there."""
    codes, labels, index = _batch(seed=8)
    loss = losses.get(name)
    state = _state(name)
    _, written = loss.apply(state, codes, labels, index)
    written = state._replace(codes=written.codes, labels=written.labels)
    g1 = jax.grad(lambda u: loss.apply(state, u, labels, index)[0])(codes)
    g2 = jax.grad(lambda u: loss.apply(written, u, labels, index)[0])(codes)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-7)


def test_dfh_centers_follow_the_reference_refit():
    codes, labels, index = _batch(seed=9, kind='onehot')
    state = _state('dfh')
    _, new = jax.jit(losses.get('dfh').apply)(state, codes, labels, index)
    _, bu, by, centers = ref.dfh(codes, labels, index, state.codes,
                                 state.labels, state.centers)
    np.testing.assert_allclose(new.centers, centers, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new.codes, bu, rtol=1e-6)
    np.testing.assert_array_equal(new.labels, by)


def test_dfh_first_step_from_zero_centers():
    codes, labels, index = _batch(seed=10, kind='onehot')
    loss = losses.get('dfh')
    state = loss.init(jax.random.key(0), num_train=N, num_classes=C, bits=K)
    value, new = loss.apply(state, codes, labels, index)
    expected, _, _, centers = ref.dfh(codes, labels, index, state.codes,
                                      state.labels, state.centers)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(new.centers, centers, rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(new.centers)).sum() > 0


def test_hashnet_counts_steps_and_grows_the_scale():
    loss = losses.get('hashnet')
    state = loss.init(jax.random.key(0), num_train=N, num_classes=C, bits=K)
    assert int(state.step) == 0 and int(state.num_train) == N
    codes, labels, index = _batch(seed=12)
    apply = jax.jit(loss.apply)
    # N // B = 2 steps an epoch, so beta = sqrt(2) from step 40 (epoch 20).
    for step, beta in [(0, 1.0), (39, 1.0), (40, math.sqrt(2)),
                       (80, math.sqrt(3))]:
        state = state._replace(step=jnp.asarray(step, jnp.int32))
        assert ref.hashnet_scale(step, N, B) == pytest.approx(beta)
        value, new = apply(state, codes, labels, index)
        assert int(new.step) == step + 1
        np.testing.assert_allclose(
            value, ref.hashnet(codes, labels, scale=beta), rtol=1e-5)


def test_hashnet_step_continuation_is_in_epochs():
    loss = losses.get('hashnet', step_continuation=1)
    state = loss.init(jax.random.key(0), num_train=N, num_classes=C, bits=K)
    codes, labels, index = _batch(seed=13)
    state = state._replace(step=jnp.asarray(4, jnp.int32))  # epoch 2
    value, _ = loss.apply(state, codes, labels, index)
    np.testing.assert_allclose(
        value, ref.hashnet(codes, labels, scale=math.sqrt(3)), rtol=1e-5)


def test_qsmih_plain_variant():
    codes, labels, index = _batch(seed=14)
    loss = losses.get('qsmih', use_square_clamp=False)
    value, _ = loss.apply(_state('qsmih'), codes, labels, index)
    np.testing.assert_allclose(
        value, ref.qsmih(codes, labels, use_square_clamp=False), rtol=1e-5)


def test_dbdh_p1_and_bad_p():
    codes, labels, index = _batch(seed=15)
    state = _state('dbdh')
    value, _ = losses.get('dbdh', p=1).apply(state, codes, labels, index)
    expected = ref.dbdh(codes, labels, index, state.codes, state.labels,
                        p=1)[0]
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    with pytest.raises(ValueError, match=r'p must be one of \[1, 2\], got 3'):
        losses.get('dbdh', p=3)


def test_shcir_uses_given_centers():
    table = np.where(np.random.default_rng(0).random((C, K)) < 0.5, -1, 1)
    loss = losses.get('shcir', centers=table)
    state = loss.init(jax.random.key(0), num_train=N, num_classes=C, bits=K)
    np.testing.assert_array_equal(state.centers, table)
    codes, labels, index = _batch(seed=16, kind='onehot')
    value, _ = loss.apply(state, codes, labels, index)
    np.testing.assert_allclose(value, ref.shcir(codes, labels, table),
                               rtol=1e-5)
