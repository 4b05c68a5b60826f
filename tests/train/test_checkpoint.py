"""Orbax checkpoints: asynchronous saves that the loop may race safely."""

import types

import jax.numpy as jnp
import numpy as np

from nhl_jax.train import checkpoint


def test_save_does_not_wait_for_the_disk():
    calls = []
    mngr = types.SimpleNamespace(
        save=lambda step, args: calls.append(('save', step)),
        wait_until_finished=lambda: calls.append(('wait',)))
    checkpoint.save(mngr, 3, {'x': jnp.zeros(2)}, {}, {'epoch': 1})
    assert calls == [('save', 3)]
    checkpoint.wait(mngr)
    assert calls[-1] == ('wait',)


def test_state_changed_after_save_is_saved_as_it_was(tmp_path):
    """The loop mutates meta and best and donates the state right after."""
    state = {'w': jnp.arange(4.0)}
    best, meta = {'8': {'w': np.ones(2)}}, {'epoch': 1, 'best_map': {}}
    with checkpoint.manager(str(tmp_path)) as mngr:
        checkpoint.save(mngr, 1, state, best, meta)
        meta['epoch'], meta['best_map']['8'] = 2, 0.5
        best['8'] = {'w': np.zeros(2)}
        state = {'w': state['w'] + 1}
        restored = checkpoint.restore_latest(
            mngr, {'w': jnp.zeros(4)}, {'8': {'w': np.zeros(2)}})
    saved_state, saved_best, saved_meta = restored
    np.testing.assert_array_equal(saved_state['w'], np.arange(4.0))
    np.testing.assert_array_equal(saved_best['8']['w'], np.ones(2))
    assert saved_meta == {'epoch': 1, 'best_map': {}}
