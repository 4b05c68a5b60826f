"""CIFAR-10 loading and protocols, offline under tfds.testing.mock_data.

Nothing here may reach a real download: without network tfds retries for
~200 s. Every read of CIFAR-10 runs under ``mock_data``, which ignores
data_dir; the tests only create the ``cifar10/<version>/`` marker that
``load_cifar10`` checks before calling tfds.
"""

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from nhl_jax import data
from nhl_jax.data import cifar
from tests.support import ROOT

tfds = pytest.importorskip('tensorflow_datasets')
from tests.support.cifar import (  # noqa: E402 (needs tfds)
    mock_cifar,
    shuffled_source,
    write_info,
)

SIZES = {
    'cifar10': (1000, 5000, 54000),
    'cifar10-1': (1000, 5000, 59000),
    'cifar10-2': (10000, 50000, 50000),
}


@pytest.fixture
def data_dir(tmp_path):
    """A data_dir that passes load_cifar10's check (mock_data reads none)."""
    write_info(tmp_path, fileFormat='array_record')
    cifar._load_cifar10.cache_clear()  # pylint: disable=protected-access
    yield str(tmp_path)
    cifar._load_cifar10.cache_clear()  # pylint: disable=protected-access


# --- loading ----------------------------------------------------------------


def test_load_dtypes_and_shapes(data_dir):
    # mock_data gives every split num_examples records, the same in each.
    with mock_cifar(num_examples=40):
        images, class_ids = cifar.load_cifar10(data_dir)
    assert images.shape == (80, 32, 32, 3) and images.dtype == np.uint8
    assert class_ids.shape == (80,) and class_ids.dtype == np.int64
    assert class_ids.min() >= 0 and class_ids.max() < 10
    assert not images.flags.writeable and not class_ids.flags.writeable
    np.testing.assert_array_equal(images[:40], images[40:])


def test_chunked_read_matches_record_reads(data_dir, monkeypatch):
    monkeypatch.setattr(cifar, '_CHUNK', 7)  # several chunks, a short last
    with mock_cifar(num_examples=30):
        source = tfds.data_source('cifar10', split='train',
                                  data_dir=data_dir, download=False)
        records = sorted((source[i] for i in range(30)),
                         key=lambda r: r['id'])
        images, class_ids = cifar.load_cifar10(data_dir)
    np.testing.assert_array_equal(images[:30],
                                  [r['image'] for r in records])
    np.testing.assert_array_equal(class_ids[:30],
                                  [r['label'] for r in records])


def test_rows_follow_cifar_file_order(data_dir):
    with mock_cifar(as_data_source_fn=shuffled_source):
        images, class_ids = cifar.load_cifar10(data_dir)
    index = np.arange(32)  # train rows 0..22, then test rows 0..8
    np.testing.assert_array_equal(images[:, 0, 0, 0], index)
    np.testing.assert_array_equal(images.max((1, 2, 3)), index)
    np.testing.assert_array_equal(class_ids, 3 * index % 10)


def test_load_is_cached(data_dir):
    with mock_cifar(num_examples=8):
        first = cifar.load_cifar10(data_dir)
        again = cifar.load_cifar10(os.path.join(data_dir, '.'))
    assert first[0] is again[0] and first[1] is again[1]


# --- fails fast, never downloads --------------------------------------------


def _assert_fast_error(data_dir, match):
    cifar._load_cifar10.cache_clear()  # pylint: disable=protected-access
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match) as info:
        cifar.load_cifar10(data_dir)
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    assert '\n' not in message
    assert 'tfds build cifar10' in message and '--file_format=array_record' \
        in message
    return message


def test_missing_data_dir_fails_fast(tmp_path):
    missing = os.path.join(tmp_path, 'nowhere')
    message = _assert_fast_error(missing, 'not prepared in data_dir=')
    assert missing in message


def test_empty_data_dir_fails_fast(tmp_path):
    _assert_fast_error(tmp_path, 'not prepared in data_dir=')


def test_tfrecord_copy_fails_fast(tmp_path):
    # What tfds.load (with TensorFlow) prepares: no random access.
    write_info(tmp_path, fileFormat='tfrecord')
    _assert_fast_error(tmp_path, 'not stored as array_record')


# --- protocols --------------------------------------------------------------


@pytest.mark.parametrize('name', sorted(SIZES))
def test_paper_protocol_sizes(name):
    # CIFAR-10's 6,000 images per class, in a shuffled order.
    rng = np.random.default_rng(0)
    class_ids = rng.permutation(np.repeat(np.arange(10), 6000))
    protocol = cifar.get_protocol(name)
    rows = data.split_by_class(class_ids, protocol, seed=0)
    assert tuple(r.size for r in rows) == SIZES[name]
    query, train, database = (set(r.tolist()) for r in rows)
    assert not query & (train | database)
    assert len(query | train | database) == 60000
    if name == 'cifar10':
        assert not train & database
    else:
        assert train <= database
    if name == 'cifar10-2':
        assert train == database
    for r in rows:
        np.testing.assert_array_equal(np.bincount(class_ids[r]), r.size // 10)
    numbers = re.findall(r'[\d,]+(?= (?:query|train|database))',
                         cifar.make_spec(name, '/unused').description)
    assert [int(n.replace(',', '')) for n in numbers] == list(SIZES[name])


@pytest.fixture(params=sorted(SIZES))
def tiny_protocol(request, monkeypatch):
    """A paper protocol shrunk to fit the mock data (>= 10 per class)."""
    protocol = cifar.get_protocol(request.param)._replace(
        query_per_class=2, train_per_class=3)
    monkeypatch.setitem(cifar.CIFAR10_PROTOCOLS, request.param, protocol)
    return request.param, protocol


def test_splits_by_protocol(data_dir, tiny_protocol):
    name, protocol = tiny_protocol
    with mock_cifar(num_examples=100):
        splits = cifar.load_cifar10_splits(name, data_dir, seed=0)
        images, class_ids = cifar.load_cifar10(data_dir)
    kept = 30 if protocol.train_in_database else 0
    sizes = tuple(len(ds.ids) for ds in splits)
    assert sizes == (20, 30, 200 - 20 - 30 + kept)
    for field, ds in zip(data.Splits._fields, splits):
        data.check_dataset(ds, field)
        assert ds.labels.shape == (len(ds.ids), 10)
        np.testing.assert_array_equal(ds.images, images[ds.ids])
        np.testing.assert_array_equal(ds.labels.argmax(1), class_ids[ds.ids])


def test_splits_are_seeded(data_dir, tiny_protocol):
    name, _ = tiny_protocol
    with mock_cifar(num_examples=100):
        a, b, c = (cifar.load_cifar10_splits(name, data_dir, seed=s)
                   for s in (0, 0, 1))
    assert data.split_digest(a) == data.split_digest(b)
    assert data.split_digest(a) != data.split_digest(c)


def test_make_spec():
    spec = cifar.make_spec('cifar10-1', '/data/tfds')
    assert spec.num_classes == 10 and spec.top_k is None
    assert spec.protocol == cifar.CIFAR10_PROTOCOLS['cifar10-1']
    assert spec.backbone == 'resnet50'
    assert spec.load.args == ('/data/tfds',)  # nothing read yet


def test_unknown_protocol_lists_names():
    with pytest.raises(ValueError, match=r"'cifar10', 'cifar10-1'"):
        cifar.make_spec('cifar-10', '/unused')


# --- export CLI -------------------------------------------------------------


def test_export_splits_cli(tmp_path):
    out = os.path.join(tmp_path, 'digits.npz')
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'experiments', 'export_splits.py'),
         '--dataset=digits', '--seed=0', f'--out={out}'],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        check=False)
    assert result.returncode == 0, result.stderr
    splits = data.load_splits('digits', seed=0)
    assert f'digest {data.split_digest(splits)}' in result.stdout
    assert re.search(r'database\s+1497\n', result.stdout)
    ids = data.load_split_ids(out)
    for field, ds in zip(data.Splits._fields, splits):
        np.testing.assert_array_equal(ids[field], ds.ids)
