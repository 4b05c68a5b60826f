"""CIFAR-10/100 from python-version archives written in the real format.

The archives and folders are made by ``tests.support.cifar_archive`` (the
real files' pickle opcodes, keys and layout, a few rows per batch file);
the tfds comparisons run under tfds's mock data, as tests/data/test_cifar.py.
"""

import os
import sys

import numpy as np
import pytest

from nhl_jax import data
from nhl_jax.data import cifar
from nhl_jax.errors import UsageError
from tests.support import cifar_archive as writer


@pytest.fixture(autouse=True)
def _fresh_cache():
    """The loaders cache the last data_dir; every test reads its own."""
    # pylint: disable-next=protected-access
    caches = (cifar._load_cifar10, cifar._load_cifar100)
    for cache in caches:
        cache.cache_clear()
    yield
    for cache in caches:
        cache.cache_clear()


@pytest.fixture
def cifar10(tmp_path):
    """(images, class_ids, extracted folder, archive) of 40 rows, 4 a class."""
    images, _ = writer.random_rows(40)
    class_ids = np.arange(40) % 10
    folder = writer.write_folder(tmp_path, 'cifar10', images, class_ids, 30)
    return images, class_ids, folder, writer.write_archive(folder)


def test_every_form_of_data_dir_gives_the_same_rows(cifar10, tmp_path):
    images, class_ids, folder, archive = cifar10
    alone = tmp_path / 'only'
    alone.mkdir()
    os.rename(archive, alone / os.path.basename(archive))
    forms = (alone / os.path.basename(archive), alone, folder, tmp_path)
    for data_dir in forms:
        cifar._load_cifar10.cache_clear()  # pylint: disable=protected-access
        got_images, got_ids = cifar.load_cifar10(data_dir)
        np.testing.assert_array_equal(got_images, images)
        np.testing.assert_array_equal(got_ids, class_ids)
        assert got_images.dtype == np.uint8 and got_ids.dtype == np.int64
        assert not got_images.flags.writeable


def test_rows_are_red_green_blue_planes_row_major(tmp_path):
    """The format's definition: 1,024 red values (32 rows of 32), then
    green, then blue; written here without the test writer's transpose."""
    row = (np.arange(3072) % 251).astype(np.uint8)
    folder = tmp_path / writer.CIFAR10['folder']
    folder.mkdir()
    for file in (*writer.CIFAR10['train'], writer.CIFAR10['test']):
        entry = {b'batch_label': file.encode(), b'labels': [7],
                 b'data': row[None], b'filenames': [b'x.png']}
        (folder / file).write_bytes(writer.dumps(entry))
    images, class_ids = cifar.load_cifar10(folder)
    assert images.shape == (6, 32, 32, 3) and set(class_ids) == {7}
    y, x = 5, 17
    for channel in range(3):
        assert images[0, y, x, channel] == row[channel * 1024 + y * 32 + x]


def test_cifar100_takes_the_fine_label(tmp_path):
    images, fine = writer.random_rows(12, num_classes=100)
    folder = writer.write_folder(tmp_path, 'cifar100', images, fine, 9)
    archive = writer.write_archive(folder)
    got_images, got_ids = cifar.load_cifar100(archive)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_ids, fine)  # not coarse = fine // 5


def test_no_tensorflow_is_imported(cifar10, monkeypatch):
    """An import of either would fail (sys.modules entry None)."""
    for name in ('tensorflow', 'tensorflow_datasets'):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(cifar.CIFAR10_PROTOCOLS, 'cifar10-1',
                        data.Protocol(1, 2, train_in_database=True))
    splits = data.load_splits('cifar10-1', seed=0, data_dir=cifar10[3])
    assert [len(ds.ids) for ds in splits] == [10, 20, 30]
    assert sys.modules['tensorflow'] is None


def test_same_rows_and_split_ids_as_the_tfds_copy(tmp_path, monkeypatch):
    """tfds stores the rows shuffled (``shuffled_source``); both paths
    give them in file order, hence the same split ids."""
    pytest.importorskip('tensorflow_datasets')
    from tests.support.cifar import (
        mock_cifar,
        shuffled_rows,
        shuffled_source,
        write_info,
    )
    images, class_ids = shuffled_rows()
    folder = writer.write_folder(tmp_path / 'py', 'cifar10', images,
                                 class_ids, 23)
    archive = writer.write_archive(folder)
    write_info(tmp_path / 'tfds', fileFormat='array_record')
    monkeypatch.setitem(cifar.CIFAR10_PROTOCOLS, 'cifar10',
                        data.Protocol(1, 1, train_in_database=False))
    with mock_cifar(as_data_source_fn=shuffled_source):
        by_tfds = cifar.load_cifar10_splits('cifar10', tmp_path / 'tfds')
    by_archive = cifar.load_cifar10_splits('cifar10', archive)
    assert data.split_digest(by_tfds) == data.split_digest(by_archive)
    for a, b in zip(by_tfds, by_archive):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_mock_data_rows_read_back_from_an_archive(tmp_path):
    """tfds's random mock images, written as an archive, read back equal."""
    pytest.importorskip('tensorflow_datasets')
    from tests.support.cifar import mock_cifar, write_info
    write_info(tmp_path / 'tfds', fileFormat='array_record')
    with mock_cifar(num_examples=6):
        images, class_ids = cifar.load_cifar10(tmp_path / 'tfds')
    folder = writer.write_folder(tmp_path, 'cifar10', images, class_ids, 6)
    got = cifar.load_cifar10(writer.write_archive(folder))
    np.testing.assert_array_equal(got[0], images)
    np.testing.assert_array_equal(got[1], class_ids)


# --- bad input: one line, nothing unpickled but arrays --------------------


def _spoil(folder, file, raw):
    with open(os.path.join(folder, file), 'wb') as f:
        f.write(raw)


def _truncate(path):
    with open(path, 'rb') as f:
        raw = f.read()
    with open(path, 'wb') as f:
        f.write(raw[:len(raw) // 2])


def _archive_without_test_batch(folder, archive):
    os.remove(os.path.join(folder, 'test_batch'))
    writer.write_archive(folder, archive)


def _ok_batch(change):
    """A two-row batch file with the entries of ``change`` replaced."""
    entry = writer.batch(np.zeros((2, 32, 32, 3), np.uint8), [1, 2])
    entry.update(change)
    return writer.dumps(entry)


# (id, spoil(folder, archive, tmp), read the archive?, start of the message)
BAD = [
    ('truncated_archive', lambda f, a, t: _truncate(a), True,
     "'<archive>' cannot be read as the CIFAR-10 python-version archive ("),
    ('archive_lacks_a_batch', lambda f, a, t: _archive_without_test_batch(
        f, a), True,
     ("archive '<archive>' lacks cifar-10-batches-py/test_batch: it is "
      'truncated or not cifar-10-python.tar.gz')),
    ('folder_lacks_a_batch',
     lambda f, a, t: os.remove(os.path.join(f, 'data_batch_4')), False,
     "CIFAR-10 folder '<folder>' lacks data_batch_4"),
    ('foreign_global', lambda f, a, t: _spoil(
        f, 'data_batch_2', b"cos\nsystem\n(S'touch " + str(t).encode()
        + b"/owned'\ntR."), False,
     ('<folder>/data_batch_2 holds os.system, which a CIFAR-10 batch file '
      'never does; it was not unpickled')),
    ('object_array', lambda f, a, t: _spoil(f, 'test_batch', _ok_batch(
        {b'data': np.array([1, 'x'], dtype=object)})), False,
     "<folder>/test_batch holds a numpy dtype 'O8'"),
    ('not_a_pickle', lambda f, a, t: _spoil(f, 'data_batch_1', b'text\n'),
     False, '<folder>/data_batch_1 cannot be read as a CIFAR-10 batch file ('),
    ('truncated_pickle', lambda f, a, t: _truncate(
        os.path.join(f, 'data_batch_1')), False,
     '<folder>/data_batch_1 cannot be read as a CIFAR-10 batch file ('),
    ('a_list', lambda f, a, t: _spoil(f, 'data_batch_1', writer.dumps([1])),
     False, '<folder>/data_batch_1 holds a list, not the dict'),
    ('no_labels', lambda f, a, t: _spoil(f, 'data_batch_1', writer.dumps(
        {b'data': np.zeros((1, 3072), np.uint8)})), False,
     '<folder>/data_batch_1 has no labels'),
    ('data_shape', lambda f, a, t: _spoil(f, 'data_batch_1', _ok_batch(
        {b'data': np.zeros((2, 100), np.uint8)})), False,
     ("<folder>/data_batch_1: 'data' must be uint8 [n, 3072], got uint8 "
      '(2, 100)')),
    ('label_range', lambda f, a, t: _spoil(f, 'data_batch_1', _ok_batch(
        {b'labels': [1, 10]})), False,
     "<folder>/data_batch_1: 'labels' must be 2 ints in [0, 10)"),
]


@pytest.mark.parametrize('spoil, from_archive, message',
                         [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_bad_archives_and_batches_are_one_line(cifar10, tmp_path, spoil,
                                               from_archive, message):
    _, _, folder, archive = cifar10
    spoil(folder, archive, tmp_path)
    message = message.replace('<archive>', archive).replace('<folder>',
                                                            folder)
    with pytest.raises(UsageError) as error:
        cifar.load_cifar10(archive if from_archive else folder)
    text = str(error.value)
    assert text.startswith(message) and '\n' not in text, text
    assert not (tmp_path / 'owned').exists()


def test_nothing_there_names_what_was_looked_for(tmp_path):
    with pytest.raises(UsageError) as error:
        cifar.load_cifar100(tmp_path)
    text = str(error.value)
    assert text.startswith(
        f"CIFAR-100 is not prepared in data_dir='{tmp_path}': looked for "
        'the archive cifar-100-python.tar.gz (or --data_dir naming it), its '
        'extracted folder cifar-100-python/ (train, test) and a tfds copy '
        'cifar100/<version>/; download the python version from'), text
    assert '\n' not in text
