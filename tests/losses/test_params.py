"""Base losses with their own trainable parameters and an epoch update.

The toy loss of tests/support/toy_losses.py goes through the whole NHL
trainer: its W is trained by the optimizer and checkpointed, its epoch
update runs after every epoch, resume is exact and 4 devices equal 1
(tests/test_parallel.py, method 'classifier').
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax import cli, data, losses, train
from nhl_jax.cli.configs import default
from nhl_jax.train import checkpoint
from tests.support import references_params as ref_params
from tests.support import toy_losses


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
    return cli.create_train_state(cli.resolve(config),
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
    straight = cli.train_and_evaluate(_config(), str(tmp_path / 'a'))
    state, meta = _saved_state(str(tmp_path / 'a'), _config())
    assert meta['epoch'] == 2
    for loss_state in state.extra.loss_states:
        assert int(loss_state['epochs']) == 2
        assert set(np.unique(np.asarray(loss_state['mean']))) <= {-1.0, 1.0}
    cli.train_and_evaluate(_config(epochs=1), str(tmp_path / 'b'))
    resumed = cli.train_and_evaluate(_config(), str(tmp_path / 'b'),
                                     resume=True)
    assert resumed['params_sha256'] == straight['params_sha256']
    assert resumed['map'] == straight['map']


# The losses of the registry with parameters or an epoch update, checked
# against tests/support/references_params.py and through the trainer.

BP, CP, KP, NP_ = 5, 3, 8, 10


def _small_batch(seed=0, multi=False):
    rng = np.random.default_rng(seed)
    codes = (1.5 * rng.standard_normal((BP, KP))).astype(np.float32)
    if multi:
        labels = (rng.random((BP, CP)) < 0.4).astype(np.float32)
        labels[np.arange(BP), rng.integers(0, CP, BP)] = 1.0
    else:
        labels = np.eye(CP, dtype=np.float32)[rng.integers(0, CP, BP)]
    index = rng.permutation(NP_)[:BP].astype(np.int32)
    return codes, labels, index


def _numeric_grad(f, x, eps=1e-6):
    x = np.asarray(x, np.float64)
    out = np.zeros_like(x)
    for pos in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[pos] += eps
        down[pos] -= eps
        out[pos] = (f(up) - f(down)) / (2 * eps)
    return out


def _init(loss, seed=0):
    key = jax.random.key(seed)
    state = loss.init(key, num_train=NP_, num_classes=CP, bits=KP)
    params = (None if loss.init_params is None else
              loss.init_params(jax.random.fold_in(key, 1), num_classes=CP,
                               bits=KP))
    return state, params


@pytest.mark.parametrize('multi', [False, True])
def test_greedyhash_value_and_straight_through_gradients(multi):
    codes, labels, index = _small_batch(1, multi)
    loss = losses.get('greedyhash', alpha=0.3)
    state, params = _init(loss)
    w = np.asarray(params['w'], np.float64)
    value, grads = jax.value_and_grad(
        lambda u, p: loss.apply(state, u, labels, index, params=p)[0],
        argnums=(0, 1))(codes, params)
    np.testing.assert_allclose(
        value, ref_params.greedyhash(codes, labels, w, alpha=0.3), rtol=1e-5)
    # Straight through: d/du = dCE/db at b = sign(u) + dpenalty/du.
    b = np.sign(codes)
    d_b = _numeric_grad(
        lambda x: ref_params.greedyhash(codes, labels, w, b=x, alpha=0), b)
    d_u = _numeric_grad(
        lambda x: ref_params.greedyhash(x, labels, w, b=b, alpha=0.3), codes)
    np.testing.assert_allclose(grads[0], d_b + d_u, rtol=2e-3, atol=2e-5)
    d_w = _numeric_grad(
        lambda x: ref_params.greedyhash(codes, labels, x, alpha=0.3), w)
    np.testing.assert_allclose(grads[1]['w'], d_w, rtol=2e-3, atol=2e-5)


@pytest.mark.parametrize('classification', ['softmax', 'sigmoid'])
def test_dshsd_value_and_gradients(classification):
    codes, labels, index = _small_batch(2, multi=True)
    loss = losses.get('dshsd', classification=classification)
    state, params = _init(loss)
    w = np.asarray(params['w'], np.float64)
    value, grads = jax.value_and_grad(
        lambda u, p: loss.apply(state, u, labels, index, params=p)[0],
        argnums=(0, 1))(codes, params)

    def f(u, w_):
        return ref_params.dshsd(u, labels, w_, classification=classification)

    np.testing.assert_allclose(value, f(codes, w), rtol=1e-5)
    np.testing.assert_allclose(
        grads[0], _numeric_grad(lambda x: f(x, w), codes), rtol=2e-3,
        atol=2e-5)
    np.testing.assert_allclose(
        grads[1]['w'], _numeric_grad(lambda x: f(codes, x), w), rtol=2e-3,
        atol=2e-5)


@pytest.mark.parametrize('kwargs', [
    {},
    {'margin_type': 'arc'},
    {'multiclass': True, 'quan': 0.5, 'quan_type': 'cs'},
    {'quan': 0.1, 'quan_type': 'l1'},
    {'quan': 0.1, 'quan_type': 'l2'},
    {'learn_codebook': True},
])
def test_orthohash_value_and_gradients(kwargs):
    codes, labels, index = _small_batch(3, multi=kwargs.get('multiclass',
                                                            False))
    loss = losses.get('orthohash', **kwargs)
    state, params = _init(loss)
    learn = kwargs.get('learn_codebook', False)
    table = params['codebook'] if learn else state.codebook
    assert set(np.unique(np.asarray(table))) == {-1.0, 1.0}
    opts = {k: v for k, v in kwargs.items() if k != 'learn_codebook'}

    def f(u, cb):
        return ref_params.orthohash(u, labels, cb, **opts)

    def value_fn(u, p):
        kw = {'params': p} if learn else {}
        return loss.apply(state, u, labels, index, **kw)[0]

    value, grads = jax.value_and_grad(value_fn, argnums=(0, 1))(codes, params)
    cb = np.asarray(table, np.float64)
    np.testing.assert_allclose(value, f(codes, cb), rtol=1e-5)
    # The quantisation target sign(u) is stopped: difference u only there.
    np.testing.assert_allclose(
        grads[0], _numeric_grad(lambda x: f(x, cb), codes), rtol=2e-3,
        atol=2e-5)
    if learn:
        np.testing.assert_allclose(
            grads[1]['codebook'], _numeric_grad(lambda x: f(codes, x), cb),
            rtol=2e-3, atol=2e-5)
    else:
        assert loss.init_params is None


def _dsdh_state(seed=0):
    rng = np.random.default_rng(seed)
    return losses.DSDHState(
        codes=jnp.asarray(rng.standard_normal((NP_, KP)), jnp.float32),
        labels=jnp.asarray(np.eye(CP)[rng.integers(0, CP, NP_)], jnp.float32),
        binary=jnp.asarray(rng.choice([-1.0, 1.0], (NP_, KP)), jnp.float32),
        w=jnp.asarray(0.3 * rng.standard_normal((KP, CP)), jnp.float32))


def test_dsdh_value_bank_and_gradient():
    codes, labels, index = _small_batch(4, multi=True)
    loss = losses.get('dsdh')
    state = _dsdh_state()
    value, new = loss.apply(state, codes, labels, index)
    expected, bank_u, bank_y = ref_params.dsdh(
        codes, labels, index, state.codes, state.labels, state.binary,
        state.w)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(new.codes, bank_u, rtol=1e-6)
    np.testing.assert_array_equal(new.labels, bank_y)
    np.testing.assert_array_equal(new.binary, state.binary)
    grad = jax.grad(lambda u: loss.apply(state, u, labels, index)[0])(codes)
    # The bank is stopped: difference with the written bank held fixed.
    numeric = _numeric_grad(lambda x: ref_params.dsdh(
        x, labels, index, bank_u, bank_y, state.binary, state.w,
        write=False)[0], codes)
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-5)


@pytest.mark.parametrize('zero_start', [True, False])
def test_dsdh_epoch_update_is_the_reference_dcc(zero_start):
    loss = losses.get('dsdh', dcc_iter=3)
    state = _dsdh_state(5)
    if zero_start:  # the state before the first update, as init builds it
        state = state._replace(binary=jnp.zeros_like(state.binary),
                               w=jnp.zeros_like(state.w))
    new = jax.jit(loss.epoch_update)(state, None)
    b, w = ref_params.dsdh_update(state.codes, state.labels, state.binary,
                                  dcc_iter=3)
    np.testing.assert_array_equal(new.binary, b)
    np.testing.assert_allclose(new.w, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(new.codes, state.codes)


PARAM_LOSSES = [('greedyhash', {}), ('dshsd', {}), ('dsdh', {}),
                ('orthohash', {'learn_codebook': True}),
                ('daph', {}),  # an epoch update, no parameters
                ('pcdh', {})]  # parameters and the backbone features


@pytest.mark.parametrize('name, kwargs', PARAM_LOSSES)
def test_param_losses_train_and_resume_exactly(name, kwargs, tmp_path):
    def config_of(**overrides):
        config = _config(method=name, **overrides)
        config.loss_kwargs.update(kwargs)
        return config

    config = config_of()
    _, state = _create(config)
    assert ('loss' in state.params) == (
        losses.get(name, **kwargs).init_params is not None)
    straight = cli.train_and_evaluate(config, str(tmp_path / 'a'))
    print(name, straight['map'])  # the short run's mAP, for the report
    cli.train_and_evaluate(config_of(epochs=1), str(tmp_path / 'b'))
    resumed = cli.train_and_evaluate(config, str(tmp_path / 'b'),
                                     resume=True)
    assert resumed['params_sha256'] == straight['params_sha256']
    assert resumed['map'] == straight['map']
