"""MAH: ADSH maths against NumPy references, the outer loop, evaluation, CLI."""

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax import cli, data, retrieval, runlog, train
from nhl_jax.mah import adsh
from nhl_jax.mah import step as mah_step
from nhl_jax.train import evaluation
from tests.support import ROOT

B, C, K, N, S = 6, 4, 8, 20, 10


def _labels(rng, rows):
    """[rows, C] multi-hot labels, at least one class each."""
    y = (rng.random((rows, C)) < 0.3).astype(np.float32)
    y[np.arange(rows), rng.integers(0, C, rows)] = 1.0
    return y


def _problem(seed=0):
    """Random U [S, K], V in {-1, +1} [N, K], labels, Omega [S]."""
    rng = np.random.default_rng(seed)
    u = np.tanh(2.0 * rng.standard_normal((S, K))).astype(np.float32)
    v = np.where(rng.random((N, K)) < 0.5, -1.0, 1.0).astype(np.float32)
    db_labels = _labels(rng, N)
    omega = rng.permutation(N)[:S].astype(np.int32)
    return u, v, db_labels, omega


# --- NumPy references, written from arXiv 1809.09329---------------------------

def ref_soft_similarity(ya, yb):
    s = (ya.astype(np.float64) @ yb.T.astype(np.float64) > 0).astype(float)
    r = s.sum() / (1.0 - s).sum()
    return s * (1.0 + r) - r


def ref_adsh_loss(u, v, s_tilde, rows, gamma):
    u, v = u.astype(np.float64), v.astype(np.float64)
    total = 0.0
    for i in range(u.shape[0]):
        for j in range(v.shape[0]):
            total += (u[i] @ v[j] - u.shape[1] * s_tilde[i, j]) ** 2
        total += gamma * np.sum((v[rows[i]] - u[i]) ** 2)
    return total / (v.shape[0] * u.shape[0])


def ref_dcc(v, u, s_tilde, omega, gamma):
    v, u = v.astype(np.float64).copy(), u.astype(np.float64)
    n, c = v.shape
    u_bar = np.zeros((n, c))
    u_bar[omega] = u
    q = -2.0 * c * s_tilde.T @ u - 2.0 * gamma * u_bar
    for k in range(c):
        rest = [j for j in range(c) if j != k]
        field = q[:, k] + 2.0 * v[:, rest] @ (u[:, rest].T @ u[:, k])
        v[:, k] = np.where(field > 0, -1.0, 1.0)  # -sign, 0 -> +1
    return v


# --- the maths ------------------------------------------------------------

def test_soft_balanced_similarity_matches_numpy():
    rng = np.random.default_rng(0)
    ya, yb = _labels(rng, S), _labels(rng, N)
    got = jax.jit(adsh.soft_balanced_similarity)(ya, yb)
    np.testing.assert_allclose(got, ref_soft_similarity(ya, yb), rtol=1e-6)
    s = (ya @ yb.T > 0)
    r = s.sum() / (~s).sum()
    np.testing.assert_allclose(np.where(s, 1.0, -r), got, rtol=1e-6)
    # Balanced: the soft similarities sum to zero over Omega x database.
    assert abs(float(jnp.sum(got))) < 1e-3


def test_balance_ratio_without_dissimilar_pairs_is_finite():
    y = np.ones((3, C), np.float32)
    np.testing.assert_array_equal(adsh.soft_balanced_similarity(y, y),
                                  np.ones((3, 3)))


@pytest.mark.parametrize('masked', [False, True])
def test_adsh_loss_matches_numpy(masked):
    u, v, db_labels, omega = _problem(1)
    s_tilde = ref_soft_similarity(db_labels[omega], db_labels)
    rows = omega[:B]
    mask = np.array([1, 1, 1, 1, 0, 0], np.float32) if masked else None
    got = jax.jit(lambda *a: adsh.adsh_loss(*a, gamma=200.0, mask=mask))(
        u[:B], v, s_tilde[:B].astype(np.float32), rows)
    keep = 4 if masked else B
    want = ref_adsh_loss(u[:keep], v, s_tilde[:keep], rows[:keep], 200.0)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_joint_loss_weights_tanh_heads_jit_equals_eager():
    rng = np.random.default_rng(2)
    bits = (2, 8)
    outputs = tuple(rng.standard_normal((B, b)).astype(np.float32)
                    for b in bits)
    codes = tuple(np.where(rng.random((N, b)) < 0.5, -1.0, 1.0).astype(
        np.float32) for b in bits)
    db_labels = _labels(rng, N)
    rows = rng.permutation(N)[:B]
    s_tilde = ref_soft_similarity(db_labels[rows], db_labels)
    weights = (4.0, 1.0)

    def total(outs):
        return adsh.joint_loss(outs, codes, s_tilde.astype(np.float32), rows,
                               weights=weights, gamma=50.0)[0]

    want = sum(w * ref_adsh_loss(np.tanh(h), v, s_tilde, rows, 50.0)
               for w, h, v in zip(weights, outputs, codes))
    np.testing.assert_allclose(total(outputs), want, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(total)(outputs), total(outputs),
                               rtol=1e-6)
    grads = jax.grad(total)(outputs)
    assert all(np.isfinite(g).all() and np.abs(g).max() > 0 for g in grads)


@pytest.mark.parametrize('start', ['zeros', 'signs'])
def test_dcc_update_matches_numpy_bit_by_bit(start):
    u, v, db_labels, omega = _problem(3)
    if start == 'zeros':
        v = np.asarray(adsh.init_codes(N, K))
    s_tilde = ref_soft_similarity(db_labels[omega], db_labels)
    got = jax.jit(lambda *a: adsh.dcc_update(*a, gamma=200.0))(
        v, u, s_tilde.astype(np.float32), omega)
    np.testing.assert_array_equal(got, ref_dcc(v, u, s_tilde, omega, 200.0))
    assert set(np.unique(np.asarray(got))) <= {-1.0, 1.0}


@functools.partial(jax.jit, static_argnames='gamma')
def _objective_over_sweeps(v, u, s_tilde, omega, *, gamma):
    """J before and after one and two DCC sweeps, [3]."""
    values = [adsh.adsh_objective(v, u, s_tilde, omega, gamma=gamma)]
    for _ in range(2):
        v = adsh.dcc_update(v, u, s_tilde, omega, gamma=gamma)
        values.append(adsh.adsh_objective(v, u, s_tilde, omega, gamma=gamma))
    return jnp.stack(values)


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('gamma', [0.0, 200.0])
def test_dcc_update_never_increases_the_objective(seed, gamma):
    u, v, db_labels, omega = _problem(10 + seed)
    s_tilde = adsh.soft_balanced_similarity(db_labels[omega], db_labels)
    j = np.asarray(_objective_over_sweeps(v, u, s_tilde, omega, gamma=gamma))
    assert j[1] <= j[0] * (1 + 1e-6) and j[2] <= j[1] * (1 + 1e-6), j
    assert j[1] < j[0]  # random codes are not already optimal


def test_sgd_rate_drops_after_the_listed_outer_iterations():
    tx = mah_step.make_optimizer(
        'sgd', learning_rate=1e-3, weight_decay=0.0, steps_per_outer=3,
        decay_after=(1, 2))
    params = {'backbone': jnp.zeros(()), 'head': jnp.zeros(())}
    grads = {'backbone': jnp.ones(()), 'head': jnp.ones(())}
    state, rates = tx.init(params), []
    for _ in range(12):
        updates, state = tx.update(grads, state, params)
        rates.append(-float(updates['head']))
    # Outer iterations 0 and 1 at 1e-3, iteration 2 at 1e-4, then 1e-5.
    np.testing.assert_allclose(rates, [1e-3] * 6 + [1e-4] * 3 + [1e-5] * 3,
                               rtol=1e-5)


def test_paper_cifar10_config():
    from nhl_jax.cli.config import UsageError, check_config
    from nhl_jax.cli.configs import mah as mah_configs
    from nhl_jax.mah import config as mah_config
    config = mah_configs.get_config('cifar10')
    assert (config.method, config.dataset, config.backbone, config.bits) == (
        'mah', 'cifar10-1', 'resnet50', (4, 8, 16))
    mah = config.mah
    assert (mah.outer_iterations, mah.epochs, mah.num_samples, mah.gamma,
            mah.optimizer, mah.learning_rate, mah.weight_decay) == (
        41, 3, 2000, 200.0, 'sgd', 1e-3, 5e-4)
    assert tuple(mah.lr_decay_after) == (10, 20, 30, 40)
    assert tuple(mah.weights) == (4.0, 2.0, 1.0) and config.batch_size == 64
    mah_config.check(config)
    with pytest.raises(UsageError, match='pass --data_dir'):
        check_config(config)


# --- the outer loop on a tiny problem -------------------------------------

@functools.cache
def _tiny_run(head='cascade', bits=(4, 8), num_samples=200):
    """A tiny MLP problem on digits; compiled once for the module."""
    splits = data.load_splits('digits', seed=0)
    config = _config(learning_rate=3e-3, weight_decay=0.0, weights=(2.0, 1.0),
                     num_samples=num_samples)
    config.head, config.bits = head, bits
    setup, state = cli.create_train_state(cli.resolve(config),
                                          train.DataInfo.of(splits))
    begin = train.compile_hook(setup.hooks['begin'])
    end = train.compile_hook(setup.hooks['end'])
    fns = types.SimpleNamespace(
        start=lambda s, y: begin(s, y)[0],
        step=train.compile_step(setup.steps['outer']),
        finish=lambda s, y: (lambda out: (out[0], out[1]['objective']))(
            end(s, y)),
        encode=train.compile_encode(setup))
    return splits, splits.database, setup, state, fns


def _objective(fns, setup, state, vsplit, db_labels, codes):
    """J per head with U = tanh(network(Omega)) and the given V."""
    omega = np.asarray(state.extra.omega)
    h = np.tanh(np.asarray(fns.encode(state.params, state.rest,
                                      vsplit.images[omega])))
    s_tilde = adsh.soft_similarity(db_labels[omega], db_labels,
                                   state.extra.ratio)
    ends = np.cumsum(setup.bits)
    return np.array([
        float(adsh.adsh_objective(v, h[:, e - b:e], s_tilde, omega,
                                  gamma=setup.static.gamma))
        for b, e, v in zip(setup.bits, ends, codes)])


def _train_on_omega(fns, state, vsplit, db_labels, epochs=4):
    omega = np.asarray(state.extra.omega)
    for _ in range(epochs):
        for batch in mah_step.omega_batches(vsplit, omega, 64):
            state, _ = fns.step(state, batch, db_labels)
    return state


def test_outer_iteration_decreases_the_objective():
    _, vsplit, setup, state, fns = _tiny_run()
    state = jax.tree.map(jnp.copy, state)  # the steps donate their input
    db_labels = jnp.asarray(vsplit.labels)
    state = fns.start(state, db_labels)  # a first iteration: V becomes +-1
    state = _train_on_omega(fns, state, vsplit, db_labels)
    state, _ = fns.finish(state, db_labels)
    state = fns.start(state, db_labels)  # the iteration under test
    codes_before = jax.device_get(state.extra.codes)
    j_start = _objective(fns, setup, state, vsplit, db_labels, codes_before)
    state = _train_on_omega(fns, state, vsplit, db_labels)
    j_trained = _objective(fns, setup, state, vsplit, db_labels, codes_before)
    s_tilde = adsh.soft_similarity(db_labels[state.extra.omega], db_labels,
                                   state.extra.ratio)
    j_stored_old_v = np.array([
        float(adsh.adsh_objective(v, u, s_tilde, state.extra.omega,
                                  gamma=200.0))
        for v, u in zip(codes_before, state.extra.queries)])
    state, j_end = fns.finish(state, db_labels)
    assert np.all(j_trained < j_start), (j_start, j_trained)
    assert np.all(np.asarray(j_end) <= j_stored_old_v * (1 + 1e-6))
    assert np.all(np.asarray(j_end) < j_start), (j_start, j_end)
    # 200 rows in batches of 64: the padded last batch reuses the compile.
    assert fns.step._cache_size() == 1


def test_start_outer_samples_distinct_rows_from_the_threaded_key():
    _, vsplit, _, state, fns = _tiny_run()
    state = jax.tree.map(jnp.copy, state)
    db_labels = jnp.asarray(vsplit.labels)
    first = fns.start(state, db_labels)
    omega1 = np.asarray(first.extra.omega)
    second = fns.start(first, db_labels)
    omega2 = np.asarray(second.extra.omega)
    assert len(set(omega1.tolist())) == 200 and omega1.max() < len(db_labels)
    assert not np.array_equal(omega1, omega2)
    s = np.asarray(db_labels)[omega1] @ np.asarray(db_labels).T > 0
    np.testing.assert_allclose(first.extra.ratio, s.sum() / (~s).sum(),
                               rtol=1e-6)


def test_asymmetric_and_symmetric_map_on_hand_built_codes():
    """The evaluators rank queries against V, and against encoded rows."""
    rng = np.random.default_rng(0)
    bits = (2, 4)
    nq, ndb = 5, 9
    table = rng.standard_normal((nq + ndb, sum(bits))).astype(np.float32)

    def dataset(rows):  # pixel [0,0] names the row of `table`
        images = np.zeros((len(rows), 2, 2, 1), np.uint8)
        images[:, 0, 0, 0] = rows
        return data.ArrayDataset(images, _labels(rng, len(rows)),
                                 np.asarray(rows, np.int64))

    query, database = dataset(range(nq)), dataset(range(nq, nq + ndb))
    train_split = dataset(range(nq, nq + 4))
    splits = data.Splits(query, train_split, database)
    codes = tuple(np.where(rng.random((4, b)) < 0.5, -1.0, 1.0)
                  for b in bits)
    def encode(params, rest, images):
        del params, rest
        return jnp.asarray(table)[images[:, 0, 0, 0]]

    maps = evaluation.evaluate_lengths(
        encode, {}, {}, splits, evaluation.CodeLayout(bits, nested=False),
        evaluators=('asymmetric', 'symmetric'), batch_size=4, learned=codes,
        learned_labels=train_split.labels)
    asym, sym = maps['asymmetric'], maps['symmetric']
    signs = np.where(table >= 0, 1, -1)
    for b, end, v in zip(bits, np.cumsum(bits), codes):
        q = signs[:nq, end - b:end]
        db = signs[nq:, end - b:end]
        assert asym[str(b)] == pytest.approx(_brute_force_map(
            q, query.labels, v, train_split.labels))
        assert asym[str(b)] == pytest.approx(retrieval.mean_average_precision(
            q, query.labels, v, train_split.labels))
        assert sym[str(b)] == pytest.approx(_brute_force_map(
            q, query.labels, db, database.labels))


def _brute_force_map(q, q_labels, db, db_labels):
    """AP over all items, stable ties by index, 0 for no relevant item."""
    aps = []
    for i in range(len(q)):
        dist = 0.5 * (q.shape[1] - db @ q[i])
        order = sorted(range(len(db)), key=lambda j: (dist[j], j))
        rel = [float(q_labels[i] @ db_labels[j] > 0) for j in order]
        hits = np.cumsum(rel)
        ranks = [r + 1 for r, x in enumerate(rel) if x]
        aps.append(np.mean([hits[r - 1] / r for r in ranks]) if ranks else 0)
    return float(np.mean(aps))


# --- the command line -----------------------------------------------------

_CLI_FLAGS = {'method': 'mah', 'dataset': 'digits', 'backbone': 'mlp',
              'head': 'flat', 'bits': (4, 8)}
_CLI_MAH = {'epochs': 1, 'outer_iterations': 2, 'num_samples': 128}


@pytest.fixture(scope='module')
def cli_run(tmp_path_factory):
    """One tiny CLI run (2 outer iterations), shared by the tests below."""
    workdir = tmp_path_factory.mktemp('mah') / 'run'
    flags = [f'--{k}={v}' for k, v in _CLI_FLAGS.items() if k != 'bits']
    flags += [f'--config.mah.{k}={v}' for k, v in _CLI_MAH.items()]
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'experiments', 'run.py'), *flags,
         '--bits=4,8', f'--workdir={workdir}'],
        check=False, cwd=ROOT, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_cli_run_writes_both_evaluations(cli_run):
    workdir, result = cli_run
    assert 'asymmetric' in result.stdout and 'symmetric' in result.stdout
    results = json.loads((workdir / 'results.json').read_text())
    assert (results['method'], results['head']) == ('mah', 'flat')
    assert results['evaluators'] == ['asymmetric', 'symmetric']
    for key in ('map', 'map_last', 'map_symmetric', 'map_symmetric_last'):
        assert set(results[key]) == {'4', '8'}
        assert all(0.0 < v <= 1.0 for v in results[key].values())
    assert results['num_database_codes'] == 1497
    assert results['epochs'] == {'4': 2, '8': 2}
    records = runlog.read_jsonl(str(workdir / 'metrics.jsonl'))
    assert [r['outer_iteration'] for r in records] == [1, 2]
    assert {'map', 'map_symmetric'} <= set(records[-1])


def _config(**mah):
    """A tiny MAH config on digits; ``mah`` overrides config.mah fields."""
    from nhl_jax.cli.configs import default
    config = default.get_config()
    config.method, config.head, config.dataset = 'mah', 'cascade', 'digits'
    config.backbone, config.bits = 'mlp', (4, 8)
    config.backbone_kwargs = {'hidden': (32,)}
    config.mah.update(epochs=1, outer_iterations=2, num_samples=64,
                      eval_every=2)
    config.mah.update(mah)
    return config


@pytest.mark.parametrize('fields, message', [
    ({'weights': (4.0, 2.0, 1.0)}, 'mah.weights has 3 entries but bits'),
    ({'num_samples': 5000}, 'exceeds the 1497 rows of the digits database'),
    ({'optimizer': 'rmsprop'}, "mah.optimizer must be one of ['adam', 'sgd']"),
    ({'v_split': 'query'}, 'mah.v_split must be one of'),
    ({'gamma': -1.0}, 'mah.gamma must be a number >= 0'),
    ({'epochs': 0}, 'mah.epochs must be a positive int'),
])
def test_bad_mah_config_fails_before_work(fields, message, tmp_path):
    from nhl_jax.errors import UsageError
    workdir = tmp_path / 'run'
    with pytest.raises(UsageError) as info:
        cli.train_and_evaluate(_config(**fields), str(workdir))
    assert message in str(info.value) and '\n' not in str(info.value)
    assert not workdir.exists()


def test_resume_continues_at_an_outer_iteration_exactly(cli_run, tmp_path):
    workdir, _ = cli_run
    whole = json.loads((workdir / 'results.json').read_text())
    cut = tmp_path / 'cut'
    shutil.copytree(workdir, cut)
    checkpoints = cut / 'checkpoints'
    last = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    shutil.rmtree(checkpoints / str(last))  # as if killed before that save
    config = _config()
    config.update(_CLI_FLAGS)
    config.backbone_kwargs = {}
    config.mah.update(_CLI_MAH, eval_every=4)
    resumed = cli.train_and_evaluate(config, str(cut), resume=True)
    assert resumed['params_sha256'] == whole['params_sha256']
    assert resumed['map'] == whole['map']
    records = runlog.read_jsonl(str(cut / 'metrics.jsonl'))
    assert [r['outer_iteration'] for r in records] == [1, 2]


def test_an_existing_run_is_refused_untouched(cli_run):
    from nhl_jax.cli.config import UsageError
    workdir, _ = cli_run
    before = (workdir / 'config.json').read_text()
    with pytest.raises(UsageError, match='already holds a run'):
        cli.train_and_evaluate(_config(), str(workdir))
    assert (workdir / 'config.json').read_text() == before


def test_benchmark_smoke():
    path = os.path.join(ROOT, 'benchmarks', 'mah_compare.py')
    spec = importlib.util.spec_from_file_location('mah_compare', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # One MAH system trained tiny (CI time); NHL's cells from a stub.
    text = module.main(['--smoke', '--systems=MAH cascade'])
    lines = text.strip().splitlines()
    assert lines[-3] == '| system | 4 bits | 8 bits | train s |'
    assert lines[-1].startswith('| MAH cascade | 0.') and ' / 0.' in lines[-1]
    nhl = {'method': 'dpn', 'map_last': {'4': 0.5, '8': 0.25},
           'map': {'4': 0.75, '8': 0.25}, 'train_seconds': 1.0}
    assert module.table({'NHL': nhl}, (4, 8)).splitlines()[-1] == (
        '| NHL | – / 0.500 (0.750) | – / 0.250 (0.250) | 1.0 |')
