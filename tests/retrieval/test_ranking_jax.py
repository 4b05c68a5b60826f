"""The JAX backend of the retrieval metrics equals the NumPy one (on CPU)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax import retrieval
from nhl_jax.retrieval import hamming, metrics, ranking, ranking_jax
from nhl_jax.retrieval._inputs import Plan
from tests.support import ROOT, lowering

WORKER = os.path.join(ROOT, 'tests', 'support', 'ranking_worker.py')

# 8-bit codes: 9 distances for 160 items, so nearly every rank is a tie;
# Q is odd, so no chunk size divides it.
NUM_QUERIES, NUM_ITEMS, NUM_BITS, NUM_CLASSES = 41, 160, 8, 4

FULL = dict(map_at=(None, 1, 10, 159, 500), precision_at=(1, 7, None),
            recall_at=(3, None), radius=(0, 2, NUM_BITS + 1), pr_curve=True)
# Cutoffs at most N / 2: lax.top_k instead of the full sort.
TOP = dict(map_at=(5, 80), precision_at=(80,), recall_at=(5,))


def random_codes(rng, count, num_bits):
    return rng.choice(np.array([-1, 1], np.int8), size=(count, num_bits))


def make_data(seed, multi_label, num_bits=NUM_BITS):
    rng = np.random.default_rng(seed)
    if multi_label:
        q_labels = rng.random((NUM_QUERIES, NUM_CLASSES)) < 0.3
        db_labels = rng.random((NUM_ITEMS, NUM_CLASSES)) < 0.2
    else:
        classes = np.eye(NUM_CLASSES)
        q_labels = classes[rng.integers(0, NUM_CLASSES, NUM_QUERIES)]
        db_labels = classes[rng.integers(0, NUM_CLASSES, NUM_ITEMS)]
    q_codes = random_codes(rng, NUM_QUERIES, num_bits)
    q_codes[-4:], q_labels[-4:] = q_codes[:4], q_labels[:4]  # repeats
    return q_codes, q_labels, random_codes(rng, NUM_ITEMS, num_bits), db_labels


@pytest.fixture(scope='module', params=['multi_label', 'single_label'])
def data(request):
    return make_data(0, request.param == 'multi_label')


def assert_same(got, want):
    """Counts exactly; AP up to the order of its float64 sums."""
    assert set(got) == set(want)
    for name, value in want.items():
        if name.startswith('map@'):
            np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-12,
                                       err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)


@pytest.mark.parametrize('options', [FULL, TOP], ids=['full', 'top'])
@pytest.mark.parametrize('ties', ['stable', 'random', 'expected'])
def test_metrics_equal_the_numpy_path(data, options, ties):
    for zero_relevant in ('zero', 'skip'):
        policy = dict(ties=ties, seed=5, zero_relevant=zero_relevant)
        want = metrics.retrieval_metrics(*data, **options, **policy,
                                         backend='numpy')
        got = metrics.retrieval_metrics(*data, **options, **policy,
                                        backend='jax', chunk_size=16)
        assert_same(got, want)


@pytest.mark.parametrize('ties', ['stable', 'random', 'expected'])
def test_average_precisions_equal_the_numpy_path(data, ties):
    for top_k in (None, 10):
        want = retrieval.average_precisions(*data, top_k=top_k, ties=ties,
                                            seed=1, backend='numpy')
        got = retrieval.average_precisions(*data, top_k=top_k, ties=ties,
                                           seed=1, backend='jax')
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_chunking_does_not_change_the_result(data):
    want = metrics.retrieval_metrics(*data, **TOP, backend='jax')
    for chunk_size in (1, 7):
        got = metrics.retrieval_metrics(*data, **TOP, backend='jax',
                                        chunk_size=chunk_size)
        assert_same(got, want)


@pytest.mark.parametrize('num_bits', [70, 300])
def test_wide_codes_equal_the_numpy_path(num_bits):
    # 70 bits span three 32-bit words, 300 bits ten.
    data = make_data(num_bits, True, num_bits)
    options = dict(map_at=(None, 7), precision_at=(7,), radius=(150,))
    assert_same(metrics.retrieval_metrics(*data, **options, backend='jax'),
                metrics.retrieval_metrics(*data, **options,
                                          backend='numpy'))


def test_keys_wider_than_32_bits_rank_like_int32_ones(monkeypatch):
    # Real data needs N near 2^24 for them (then a two-operand sort, not
    # int64 keys); force the layout, on a shape (12 bits) that no other
    # test compiles.
    data = make_data(3, True, 12)
    want = metrics.retrieval_metrics(*data, **TOP, backend='numpy')
    monkeypatch.setattr(hamming, 'key_layout',
                        lambda *_, **__: (40, np.dtype(np.int64)))
    assert_same(metrics.retrieval_metrics(*data, **TOP, backend='jax'), want)


def test_jax_inputs_on_device_are_accepted(data):
    want = retrieval.mean_average_precision(*data, top_k=10, backend='numpy')
    got = retrieval.mean_average_precision(*map(jnp.asarray, data), top_k=10,
                                           backend='jax')
    assert got == pytest.approx(want, abs=1e-12)


def test_auto_ranks_with_jax_only_on_accelerators(monkeypatch):
    assert ranking.resolve_backend('numpy') == 'numpy'
    assert ranking.resolve_backend('auto') == (
        'jax' if jax.default_backend() in ('gpu', 'tpu') else 'numpy')
    for platform, backend in (('gpu', 'jax'), ('tpu', 'jax'),
                              ('cpu', 'numpy')):
        monkeypatch.setattr(jax, 'default_backend', lambda p=platform: p)
        assert ranking.resolve_backend('auto') == backend


def chunk_operands(num_items, multi_label):
    q_side, db_side = (
        (jax.ShapeDtypeStruct((16, 4), jnp.float32),
         jax.ShapeDtypeStruct((4, num_items), jnp.float32)) if multi_label
        else (jax.ShapeDtypeStruct((16,), jnp.uint8),
              jax.ShapeDtypeStruct((num_items,), jnp.uint8)))
    return (jax.ShapeDtypeStruct((16, 2), jnp.uint32), q_side,
            jax.ShapeDtypeStruct((num_items, 2), jnp.uint32), db_side)


@pytest.mark.parametrize('plan, expected, multi_label, num_items', [
    (Plan((10,), (5,), radii=True, relevant=True), False, True, 160),
    (Plan((160,)), False, False, 160),  # the full sort
    (Plan((10, 160), (7,), radii=True), True, True, 160),
    (Plan((10,)), False, False, 1 << 29),  # keys wider than 32 bits
], ids=['top_k', 'sort', 'expected', 'two_keys'])
def test_chunks_lower_for_tpu_without_64_bit_arrays(plan, expected,
                                                    multi_label, num_items):
    config = ranking_jax._Config(64, num_items, plan, expected)
    module = lowering.tpu_module(ranking_jax._chunk_stats,
                                 *chunk_operands(num_items, multi_label),
                                 config=config)
    assert 'ui32' in module  # the module's array types were read
    assert lowering.wide_types(module) == set()


def test_default_chunk_size_is_a_bounded_power_of_two():
    for queries, items in ((1, 10), (3, 10), (1000, 54_000),
                           (10_000, 1_000_000), (5, 1 << 26)):
        size = ranking_jax.default_chunk_size(queries, items)
        assert size & (size - 1) == 0  # a power of two
        assert size * items <= max(ranking_jax.PAIRS_PER_CHUNK, items)
        assert size < 2 * queries


def test_four_devices_rank_like_one(tmp_path):
    # Issue 32: each chunk's queries split over the devices, the integers
    # (so AP too) those of one device.
    out = tmp_path / 'ranks.npz'
    done = subprocess.run([sys.executable, WORKER, '4', str(out)],
                          check=False, timeout=300, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as f:
        results = {k: f[k] for k in f.files if k != 'spread'}
        assert set(f['spread'].tolist()) == {1, 4}  # one, then all four
    ones = sorted(k for k in results if k.startswith('one/'))
    assert len(ones) == 10  # 5 metrics, 2 tie policies
    for key in ones:
        np.testing.assert_array_equal(results['all/' + key[4:]],
                                      results[key], err_msg=key)


@pytest.mark.parametrize('devices', [[], 'cpu', [None], 'twice'])
def test_bad_devices_are_one_line_errors(data, devices):
    if devices == 'twice':
        devices = jax.local_devices() * 2
    with pytest.raises(ValueError, match='devices must be a non-empty list'):
        metrics.retrieval_metrics(*data, backend='jax', devices=devices)
