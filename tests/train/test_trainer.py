"""Training: the jitted step, early stopping, end-to-end runs, resume."""

import json
import os

import chex
import jax
import numpy as np
import pytest

from nhl_jax import cli, data, losses, runlog, train
from nhl_jax.cli.configs import default
from nhl_jax.errors import UsageError
from nhl_jax.train import evaluation


def _config(**overrides):
    config = default.get_config()
    config.update(dict(dataset='digits', bits=(8, 16), epochs=1,
                       eval_every=1, batch_size=32))
    config.update(overrides)
    return config


@pytest.fixture(scope='module')
def splits():
    return data.load_splits('digits', seed=0)


def _create(config, splits=None, **info):
    """``(setup, state)`` of an NHL config on digits-shaped data."""
    info = train.DataInfo(info.get('image_shape', (8, 8, 1)), 10,
                          {'train': info.get('num_train', 1000),
                           'query': 100, 'database': 1497})
    return cli.create_train_state(cli.resolve(config), info)


def _compiled(setup):
    step = train.compile_step(setup.steps['train'])
    return lambda state, batch: step(state, batch, None)


def _batches(splits, config, epoch=1):
    return list(data.train_batches(splits.train, config.batch_size,
                                   seed=config.seed, epoch=epoch))


def test_train_step_compiles_once_and_keeps_state_structure(splits):
    config = _config(weighting='paper', method='dsh')
    setup, state = _create(config)
    def step_fn(state, batch):
        return setup.steps['train'](state, batch, None)

    step = jax.jit(chex.assert_max_traces(step_fn, n=1))
    first = jax.tree.map(np.asarray, state)
    for batch in _batches(splits, config)[:4]:
        state, metrics = step(state, batch)
    chex.assert_trees_all_equal_shapes_and_dtypes(first, state)
    assert int(state.step) == 4 and int(state.extra.weighting.count) == 4
    assert metrics['losses'].shape == (2,)
    assert np.isfinite(metrics['loss'])


def test_step_updates_the_dsh_banks_with_training_rows_only(splits):
    config = _config(method='dsh')
    setup, state = _create(config)
    batch = _batches(splits, config)[0]
    state, _ = _compiled(setup)(state, batch)
    bank = np.asarray(state.extra.loss_states[0].labels)
    written = np.flatnonzero(bank.sum(1))
    np.testing.assert_array_equal(np.sort(written), np.sort(batch['index']))
    np.testing.assert_array_equal(bank[batch['index']], batch['label'])


def test_evaluation_does_not_touch_loss_states(splits):
    config = _config(method='dsh')
    setup, state = _create(config)
    before = jax.tree.map(np.array, state.extra.loss_states)
    maps = evaluation.evaluate_lengths(
        train.compile_encode(setup), state.params, state.rest, splits,
        setup.bits, batch_size=256)['symmetric']
    assert set(maps) == {'8', '16'} and all(0 < v <= 1 for v in maps.values())
    chex.assert_trees_all_equal(before, state.extra.loss_states)


def test_early_stopping_resets_when_any_length_improves():
    meta = train.new_meta((8, 16), ('symmetric',))
    best = {'8': None, '16': None}
    history = [{'8': .5, '16': .5}, {'8': .6, '16': .4}, {'8': .6, '16': .5},
               {'8': .6, '16': .5}, {'8': .59, '16': .55}]
    counters = []
    for maps in history:
        meta, best = train.update_best(meta, best, maps, lambda b: b, 2)
        counters.append((meta['counter'], meta['stopped_early']))
    assert counters == [(0, False), (0, False), (1, False), (2, True),
                        (0, False)]
    assert meta['best_map'] == {'8': .6, '16': .55}


@pytest.mark.parametrize('name', sorted(losses.LOSSES))
def test_every_method_trains_one_epoch_end_to_end(name, tmp_path):
    results = cli.train_and_evaluate(_config(method=name), str(tmp_path))
    saved = json.loads((tmp_path / 'results.json').read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved['method'] == name and saved['bits'] == [8, 16]
    assert set(saved['map']) == {'8', '16'}
    # Trains and evaluates; how well each method does is the results table's
    # business (some collapse to chance on one epoch of digits).
    assert all(0.0 < v <= 1.0 for v in saved['map'].values())
    assert saved['train_seconds'] > 0
    record = runlog.read_jsonl(str(tmp_path / 'metrics.jsonl'))[-1]
    assert record['epoch'] == 1 and set(record['map']) == {'8', '16'}


def test_resume_continues_from_the_saved_step(tmp_path):
    workdir = str(tmp_path)
    cli.train_and_evaluate(_config(epochs=2), workdir)
    saved_config = (tmp_path / 'config.json').read_text()
    other = _config(epochs=3)
    other.learning_rate = 0.5
    with pytest.raises(UsageError, match='already holds a run'):
        cli.train_and_evaluate(other, workdir)
    assert (tmp_path / 'config.json').read_text() == saved_config
    results = cli.train_and_evaluate(_config(epochs=3), workdir, resume=True)
    epochs = [r['epoch'] for r in
              runlog.read_jsonl(str(tmp_path / 'metrics.jsonl'))]
    assert epochs == [1, 2, 3]
    assert results['epochs'] == {'8': 3, '16': 3}
    steps = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints')
                   if s.isdigit())
    per_epoch = data.steps_per_epoch(1000, 32)
    assert steps[-1] == 3 * per_epoch


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    straight = cli.train_and_evaluate(_config(epochs=2), str(tmp_path / 'a'))
    cli.train_and_evaluate(_config(epochs=1), str(tmp_path / 'b'))
    resumed = cli.train_and_evaluate(_config(epochs=2), str(tmp_path / 'b'),
                                     resume=True)
    assert resumed['map'] == straight['map']


def test_resume_refuses_a_different_config(tmp_path):
    cli.train_and_evaluate(_config(), str(tmp_path))
    with pytest.raises(UsageError, match=r"different config.*'method'"):
        cli.train_and_evaluate(_config(method='csq'), str(tmp_path),
                               resume=True)


def test_single_length_mode_trains_each_length_alone(tmp_path):
    results = cli.train_and_evaluate(_config(single_length=True),
                                     str(tmp_path))
    assert results['mode'] == 'single_length'
    assert set(results['map']) == {'8', '16'}
    for b in (8, 16):
        run = runlog.read_jsonl(
            str(tmp_path / f'len_{b}' / 'metrics.jsonl'))[0]
        assert set(run['losses']) == {str(b)}


def _one_step(splits, **overrides):
    config = _config(**overrides)
    setup, state = _create(config)
    before = jax.tree.map(np.array, state.params)
    state, metrics = _compiled(setup)(
        state, _batches(splits, config)[0])
    delta = jax.tree.map(lambda a, b: np.abs(np.asarray(b) - a).max(),
                         before, state.params)
    return state, metrics, delta


def test_frozen_backbone_trains_only_the_head(splits):
    _, _, delta = _one_step(splits, freeze_backbone=True)
    assert max(jax.tree.leaves(delta['backbone'])) == 0.0
    assert max(jax.tree.leaves(delta['head'])) > 0.0


def test_backbone_gets_its_own_learning_rate(splits):
    _, _, delta = _one_step(splits, learning_rate=1e-3,
                            backbone_learning_rate=1e-5)
    # Adam's first step moves each weight by about its learning rate.
    assert max(jax.tree.leaves(delta['backbone'])) < 2e-5
    assert max(jax.tree.leaves(delta['head'])) > 5e-4


def test_pretrained_resnet_weights_are_loaded(splits, tmp_path):
    from flax import nnx

    from nhl_jax import models
    from nhl_jax.models import pretrained
    abstract = nnx.eval_shape(lambda: models.get_backbone(
        'resnet18', (8, 8, 1), rngs=nnx.Rngs(0), input_size=None))
    rng = np.random.default_rng(0)
    weights = {k: rng.random(shape).astype(np.float32) + 0.5  # var > 0
               for k, shape in pretrained.torchvision_shapes(abstract).items()}
    path = str(tmp_path / 'resnet18.npz')
    pretrained.save_torchvision_npz(weights, path)
    config = _config(backbone='resnet18', pretrained=path)
    config.backbone_kwargs.input_size = None
    _, state = _create(config)
    kernel = state.params['backbone']['conv1']['kernel'][...]
    np.testing.assert_array_equal(kernel,
                                  weights['conv1.weight'].transpose(2, 3, 1, 0))
    config.pretrained = str(tmp_path / 'missing.npz')
    with pytest.raises(UsageError, match='does not exist'):
        cli.resolve(config)


# ResNet-18's step compiles for 20-30 s: with the slow checks. BatchNorm's
# train mode is checked in tests/models/test_resnet.py, and the compiled
# ResNet-18 step's collectives in tests/test_parallel.py.
@pytest.mark.slow
def test_batchnorm_backbone_trains_and_updates_statistics(splits):
    """ResNet-18: BatchNorm in the jitted step, gradients through max-pool."""
    config = _config(backbone='resnet18', weighting='paper')
    config.backbone_kwargs.input_size = None
    setup, state = _create(config)
    before = jax.tree.map(np.array, state.rest)
    step = _compiled(setup)
    for batch in _batches(splits, config)[:2]:
        state, metrics = step(state, batch)
    assert np.all(np.isfinite(metrics['losses']))
    mean = state.rest['backbone']['bn1']['mean'][...]
    assert not np.allclose(mean, before['backbone']['bn1']['mean'][...])


def test_vit_backbone_trains_one_step(splits):
    config = _config(backbone='vit_b16', weighting='paper', bits=(8,))
    config.backbone_kwargs.update(dict(patch=4, width=16, depth=2, heads=2,
                                       mlp=32, input_size=8))
    setup, state = _create(config)
    state, metrics = _compiled(setup)(
        state, _batches(splits, config)[0])
    assert np.all(np.isfinite(metrics['losses']))
