"""Class-folder datasets: the scan, the seeded split, image_size, errors."""

import os

import numpy as np
import pytest

from nhl_jax import data
from nhl_jax.data import folder
from nhl_jax.errors import UsageError
from tests.support.folders import write_tree


def test_scan_sorts_classes_and_images_and_skips_the_rest(tmp_path):
    write_tree(tmp_path, {'b': 2, 'a': 3})
    write_tree(tmp_path, {'c': 2}, ext='.JPG')  # extensions in any case
    (tmp_path / 'a' / 'notes.txt').write_text('not an image')
    (tmp_path / 'a' / '.hidden.png').write_bytes(b'')
    (tmp_path / 'a' / 'nested').mkdir()
    (tmp_path / '.cache').mkdir()
    (tmp_path / 'train.txt').write_text('')  # make-lists' output beside
    tree = folder.scan(str(tmp_path))
    assert tree.classes == ['a', 'b', 'c']
    names = [os.path.relpath(p, tmp_path) for p in tree.paths]
    assert names == ['a/000.png', 'a/001.png', 'a/002.png', 'b/000.png',
                     'b/001.png', 'c/000.JPG', 'c/001.JPG']
    np.testing.assert_array_equal(tree.class_ids, [0, 0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize('options, sizes', [
    # per class n = 10, 25, 2: round(0.1 n) queries, at least 1, at most
    # n - 1; 2.5 rounds up.
    (data.DataOptions(), {'query': [1, 3, 1], 'train': [9, 22, 1],
                          'database': [9, 22, 1]}),
    (data.DataOptions(folder_query_fraction=0.5, folder_train_per_class=4),
     {'query': [5, 13, 1], 'train': [4, 4, 1], 'database': [5, 12, 1]}),
])
def test_split_sizes_per_class(options, sizes):
    class_ids = np.repeat([0, 1, 2], [10, 25, 2])
    rows = dict(zip(('query', 'train', 'database'),
                    folder.split(class_ids, 0, options)))
    for name, expected in sizes.items():
        np.testing.assert_array_equal(
            np.bincount(class_ids[rows[name]], minlength=3), expected)
    assert not set(rows['query']) & set(rows['database'])
    assert set(rows['train']) <= set(rows['database'])
    assert len(rows['query']) + len(rows['database']) == len(class_ids)


def test_split_is_seeded_and_shares_the_protocols_permutation():
    class_ids = np.repeat(np.arange(4), 20)
    a, b, c = (folder.split(class_ids, seed) for seed in (0, 0, 1))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    # 2 queries of 20 and 18 train: the protocol split of the same seed.
    protocol = data.Protocol(2, 18, train_in_database=True)
    for x, y in zip(a, data.split_by_class(class_ids, protocol, seed=0)):
        np.testing.assert_array_equal(x, y)


def test_folder_dataset_decodes_at_image_size(tmp_path):
    write_tree(tmp_path, {'x': 10, 'y': 10}, size=12)
    options = data.DataOptions(image_size=8)
    spec = data.get_spec('folder', str(tmp_path), options)
    assert spec.num_classes == 2 and spec.image_shape == (8, 8, 3)
    assert spec.top_k is None and 'mAP@all' in spec.description
    splits = data.load_splits('folder', seed=3, data_dir=str(tmp_path),
                              options=options)
    assert [len(ds.ids) for ds in splits] == [2, 18, 18]
    tree = folder.scan(str(tmp_path))
    for ds in splits:
        assert isinstance(ds, data.FileDataset)
        assert (ds.resize, ds.crop) == (9, 8)
        np.testing.assert_array_equal(ds.paths, tree.paths[ds.ids])
        np.testing.assert_array_equal(ds.labels.argmax(1),
                                      tree.class_ids[ds.ids])
    batch = next(data.eval_batches(splits.query, 2))
    assert batch['image'].shape == (2, 8, 8, 3)


def test_default_image_size_is_todays_224_crop(tmp_path):
    assert data.crop_sizes() == data.crop_sizes(224) == (256, 224)
    assert data.crop_sizes(32) == (37, 32) and data.crop_sizes(8) == (9, 8)
    write_tree(tmp_path, {'x': 2, 'y': 2})
    spec = data.get_spec('folder', str(tmp_path))
    assert spec.image_shape == (224, 224, 3)
    ds = spec.splits(0).train
    assert (ds.resize, ds.crop) == (256, 224)


def _one_class(root):
    write_tree(root, {'only': 3})


def _empty_class(root):
    write_tree(root, {'a': 3, 'b': 0})


def _single_image(root):
    write_tree(root, {'a': 3, 'b': 1})


@pytest.mark.parametrize('setup, message', [
    (_one_class, ("folder '<root>' has 1 class folder(s) ['only']; a "
                  'retrieval split needs at least 2 classes')),
    (_empty_class, "class folder '<root>/b' holds 0 image(s) (.bmp, .gif"),
    (_single_image, "class folder '<root>/b' holds 1 image(s)"),
    (lambda root: None, ("'<root>/none' is not a folder; "
                         '--dataset=folder reads <data_dir>/<class>/<image>.')),
])
def test_bad_folders_are_one_line(tmp_path, setup, message):
    setup(tmp_path)
    root = str(tmp_path if 'none' not in message else tmp_path / 'none')
    with pytest.raises(folder.FolderError) as error:
        data.load_splits('folder', data_dir=root)
    text = str(error.value)
    assert text.startswith(message.replace('<root>', str(tmp_path)))
    assert '\n' not in text and isinstance(error.value, UsageError)


@pytest.mark.parametrize('options, message', [
    (data.DataOptions(image_size=0), 'image_size must be a positive int'),
    (data.DataOptions(image_size=8.5), 'image_size must be a positive int'),
    (data.DataOptions(folder_query_fraction=1.0),
     'folder_query_fraction must be a number in (0, 1)'),
    (data.DataOptions(folder_train_per_class=True),
     'folder_train_per_class must be a positive int'),
])
def test_bad_options(tmp_path, options, message):
    write_tree(tmp_path, {'x': 2, 'y': 2})
    with pytest.raises(UsageError, match=message.replace('(', r'\(')
                       .replace(')', r'\)')):
        data.get_spec('folder', str(tmp_path), options)


def test_options_a_dataset_does_not_take_are_refused(tmp_path):
    with pytest.raises(UsageError, match=(
            "image_size does not apply to dataset 'digits': it sizes the "
            'images decoded from files')):
        data.get_spec('digits', options=data.DataOptions(image_size=8))
    with pytest.raises(UsageError, match=(
            "folder_train_per_class does not apply to dataset 'cifar10'")):
        data.get_spec('cifar10', str(tmp_path),
                      data.DataOptions(folder_train_per_class=5))
