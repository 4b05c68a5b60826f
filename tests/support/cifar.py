"""tfds.testing.mock_data for the CIFAR tests, with batched reads working.

Every read of CIFAR-10/100 in the tests runs under ``mock_cifar``, which
ignores data_dir: nothing may reach a real download (without network tfds
retries for minutes). Test modules import it after
``pytest.importorskip('tensorflow_datasets')``.
"""

import contextlib
import json
import os
from unittest import mock

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
