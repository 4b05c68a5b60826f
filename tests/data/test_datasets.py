"""Offline datasets, split protocols and the grain batch pipelines."""

import os
import time

import numpy as np
import pytest

from nhl_jax import data

SIZES = {'mnist5k': (1000, 2000, 4000), 'digits': (300, 1000, 1497)}


@pytest.fixture(scope='module', params=sorted(SIZES))
def named_splits(request):
    return request.param, data.load_splits(request.param, seed=0)


def toy_dataset(n=23, num_classes=3):
    """n images [n, 2, 2, 1] whose pixels all equal their row number."""
    rows = np.arange(n)
    return data.ArrayDataset(
        images=np.repeat(rows.astype(np.uint8), 4).reshape(n, 2, 2, 1),
        labels=data.one_hot(rows % num_classes, num_classes),
        ids=rows.astype(np.int64) + 100,
    )


# --- splits -----------------------------------------------------------------


def test_protocol_sizes(named_splits):
    name, splits = named_splits
    assert tuple(len(ds.ids) for ds in splits) == SIZES[name]
    q, t, db = (set(ds.ids.tolist()) for ds in splits)
    assert t <= db  # cifar10-1 style: train is drawn from the database
    assert not q & db
    assert len(q | db) == len(data.get_spec(name).load()[1])
    for ds in splits:
        assert np.all(np.diff(ds.ids) > 0)


def test_class_balance(named_splits):
    name, splits = named_splits
    spec = data.get_spec(name)
    per_class = np.bincount(spec.load()[1], minlength=spec.num_classes)
    q, t = spec.protocol.query_per_class, spec.protocol.train_per_class
    np.testing.assert_array_equal(splits.query.labels.sum(0), q)
    np.testing.assert_array_equal(splits.train.labels.sum(0), t)
    np.testing.assert_array_equal(
        splits.database.labels.sum(0), per_class - q)


def test_split_rows_match_source(named_splits):
    name, splits = named_splits
    images, class_ids = data.get_spec(name).load()
    for field, ds in zip(data.Splits._fields, splits):
        data.check_dataset(ds, field)
        np.testing.assert_array_equal(ds.images, images[ds.ids])
        np.testing.assert_array_equal(ds.labels.argmax(1), class_ids[ds.ids])


def test_split_is_seeded():
    a = data.load_splits('mnist5k', seed=0)
    b = data.load_splits('mnist5k', seed=0)
    c = data.load_splits('mnist5k', seed=1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.ids, y.ids)
    assert data.split_digest(a) == data.split_digest(b)
    assert not np.array_equal(a.query.ids, c.query.ids)
    assert not np.array_equal(a.train.ids, c.train.ids)
    assert data.split_digest(a) != data.split_digest(c)


@pytest.mark.parametrize('in_db', [True, False])
def test_split_by_class_protocol(in_db):
    class_ids = np.repeat(np.arange(4), 10)[::-1].copy()
    q, t, db = data.split_by_class(class_ids, data.Protocol(2, 3, in_db), 7)
    assert (q.size, t.size, db.size) == (8, 12, 32 if in_db else 20)
    assert set(t) <= set(db) if in_db else not set(t) & set(db)
    assert not set(q) & set(db) and not set(q) & set(t)
    assert np.all(np.bincount(class_ids[t]) == 3)


def test_split_by_class_errors():
    class_ids = np.repeat(np.arange(3), [10, 10, 4])
    with pytest.raises(ValueError, match='class 2 has 4 samples'):
        data.split_by_class(class_ids, data.Protocol(2, 3, True), 0)
    with pytest.raises(ValueError, match='database empty'):
        data.split_by_class(
            np.repeat(np.arange(3), 4), data.Protocol(1, 3, False), 0)
    with pytest.raises(ValueError, match='positive ints'):
        data.split_by_class(class_ids, data.Protocol(0, 3, True), 0)
    with pytest.raises(ValueError, match='seed'):
        data.split_by_class(class_ids, data.Protocol(1, 1, True), None)
    with pytest.raises(ValueError, match='class_ids must be ints'):
        data.split_by_class(class_ids * 1.0, data.Protocol(1, 1, True), 0)


def test_export_split_ids_round_trip(tmp_path):
    splits = data.load_splits('digits', seed=3)
    path = tmp_path / 'split.npz'
    data.export_split_ids(splits, path)
    data.export_split_ids(splits, path)  # overwrites in place
    ids = data.load_split_ids(path)
    assert sorted(ids) == sorted(data.Splits._fields)
    for field, ds in zip(data.Splits._fields, splits):
        np.testing.assert_array_equal(ids[field], ds.ids)
        assert ids[field].dtype == np.int64
    assert os.listdir(tmp_path) == ['split.npz']  # no temporary file left


# --- loaders ----------------------------------------------------------------


def test_mnist5k_loader():
    data.load_mnist5k.cache_clear()
    start = time.perf_counter()
    images, class_ids = data.load_mnist5k()
    assert time.perf_counter() - start < 2.0
    assert images.shape == (5000, 28, 28, 1) and images.dtype == np.uint8
    assert class_ids.shape == (5000,) and class_ids.dtype == np.int64
    assert images.min() == 0 and images.max() == 255
    # The bundled CSV is sorted by label with exactly 500 of each digit.
    np.testing.assert_array_equal(np.bincount(class_ids), [500] * 10)
    assert np.all(np.diff(class_ids) >= 0)
    assert not images.flags.writeable and not class_ids.flags.writeable
    assert data.load_mnist5k()[0] is images  # cached


def test_digits_loader():
    from sklearn import datasets  # pylint: disable=import-outside-toplevel

    images, class_ids = data.load_digits()
    bunch = datasets.load_digits()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(
        images[..., 0], np.round(bunch.images * 255 / 16))
    np.testing.assert_array_equal(class_ids, bunch.target)
    assert images.min() == 0 and images.max() == 255
    assert not images.flags.writeable


def test_registry():
    assert data.get_spec('mnist5k').backbone == 'cnn'
    assert data.get_spec('digits').backbone == 'mlp'
    with pytest.raises(ValueError, match=r"'cifar'.*'cifar10-1'.*'digits'"):
        data.get_spec('cifar')
    with pytest.raises(ValueError, match='Unknown dataset'):
        data.load_splits('cifar')
    with pytest.raises(ValueError, match=r"'coco' is read from files: pass "
                                         r'--data_dir'):
        data.get_spec('coco')
    with pytest.raises(ValueError, match=r"/data/train.txt' does not exist"):
        data.get_spec('coco', '/data')
    assert data.get_spec('cifar10', '/data').protocol.train_in_database is False


# --- check_dataset ----------------------------------------------------------


def _replace(ds, **fields):
    return ds._replace(**fields)


BAD_DATASETS = {
    'float images': (
        lambda ds: _replace(ds, images=ds.images.astype(np.float32)),
        'images must be uint8'),
    'rank-3 images': (
        lambda ds: _replace(ds, images=ds.images[..., 0]), 'channel axis'),
    'int labels': (
        lambda ds: _replace(ds, labels=ds.labels.astype(np.int32)),
        'labels must be float32'),
    'soft labels': (
        lambda ds: _replace(ds, labels=ds.labels * 0.5),
        'only 0 and 1'),
    'row without label': (
        lambda ds: _replace(ds, labels=ds.labels * (np.arange(23) != 5)[
            :, None].astype(np.float32)),
        r'1 rows without any label \(first: row 5\)'),
    'int32 ids': (
        lambda ds: _replace(ds, ids=ds.ids.astype(np.int32)),
        'ids must be int64'),
    'length mismatch': (
        lambda ds: _replace(ds, ids=ds.ids[:-1]),
        '23 images, 23 label rows and 22 ids'),
    'empty': (lambda ds: data.ArrayDataset(*(x[:0] for x in ds)), 'empty'),
}


@pytest.mark.parametrize('case', sorted(BAD_DATASETS))
def test_check_dataset_errors(case):
    corrupt, message = BAD_DATASETS[case]
    ds = toy_dataset()
    assert data.check_dataset(ds) is ds
    with pytest.raises(ValueError, match=message):
        data.check_dataset(corrupt(ds), 'toy')


# --- pipelines --------------------------------------------------------------


def _indices(batches):
    return np.concatenate([b['index'] for b in batches])


def test_train_batches_cover_epoch_once():
    ds = toy_dataset()
    batches = list(data.train_batches(
        ds, 5, seed=0, epoch=0, drop_remainder=False))
    assert len(batches) == data.steps_per_epoch(23, 5, False) == 5
    np.testing.assert_array_equal(np.sort(_indices(batches)), np.arange(23))
    assert [len(b['index']) for b in batches] == [5, 5, 5, 5, 3]


def test_train_batches_shapes_and_content():
    ds = data.load_splits('mnist5k').train
    batches = list(data.train_batches(ds, 64, seed=1, epoch=2))
    assert len(batches) == data.steps_per_epoch(2000, 64) == 31
    for b in batches:
        assert b['image'].shape == (64, 28, 28, 1)
        assert b['image'].dtype == np.uint8
        assert b['label'].shape == (64, 10)
        assert b['label'].dtype == np.float32
        assert b['index'].shape == (64,) and b['index'].dtype == np.int32
        np.testing.assert_array_equal(b['image'], ds.images[b['index']])
        np.testing.assert_array_equal(b['label'], ds.labels[b['index']])
    assert np.unique(_indices(batches)).size == 31 * 64


def test_train_order_depends_on_seed_and_epoch_only():
    def order(seed, epoch):
        return _indices(data.train_batches(
            toy_dataset(), 4, seed=seed, epoch=epoch))

    np.testing.assert_array_equal(order(0, 3), order(0, 3))
    assert not np.array_equal(order(0, 3), order(0, 4))
    assert not np.array_equal(order(0, 3), order(1, 3))
    assert data.epoch_seed(0, 3) == data.epoch_seed(0, 3)
    assert 0 <= data.epoch_seed(2**40, 10**6) < 2**32
    with pytest.raises(ValueError, match='epoch must be a non-negative'):
        data.epoch_seed(0, -1)


def test_eval_batches_cover_rows_in_order():
    ds = toy_dataset()
    batches = list(data.eval_batches(ds, 10))
    assert [b['valid'] for b in batches] == [10, 10, 3]
    for b in batches:
        assert b['image'].shape == (10, 2, 2, 1)
        assert b['label'].shape == (10, 3) and b['index'].shape == (10,)
    last = batches[-1]
    np.testing.assert_array_equal(last['index'][3:], 22)  # padding
    kept = np.concatenate([b['image'][:b['valid']] for b in batches])
    np.testing.assert_array_equal(kept, ds.images)
    np.testing.assert_array_equal(
        np.concatenate([b['index'][:b['valid']] for b in batches]),
        np.arange(23))


def test_pipeline_errors():
    ds = toy_dataset()
    with pytest.raises(ValueError, match='lower batch_size or pass '
                       'drop_remainder=False'):
        data.train_batches(ds, 24, seed=0, epoch=0)
    assert len(list(data.train_batches(
        ds, 24, seed=0, epoch=0, drop_remainder=False))) == 1
    with pytest.raises(ValueError, match='batch_size must be a positive'):
        data.eval_batches(ds, 0)
    with pytest.raises(ValueError, match='images must be uint8'):
        data.train_batches(ds._replace(images=ds.images * 1.0), 4, seed=0,
                           epoch=0)
