"""Base losses: registry-wide properties and NumPy references per loss."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax import losses
from tests.support import references as ref
from tests.support import references_deephash
from tests.support import references_params as ref_params
from tests.support.loss_batches import KINDS, B, K, N, apply_kwargs, loss_state
from tests.support.loss_batches import batch as _batch


def _reference(name, state, codes, labels, index):
    """Float64 value of the NumPy reference for one loss."""
    refs = {
        'dsh': lambda: ref.dsh(codes, labels, index, state.codes,
                               state.labels)[0],
        'dtsh': lambda: ref.dtsh(codes, labels),
        'lcdsh': lambda: ref.lcdsh(codes, labels),
        'dch': lambda: ref.dch(codes, labels),
        'csq': lambda: ref.csq(codes, labels, state.centers, state.fill),
        'dpn': lambda: ref.dpn(codes, labels, state.centers, state.fill),
        'mdsh': lambda: ref.mdsh(codes, labels, state.centers),
    }
    refs.update(_param_references(name, state, codes, labels, index))
    return refs[name]()


def _param_references(name, state, codes, labels, index):
    """References of the losses with parameters or an epoch update."""
    kw = apply_kwargs(name)
    params = kw.get('params')
    return {
        'daph': lambda: ref_params.daph(codes, labels, index, state.other,
                                        state.binary),
        'pcdh': lambda: ref_params.pcdh(codes, labels, params['w'],
                                        kw['features']),
        'greedyhash': lambda: ref_params.greedyhash(codes, labels,
                                                    params['w']),
        'dshsd': lambda: ref_params.dshsd(codes, labels, params['w']),
        'orthohash': lambda: ref_params.orthohash(codes, labels,
                                                  state.codebook),
        'dsdh': lambda: ref_params.dsdh(codes, labels, index, state.codes,
                                        state.labels, state.binary,
                                        state.w)[0],
    }


NAMES = sorted(losses.LOSSES)
# The losses whose reference is in _reference; tests/losses/test_deephash.py
# checks the others against tests/support/references_deephash.py.
REFERENCED = sorted({'csq', 'dch', 'dpn', 'dsh', 'dtsh', 'lcdsh', 'mdsh',
                     'greedyhash', 'dshsd', 'orthohash', 'dsdh', 'daph',
                     'pcdh'})


def test_registry_has_the_seven_losses():
    assert set(NAMES) >= {'csq', 'dch', 'dpn', 'dsh', 'dtsh', 'lcdsh', 'mdsh'}


def test_every_registered_loss_has_a_reference():
    assert set(NAMES) <= set(REFERENCED) | set(references_deephash.NAMES)
    for name in REFERENCED:
        codes, labels, index = _batch()
        assert np.isfinite(_reference(name, loss_state(name), codes, labels,
                                      index))


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"Unknown loss 'dspn'.*'dsh'"):
        losses.get('dspn')


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('name', REFERENCED)
def test_matches_numpy_reference(name, kind):
    codes, labels, index = _batch(seed=len(name), kind=kind)
    state = loss_state(name)
    value, _ = jax.jit(losses.get(name).apply)(state, codes, labels, index,
                                               **apply_kwargs(name))
    expected = _reference(name, state, codes, labels, index)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', NAMES)
def test_jit_equals_eager_and_state_is_stable(name):
    codes, labels, index = _batch(seed=3)
    loss = losses.get(name)
    state = loss_state(name)
    kw = apply_kwargs(name)
    eager, eager_state = loss.apply(state, codes, labels, index, **kw)
    jitted, jit_state = jax.jit(loss.apply)(state, codes, labels, index, **kw)
    chex.assert_shape(eager, ())
    assert eager.dtype == jnp.float32
    np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(eager_state, jit_state, rtol=1e-6)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, eager_state)


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('scale', [1.5, 0.0])
def test_gradients_are_finite(name, scale):
    # scale 0: all-zero codes.
    codes, labels, index = _batch(seed=5, scale=scale)
    loss = losses.get(name)
    state = loss_state(name)
    kw = apply_kwargs(name)
    grad = jax.grad(lambda u: loss.apply(state, u, labels, index, **kw)[0])(
        codes)
    chex.assert_shape(grad, (B, K))
    chex.assert_tree_all_finite(grad)
    if scale:
        assert np.abs(grad).sum() > 0
    if 'params' in kw:  # a loss with its own parameters: their gradient too
        grad_p = jax.grad(lambda p: loss.apply(
            state, codes, labels, index, **{**kw, 'params': p})[0]
        )(kw['params'])
        chex.assert_trees_all_equal_shapes_and_dtypes(grad_p, kw['params'])
        chex.assert_tree_all_finite(grad_p)
        if scale:
            assert sum(np.abs(g).sum() for g in jax.tree.leaves(grad_p)) > 0


@pytest.mark.parametrize('name', NAMES)
def test_epoch_update_keeps_state_shapes_and_dtypes(name):
    loss = losses.get(name)
    if loss.epoch_update is None:
        pytest.skip('no epoch update')
    state = loss_state(name)
    params = apply_kwargs(name).get('params')
    new = jax.jit(loss.epoch_update)(state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, new)
    chex.assert_tree_all_finite(new)


SMOOTH = ['csq', 'dch', 'dpn', 'dtsh', 'lcdsh', 'mdsh', 'dshsd', 'orthohash',
          'daph', 'pcdh']


@pytest.mark.parametrize('name', SMOOTH)
def test_gradient_matches_reference_finite_differences(name):
    codes, labels, index = _batch(seed=11, kind='multihot')
    state = loss_state(name)
    kw = apply_kwargs(name)
    grad = jax.grad(
        lambda u: losses.get(name).apply(state, u, labels, index, **kw)[0]
    )(codes)
    u64 = codes.astype(np.float64)
    numeric = np.zeros_like(u64)
    eps = 1e-6
    for i, j in np.ndindex(*u64.shape):
        up, down = u64.copy(), u64.copy()
        up[i, j] += eps
        down[i, j] -= eps
        numeric[i, j] = (
            _reference(name, state, up, labels, index)
            - _reference(name, state, down, labels, index)
        ) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-5)


def test_dsh_writes_the_bank_before_the_loss_and_grads_only_the_batch():
    codes, labels, index = _batch(seed=7)
    state = loss_state('dsh')
    _, new = losses.get('dsh').apply(state, codes, labels, index)
    np.testing.assert_array_equal(new.codes[index], codes)
    np.testing.assert_array_equal(new.labels[index], labels)
    untouched = np.setdiff1d(np.arange(N), index)
    np.testing.assert_array_equal(new.codes[untouched],
                                  state.codes[untouched])
    _, ref_codes, ref_labels = ref.dsh(codes, labels, index, state.codes,
                                       state.labels)
    np.testing.assert_allclose(new.codes, ref_codes, rtol=1e-6)
    np.testing.assert_allclose(new.labels, ref_labels)


def test_dsh_gradient_ignores_the_bank_path():
    """dL/du with the bank frozen at u equals the full jax.grad (bank is sg)."""
    codes, labels, index = _batch(seed=8)
    state = loss_state('dsh')
    loss = losses.get('dsh')
    _, written = loss.apply(state, codes, labels, index)
    grad = jax.grad(lambda u: loss.apply(state, u, labels, index)[0])(codes)

    def frozen(u):  # the bank already holds the batch, so the write is a no-op
        dist = jnp.sum((u[:, None, :] - written.codes[None]) ** 2, -1)
        dis = (labels @ written.labels.T == 0).astype(jnp.float32)
        pair = 0.5 * (1 - dis) * dist + 0.5 * dis * jnp.maximum(2 * K - dist, 0)
        return jnp.mean(pair) + 0.1 * jnp.mean(jnp.abs(1 - jnp.abs(u)))

    np.testing.assert_allclose(grad, jax.grad(frozen)(codes), rtol=1e-4,
                               atol=1e-6)


def test_dtsh_without_valid_anchor_is_quantisation_only():
    codes, labels, index = _batch(kind='single_class')
    value, _ = losses.get('dtsh').apply(loss_state('dtsh'), codes, labels,
                                        index)
    quant = np.mean((codes - np.sign(codes)) ** 2)
    np.testing.assert_allclose(value, quant, rtol=1e-6)


def test_dtsh_memory_is_vectorised_not_looped():
    """The jaxpr has no loop over anchors: one [B, B, B] tensor, no while."""
    codes, labels, index = _batch()
    jaxpr = jax.make_jaxpr(losses.get('dtsh').apply)(
        loss_state('dtsh'), codes, labels, index
    )
    text = str(jaxpr)
    assert 'while' not in text and 'scan' not in text
    assert f'{B},{B},{B}' in text.replace(' ', '')
