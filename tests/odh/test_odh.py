"""ODH: centres (STE), losses vs NumPy, augmentations, sampler, a CLI run."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nhl_jax import cli, runlog
from nhl_jax.cli.config import UsageError
from nhl_jax.cli.configs import default
from nhl_jax.data import augment
from nhl_jax.odh import centers, losses
from nhl_jax.odh import data as odh_data
from tests.support import ROOT

B, C, K, G = 8, 3, 8, 4  # batch, classes, bits, groups of n_positive = 2


# --- NumPy references, from ODH (ACM MM'24) and hly1998/OSH -------------


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_hash_proxy(h, p, y, tau):
    """HashProxy.forward: F.normalize both, linear / tau, soft-label CE."""
    h = h / np.linalg.norm(h, axis=1, keepdims=True)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    loss = 0.0
    for i in range(h.shape[0]):
        loss += -(y[i] * _np_log_softmax(h[i] @ p.T / tau)).sum()
    return loss / h.shape[0]


def _np_hash_distill(xs, xt, push, n):
    """HashDistill.forward with the given a ~ U[1, 2) instead of numpy's."""
    total = 0.0
    for k in range(xs.shape[0] // n):
        s, t = xs[n * k:n * (k + 1)], xt[n * k:n * (k + 1)]
        mean = np.concatenate([s, t]).mean(0)
        a = push[k][:, None]
        new = np.concatenate([a[:n] * s + (1 - a[:n]) * mean,
                              a[n:] * t + (1 - a[n:]) * mean])
        new = new / np.linalg.norm(new, axis=1, keepdims=True)
        cos = new @ new.T
        i, j = np.triu_indices(2 * n, k=1)
        total += cos[i, j].mean()
    return -total / (xs.shape[0] // n)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    h = np.tanh(rng.standard_normal((B, K))).astype(np.float32)
    y = np.eye(C, dtype=np.float32)[rng.integers(0, C, B)]
    y[0, (y[0].argmax() + 1) % C] = 1.0  # one multi-hot row
    table = np.where(rng.random((C, K)) < 0.5, -1.0, 1.0).astype(np.float32)
    return h, y, table


# --- centres -----------------------------------------------------------------


class TestCenters:

    def test_sign_ste_forward_and_identity_gradient(self):
        x = jnp.array([-1.5, -0.1, 0.0, 0.2, 3.0])
        np.testing.assert_array_equal(centers.sign_ste(x),
                                      [-1, -1, 1, 1, 1])
        w = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])
        grad = jax.jit(jax.grad(lambda v: jnp.sum(w * centers.sign_ste(v))))
        np.testing.assert_array_equal(grad(x), w)

    def test_centres_pass_the_gradient_through_the_sigmoid(self):
        z = jnp.asarray(np.random.default_rng(0).standard_normal((C, K)),
                        jnp.float32)
        grad = jax.grad(lambda v: jnp.sum(centers.centers_from_logits(v)))(z)
        s = 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))
        np.testing.assert_allclose(grad, s * (1 - s), rtol=1e-5)

    @pytest.mark.parametrize('name', sorted(centers.CENTERS))
    def test_tables_are_signs_of_every_length(self, name):
        module = centers.make_centers(name, 16, (4, 8), num_classes=C,
                                      rngs=nnx.Rngs(0))
        w = jax.random.normal(jax.random.key(1), (C, 16))
        tables = module(w)
        assert [t.shape for t in tables] == [(C, 4), (C, 8)]
        for t in tables:
            assert set(np.unique(np.asarray(t)).tolist()) <= {-1.0, 1.0}
        if name == 'prefix':
            np.testing.assert_array_equal(tables[0], tables[1][:, :4])
        if name == 'hadamard':  # fixed: no parameters, W ignored
            assert not jax.tree.leaves(nnx.state(module, nnx.Param))
            again = module(2.0 * w)
            np.testing.assert_array_equal(tables[1], again[1])

    def test_unknown_centres_list_the_names(self):
        with pytest.raises(ValueError, match="Unknown centres 'csq'"):
            centers.make_centers('csq', 4, (4,), num_classes=C,
                                 rngs=nnx.Rngs(0))


# --- losses ------------------------------------------------------------------


class TestLosses:

    def test_hash_center_loss_matches_numpy(self):
        h, y, table = _inputs()
        fn = jax.jit(lambda *a: losses.hash_center_loss(*a, temperature=0.2))
        np.testing.assert_allclose(
            fn(h, table, y), _np_hash_proxy(h, table, y, 0.2), rtol=1e-5)
        eager = losses.hash_center_loss(h, table, y, temperature=0.2)
        np.testing.assert_allclose(fn(h, table, y), eager, rtol=1e-6)

    def test_classification_loss_matches_numpy(self):
        rng = np.random.default_rng(1)
        logits = rng.standard_normal((B, C)).astype(np.float32)
        _, y, _ = _inputs()
        ref = np.mean([-(y[i] * _np_log_softmax(logits[i])).sum()
                       for i in range(B)])
        np.testing.assert_allclose(
            jax.jit(losses.classification_loss)(logits, y), ref, rtol=1e-5)

    def test_aggregation_distill_matches_numpy(self):
        rng = np.random.default_rng(2)
        xs, xt = (np.tanh(rng.standard_normal((B, K))).astype(np.float32)
                  for _ in range(2))
        push = np.asarray(losses.sample_push(jax.random.key(0), G))
        assert push.shape == (G, 4) and push.min() >= 1 and push.max() < 2
        fn = jax.jit(losses.aggregation_distill_loss)
        np.testing.assert_allclose(fn(xs, xt, push),
                                   _np_hash_distill(xs, xt, push, 2),
                                   rtol=1e-5)

    def test_weak_codes_get_no_gradient_and_strong_ones_finite(self):
        rng = np.random.default_rng(3)
        xs, xt = (jnp.asarray(rng.standard_normal((B, K)), jnp.float32)
                  for _ in range(2))
        push = losses.sample_push(jax.random.key(1), G)
        gs, gt = jax.grad(losses.aggregation_distill_loss, argnums=(0, 1))(
            xs, xt, push)
        assert np.all(np.asarray(gt) == 0)
        assert np.all(np.isfinite(gs)) and np.abs(gs).sum() > 0

    def test_identical_group_codes_give_minus_one_without_push(self):
        row = jnp.ones((1, K))
        codes = jnp.tile(row, (B, 1))
        value = losses.aggregation_distill_loss(codes, codes,
                                                jnp.ones((G, 4)))
        np.testing.assert_allclose(value, -1.0, rtol=1e-6)

    def test_bad_group_size_is_refused(self):
        with pytest.raises(ValueError, match='groups of n_positive=3'):
            losses.aggregation_distill_loss(jnp.ones((B, K)),
                                            jnp.ones((B, K)),
                                            jnp.ones((2, 6)), n_positive=3)


# --- augmentations -----------------------------------------------------------


class TestAugment:

    def test_strength_zero_is_the_identity(self):
        x = jax.random.uniform(jax.random.key(0), (3, 12, 10, 3))
        out = jax.jit(augment.augment)(jax.random.key(1), x, strength=0.0)
        np.testing.assert_allclose(out, x, atol=1e-5)

    @pytest.mark.parametrize('channels', [1, 3])
    def test_views_are_random_valid_and_keyed(self, channels):
        x = jax.random.uniform(jax.random.key(0), (4, 16, 16, channels))
        fn = jax.jit(augment.augment)
        a, b = fn(jax.random.key(1), x), fn(jax.random.key(2), x)
        assert a.shape == x.shape and float(a.min()) >= 0.0
        assert float(a.max()) <= 1.0
        assert not np.allclose(a, b)
        np.testing.assert_array_equal(a, fn(jax.random.key(1), x))

    def test_blur_and_crop_keep_a_constant_image(self):
        x = jnp.full((9, 9, 1), 0.3)
        u = jnp.array([0.0, 0.3, 0.9, 0.5, 0.2])  # apply, then parameters
        blurred = augment.gaussian_blur(u[:2], x, size=5, prob=1.0)
        np.testing.assert_allclose(blurred, x, rtol=1e-6)
        cropped = augment.random_resized_crop(u, x, prob=1.0)
        np.testing.assert_allclose(cropped, x, rtol=1e-6)

    def test_crop_box_lies_inside_the_image(self):
        for u in np.random.default_rng(0).random((20, 4)):
            y0, x0, h, w = (float(v) for v in augment.crop_box(
                jnp.asarray(u), 10, 7, (0.08, 1.0), (0.75, 4 / 3)))
            assert y0 >= 0 and y0 + h <= 10 + 1e-5 and h >= 1
            assert x0 >= 0 and x0 + w <= 7 + 1e-5 and w >= 1

    def test_crop_box_resamples_its_region(self):
        x = np.random.default_rng(0).random((8, 6, 2)).astype(np.float32)
        y0, x0, h, w = 2.0, 1.5, 4.0, 3.0
        out = np.asarray(augment.resize_box(jnp.asarray(x), y0, x0, h, w))
        for i in range(8):  # half-pixel centres, clamped bilinear
            py = min(max(y0 + (i + 0.5) * h / 8 - 0.5, 0.0), 7.0)
            for j in range(6):
                px = min(max(x0 + (j + 0.5) * w / 6 - 0.5, 0.0), 5.0)
                r, c = int(np.floor(py)), int(np.floor(px))
                r1, c1 = min(r + 1, 7), min(c + 1, 5)
                fy, fx = py - r, px - c
                ref = ((1 - fy) * (1 - fx) * x[r, c] + (1 - fy) * fx
                       * x[r, c1] + fy * (1 - fx) * x[r1, c]
                       + fy * fx * x[r1, c1])
                np.testing.assert_allclose(out[i, j], ref, rtol=1e-5)


# --- stage-2 sampler ---------------------------------------------------------


class TestSampler:

    def test_groups_share_a_class_and_are_distinct(self):
        class_ids = np.repeat(np.arange(3), [5, 7, 4])
        rows = odh_data.positive_groups(class_ids, 4, seed=0, epoch=1)
        assert rows.shape == (4, 8)
        groups = rows.reshape(-1, 2)
        assert np.all(class_ids[groups[:, 0]] == class_ids[groups[:, 1]])
        assert np.all(groups[:, 0] != groups[:, 1])
        # Every anchor's class appears as often as the class has rows.
        counts = np.bincount(class_ids[groups[:, 0]], minlength=3)
        assert counts.sum() == 16

    def test_seeded_by_seed_and_epoch(self):
        class_ids = np.repeat(np.arange(4), 10)
        draw = lambda s, e: odh_data.positive_groups(
            class_ids, 8, seed=s, epoch=e)
        np.testing.assert_array_equal(draw(0, 3), draw(0, 3))
        assert not np.array_equal(draw(0, 3), draw(0, 4))
        assert not np.array_equal(draw(0, 3), draw(1, 3))

    def test_small_class_is_refused(self):
        with pytest.raises(ValueError, match='fewer than n_positive=2'):
            odh_data.positive_groups(np.array([0, 0, 1]), 1, seed=0, epoch=0)


# --- configuration and a run ------------------------------------------------


def _config(**odh):
    config = default.get_config()
    config.method = 'odh'
    config.dataset = 'digits'
    config.backbone = 'mlp'
    config.bits = (8, 16)
    for k, v in odh.items():
        config.odh[k] = v
    return config


@pytest.mark.parametrize('field, value, message', [
    ('centers', 'csq', "Unknown odh.centers 'csq'"),
    ('n_positive', 3, 'does not split into groups of odh.n_positive=3'),
    ('temperature', 0.0, 'odh.temperature must be > 0'),
    ('crop_scale', (0.0, 1.0), 'odh.crop_scale must be'),
    ('classifier_backbone', 'vgg', "Unknown odh.classifier_backbone 'vgg'"),
    ('transition_epoch', -1, 'odh.transition_epoch must be an int >= 0'),
])
def test_bad_odh_config_fails_before_any_work(tmp_path, field, value,
                                              message):
    workdir = tmp_path / 'run'
    with pytest.raises(UsageError, match=message):
        cli.train_and_evaluate(_config(**{field: value}), str(workdir))
    assert not workdir.exists()


def _run(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, 'experiments', 'run.py'),
         '--method=odh', '--dataset=digits', '--backbone=mlp', '--bits=8,16',
         '--config.batch_size=100', '--config.eval_every=1',
         '--config.odh.warmup_epochs=1', '--config.odh.transition_epoch=1',
         *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        check=False)


@pytest.fixture(scope='module')
def cli_run(tmp_path_factory):
    """One tiny CLI run: 1 warm-up, 1 exploration, 1 aggregation epoch."""
    workdir = tmp_path_factory.mktemp('odh') / 'run'
    return _run('--epochs=2', f'--workdir={workdir}'), workdir


def test_cli_run_switches_stage_at_the_configured_epoch(cli_run):
    first, workdir = cli_run
    assert first.returncode == 0, first.stderr
    records = runlog.read_jsonl(str(workdir / 'metrics.jsonl'))
    assert [r['stage'] for r in records] == [
        'warmup', 'exploration', 'aggregation']
    # The switch: main epoch transition_epoch + 1 is the first of stage 2.
    assert records[2]['main_epoch'] == 2
    assert all(np.isfinite(r['loss']) for r in records)
    assert records[2]['asd']['16'] != 0.0 and records[1]['asd']['16'] == 0.0
    # Learned centres move (bits flip) once the hash loss trains them.
    assert sum(records[1]['center_flips'].values()) > 0
    with open(workdir / 'results.json') as f:
        results = json.load(f)
    assert set(results['map']) == {'8', '16'}
    assert all(0.0 < v <= 1.0 for v in results['map'].values())


@pytest.mark.slow
def test_cli_resume_continues_the_run(cli_run):
    first, workdir = cli_run
    assert first.returncode == 0, first.stderr
    again = _run('--epochs=3', '--resume', f'--workdir={workdir}')
    assert again.returncode == 0, again.stderr
    stages = [r['stage'] for r in
              runlog.read_jsonl(str(workdir / 'metrics.jsonl'))]
    assert stages == ['warmup', 'exploration', 'aggregation', 'aggregation']


# --- benchmarks/odh_table.py -------------------------------------------------


def _benchmark():
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    try:
        import odh_table  # pylint: disable=import-outside-toplevel
    finally:
        sys.path.pop(0)
    return odh_table


def test_benchmark_table_format():
    bench = _benchmark()
    size = bench.packed.ModelBytes(deployed=1000, float32=9000,
                                   binary_weights=2000, float_values=200)
    row = {'backbone': 'bnn_cnn', 'variant': 'odh', 'size': size,
           'float_s': 1e-4, 'packed_s': 2e-4,
           'result': {'map': {'8': 0.5}, 'map_last': {'8': 0.4},
                      'train_seconds': 1.0}}
    lines = bench.table([row], (8,)).splitlines()
    assert lines[0].startswith('| backbone | variant | 8 bits |')
    assert lines[2] == ('| bnn_cnn | odh | 0.500 (0.400) | 1,000 | 9,000 | '
                        '0.100 | 0.200 | 1.0 |')


@pytest.mark.slow
def test_benchmark_smoke_prints_the_table(capsys):
    rows = _benchmark().main(['--smoke'])
    assert [r['variant'] for r in rows] == ['odh', 'csq']
    for r in rows:  # the binary layers are packed to 1 bit when deployed
        assert 0 < r['size'].deployed < r['size'].float32
        assert r['float_s'] > 0 and r['packed_s'] > 0
    assert '| bnn_cnn | odh |' in capsys.readouterr().out
