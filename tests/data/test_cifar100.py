"""CIFAR-100 (ODH's protocol) offline, under tfds.testing.mock_data.

As tests/data/test_cifar.py: every read runs under ``mock_data`` (which ignores
data_dir); the tests only write the ``cifar100/<version>/`` marker that
``load_cifar100`` checks before calling tfds, so nothing is downloaded.
"""


import numpy as np
import pytest

from nhl_jax import data
from nhl_jax.data import cifar

tfds = pytest.importorskip('tensorflow_datasets')
from tests.support.cifar import (  # noqa: E402 (needs tfds)
    mock_cifar,
    write_info,
)


@pytest.fixture
def data_dir(tmp_path):
    write_info(tmp_path, 'cifar100', fileFormat='array_record')
    cifar._load_cifar100.cache_clear()  # pylint: disable=protected-access
    yield str(tmp_path)
    cifar._load_cifar100.cache_clear()  # pylint: disable=protected-access


def test_load_reads_both_splits_with_fine_labels(data_dir):
    with mock_cifar(num_examples=30):
        images, class_ids = cifar.load_cifar100(data_dir)
    assert images.shape == (60, 32, 32, 3) and images.dtype == np.uint8
    assert class_ids.dtype == np.int64 and class_ids.max() < 100
    assert not images.flags.writeable


def test_odh_protocol_sizes():
    # 600 images per class in a shuffled order: 5,000 / 10,000 / 55,000.
    class_ids = np.random.default_rng(0).permutation(
        np.repeat(np.arange(100), 600))
    rows = data.split_by_class(class_ids, cifar.CIFAR100_PROTOCOLS['cifar100'],
                               seed=0)
    assert tuple(r.size for r in rows) == (5000, 10000, 55000)
    query, train, database = (set(r.tolist()) for r in rows)
    assert train <= database and not query & database
    spec = data.get_spec('cifar100', '/unused')
    assert spec.top_k == 500 and spec.num_classes == 100
    assert '5,000 query / 10,000 train' in spec.description
    assert '55,000 database, mAP@500' in spec.description


def test_splits_on_a_tiny_stand_in(data_dir, monkeypatch):
    monkeypatch.setitem(cifar.CIFAR100_PROTOCOLS, 'cifar100',
                        data.Protocol(1, 1, train_in_database=True))
    with mock_cifar(num_examples=400):
        images, class_ids = cifar.load_cifar100(data_dir)
        splits = data.load_splits('cifar100', seed=0, data_dir=data_dir)
    present = np.unique(class_ids).size
    assert len(splits.query.ids) == len(splits.train.ids) == present
    assert len(splits.database.ids) == 800 - present
    for ds in splits:
        assert ds.labels.shape[1] == 100
        np.testing.assert_array_equal(ds.images, images[ds.ids])


def test_missing_copy_names_the_build_command(tmp_path):
    cifar._load_cifar100.cache_clear()  # pylint: disable=protected-access
    with pytest.raises(ValueError, match='tfds build cifar100'):
        cifar.load_cifar100(tmp_path)


def test_unknown_protocol_lists_names():
    with pytest.raises(ValueError, match=r"\['cifar100'\]"):
        cifar.make_cifar100_spec('cifar-100', '/unused')
