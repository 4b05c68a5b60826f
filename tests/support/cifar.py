"""tfds.testing.mock_data for the CIFAR tests, with batched reads working.

Every read of CIFAR-10/100 in the tests runs under ``mock_cifar``, which
ignores data_dir: nothing may reach a real download (without network tfds
retries for minutes). Test modules import it after
``pytest.importorskip('tensorflow_datasets')``. ``shuffled_source`` stands
in for a copy stored shuffled, as tfds stores CIFAR-10; ``shuffled_rows``
are its rows in the original file order.
"""

import contextlib
import json
import os
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets import testing as tfds_testing
from tensorflow_datasets.testing import mocking


def _mock_getitems(*args, generator, serialized=False):
    # tfds 4.9.10's mock sets __getitems__ as a plain attribute, so no
    # `self` is bound and every batched read raises TypeError.
    del serialized
    return [generator[k] for k in args[-1]]


@contextlib.contextmanager
def mock_cifar(**kwargs):
    """tfds.testing.mock_data with batched reads working."""
    with (mock.patch.object(mocking, '_getitems', _mock_getitems),
          tfds_testing.mock_data(**kwargs)):
        yield


def write_info(data_dir, name: str = 'cifar10', **info) -> None:
    """The ``<name>/<version>/dataset_info.json`` marker that the loaders
    check before calling tfds (``mock_cifar`` reads no file)."""
    version = str(tfds.builder_cls(name).VERSION)
    path = os.path.join(data_dir, name, version)
    os.makedirs(path)
    with open(os.path.join(path, 'dataset_info.json'), 'w') as f:
        json.dump({'name': name, 'version': version, **info}, f)


class ShuffledSource:
    """A split stored shuffled, as tfds stores CIFAR-10.

    The record of file row r has id '<split>_<r:05d>', every pixel equal to
    the row's global index mod 256 and class (3 * index) % 10.
    """

    def __init__(self, split, size, offset):
        self.split, self.offset = split, offset
        self.rows = np.random.default_rng(size).permutation(size)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = int(self.rows[i])
        index = self.offset + row
        return {'id': f'{self.split}_{row:05d}'.encode(),
                'image': np.full((32, 32, 3), index % 256, np.uint8),
                'label': 3 * index % 10}

    def __getitems__(self, keys):
        return [self[k] for k in keys]


def shuffled_source(builder, split, **kwargs):
    """A ``mock_cifar(as_data_source_fn=...)`` of 23 train, 9 test rows."""
    del builder, kwargs
    return {'train': ShuffledSource('train', 23, 0),
            'test': ShuffledSource('test', 9, 23)}[split]


def shuffled_rows():
    """``shuffled_source``'s rows in file order: (images, class_ids).

    Returns:
      (images [32, 32, 32, 3] uint8, class_ids [32] int64): the 23 train
      rows, then the 9 test rows.
    """
    index = np.arange(32)
    images = np.empty((32, 32, 32, 3), np.uint8)
    images[:] = (index % 256)[:, None, None, None]
    return images, 3 * index % 10
