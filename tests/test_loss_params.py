"""Base losses with their own trainable parameters and an epoch update.

The toy loss of tests/toy_losses.py goes through the whole NHL trainer: its
W is trained by the optimizer and checkpointed, its epoch update runs after
every epoch, resume is exact and 4 devices equal 1 (tests/test_parallel.py,
method 'classifier').
"""

import jax
import numpy as np
import pytest

from experiments.configs import default
from nhl_jax import checkpoint, data, losses, train
from tests import toy_losses


@pytest.fixture(autouse=True)
def _registered(monkeypatch):
    monkeypatch.setitem(losses.LOSSES, 'classifier', toy_losses.classifier)


def _config(**overrides):
    config = default.get_config()
    config.update(dict(method='classifier', dataset='digits', backbone='mlp',
                       bits=(8, 16), epochs=2, eval_every=1, batch_size=32,
                       weighting='paper'))
    config.update(overrides)
    return config


def _create(config):
    splits = data.load_splits('digits', seed=0)
    return train.create_train_state(train.resolve(config),
                                    train.DataInfo.of(splits))


def test_loss_parameters_join_the_model_and_the_optimizer():
    setup, state = _create(_config())
    w = [state.params['loss']['per_length'][k]['w'][...] for k in (0, 1)]
    assert [x.shape for x in w] == [(8, 10), (16, 10)]
    assert set(setup.hooks) == {'epoch'}
    splits = data.load_splits('digits', seed=0)
    batch = next(iter(data.train_batches(splits.train, 32, seed=0, epoch=1)))
    before = jax.tree.map(np.array, state.params)
    step = train.compile_step(setup.steps['train'])
    state, metrics = step(state, batch, None)
    assert np.all(np.isfinite(metrics['losses']))
    moved = jax.tree.map(lambda a, b: np.abs(np.asarray(b) - a).max(),
                         before, state.params)
    # Trained at the head's rate: Adam's first step moves by about 1e-3.
    assert 5e-4 < max(jax.tree.leaves(moved['loss'])) < 2e-3


def test_losses_without_parameters_keep_the_model_unchanged():
    _, state = _create(_config(method='dpn'))
    assert set(state.params) == {'backbone', 'head'}


def _saved_state(workdir, config):
    _, template = _create(config)
    with checkpoint.manager(workdir) as mngr:
        state, _, meta = checkpoint.restore_latest(
            mngr, template, _best_template(template))
    return state, meta


def _best_template(state):
    host = jax.device_get((state.params, state.rest))
    return {b: {'params': host[0], 'rest': host[1]} for b in ('8', '16')}


def test_epoch_update_runs_after_every_epoch_and_resume_is_exact(tmp_path):
    straight = train.train_and_evaluate(_config(), str(tmp_path / 'a'))
    state, meta = _saved_state(str(tmp_path / 'a'), _config())
    assert meta['epoch'] == 2
    for loss_state in state.extra.loss_states:
        assert int(loss_state['epochs']) == 2
        assert set(np.unique(np.asarray(loss_state['mean']))) <= {-1.0, 1.0}
    train.train_and_evaluate(_config(epochs=1), str(tmp_path / 'b'))
    resumed = train.train_and_evaluate(_config(), str(tmp_path / 'b'),
                                       resume=True)
    assert resumed['params_sha256'] == straight['params_sha256']
    assert resumed['map'] == straight['map']
