"""CIFAR-10/100 from the python version or tfds, split by the protocols.

Nothing is downloaded: ``data_dir`` must already hold one of

- the python-version archive of the CIFAR page, ``cifar-10-python.tar.gz``
  (or ``--data_dir`` naming it), or the folder it extracts to,
  ``cifar-10-batches-py`` (torchvision downloads the same); read with
  NumPy and a restricted unpickler (``cifar_archive``), no TensorFlow;
- a tfds ArrayRecord copy (``<data_dir>/cifar10/<version>/``). Preparing
  it needs TensorFlow and internet (tfds encodes the images with
  ``tf.image``), so do it once elsewhere, e.g.::

      pip install tensorflow tensorflow-datasets
      tfds build cifar10 --data_dir=DIR --file_format=array_record

  then copy ``DIR/cifar10`` over; reading needs only tensorflow-datasets
  and pillow (or opencv-python-headless, which decodes faster).

``load_cifar10`` tells them apart by their content; both give the same
rows in the same order. CIFAR-100 (ODH's protocol) is the same with
``cifar-100-python.tar.gz``, ``cifar-100-python`` or ``cifar100``, read by
``load_cifar100``::

    splits = load_cifar10_splits('cifar10-1', data_dir, seed=0)
    splits.query.images  # [1000, 32, 32, 3] uint8
"""

import functools
import os

import numpy as np

from nhl_jax.data import cifar_archive, datasets
from nhl_jax.errors import UsageError

_NAME = 'cifar10'
_SPLITS = ('train', 'test')  # 50,000 then 10,000
_NUM_CLASSES = 10
_PER_CLASS = 6000
# Records per read: faster than one record at a time (benchmarks/
# RESULTS.md); 256 to 1,024 perform the same.
_CHUNK = 1024
_TITLES = {name: layout.title
           for name, layout in cifar_archive.LAYOUTS.items()}


def _prepare(name: str = _NAME) -> str:
    return (
        'prepare it where TensorFlow and internet are available with `pip '
        f'install tensorflow tensorflow-datasets && tfds build {name} '
        f'--data_dir=DIR --file_format=array_record`, then copy DIR/{name} '
        'into data_dir'
    )

# The NHL / DPSH protocols; sizes assume CIFAR-10's 6,000 images per class.
CIFAR10_PROTOCOLS = {
    # NHL: 1,000 query / 5,000 train / 54,000 database (train excluded).
    'cifar10': datasets.Protocol(100, 500, train_in_database=False),
    # DeepHash-pytorch default: 1,000 / 5,000 (from the database) / 59,000.
    'cifar10-1': datasets.Protocol(100, 500, train_in_database=True),
    # 10,000 / 50,000 / 50,000: the database is everything but the queries,
    # which is exactly the training set when a class has 1,000 + 5,000.
    'cifar10-2': datasets.Protocol(1000, 5000, train_in_database=True),
}


def get_protocol(name: str) -> datasets.Protocol:
    """The ``Protocol`` of a CIFAR-10 split name.

    Raises:
      ValueError: for an unknown name (the message lists the valid ones).
    """
    if name not in CIFAR10_PROTOCOLS:
        raise ValueError(
            f'Unknown CIFAR-10 protocol {name!r}; choose one of '
            f'{sorted(CIFAR10_PROTOCOLS)}.'
        )
    return CIFAR10_PROTOCOLS[name]


def load_cifar10(data_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """All 60,000 CIFAR-10 images, from the python version or tfds.

    Rows are the training batches (rows 0..49,999) then the test batch
    (50,000..59,999), in the order of the original batch files: the python
    version's ``data_batch_1`` .. ``data_batch_5``, ``test_batch``, or
    tfds's 'train' then 'test' split put back in that order (tfds stores
    the examples shuffled) by sorting on its 'id' ('train_00042' is row
    42). A row is the same image either way, and as in torchvision's and
    DeepHash-pytorch's train + test concatenation. Cached for the last
    data_dir, since reading is slow (tfds decodes 60,000 PNGs; opencv
    faster than pillow; benchmarks/RESULTS.md); the arrays are read-only.

    Args:
      data_dir: ``cifar-10-python.tar.gz``, the folder it extracts to
        (``cifar-10-batches-py``), a folder holding either, or the tfds
        data directory holding ``cifar10/<version>/``.

    Returns:
      (images [60000, 32, 32, 3] uint8, class_ids [60000] int64).

    Raises:
      UsageError: at once (nothing is downloaded) if none of them is
        there (naming what was looked for), or for a truncated archive or
        a batch file that holds anything else.
      ValueError: a tfds copy of another version, or without random
        access.
      ImportError: reading a tfds copy without tensorflow-datasets.
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
    return _load_cifar10(path)


@functools.lru_cache(maxsize=1)
def _load_cifar10(data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    return _load(_NAME, data_dir)


def _load(name: str, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """Train then test rows of CIFAR ``name``, whichever copy is there."""
    archive = cifar_archive.find(name, data_dir)
    if archive is not None:
        parts = cifar_archive.read(name, archive)
    elif os.path.isdir(os.path.join(data_dir, name)):
        parts = _load_tfds(name, data_dir)
    else:
        raise UsageError(
            f'{_TITLES[name]} is not prepared in data_dir={data_dir!r}: '
            f'looked for {cifar_archive.describe(name)} and a tfds copy '
            f'{name}/<version>/; download the python version from '
            f'{cifar_archive.URL} or {_prepare(name)}.')
    # pylint: disable-next=protected-access
    read_only = datasets._read_only
    return tuple(read_only(part) for part in parts)


def _load_tfds(name: str, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """Train then test rows of tfds ``name``, in the original file order."""
    tfds = _import_tfds()
    _check_prepared(tfds, data_dir, name)
    parts = [_read_split(_source(tfds, data_dir, split, name))
             for split in _SPLITS]
    images, class_ids = (np.concatenate(p) for p in zip(*parts))
    return images, class_ids


def _import_tfds():
    # Imported here: tfds is an optional extra and only CIFAR-10 needs it.
    try:
        # pylint: disable-next=import-outside-toplevel
        import tensorflow_datasets as tfds
    except ModuleNotFoundError as e:
        raise ImportError(
            'load_cifar10 reads a prepared tfds copy of CIFAR-10; pip install '
            'tensorflow-datasets pillow (TensorFlow itself is not needed).'
        ) from e
    return tfds


def _check_prepared(tfds, data_dir: str, name: str = _NAME) -> None:
    # Checked before tfds runs: a missing dataset must never reach a
    # download, which retries for minutes without network.
    version = str(tfds.builder_cls(name).VERSION)
    info = os.path.join(data_dir, name, version, 'dataset_info.json')
    if not os.path.isfile(info):
        raise ValueError(
            f'{_TITLES[name]} {version} is not prepared in '
            f'data_dir={data_dir!r} (no {info}); {_prepare(name)}.'
        )


def _source(tfds, data_dir: str, split: str, name: str = _NAME):
    """The random-access tfds source of one split (never downloads)."""
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir,
                                download=False, try_gcs=False)
    except NotImplementedError as e:  # e.g. prepared by tfds.load: TFRecord
        raise ValueError(
            f'{_TITLES[name]} in data_dir={data_dir!r} is not stored as '
            f'array_record, which random access needs; {_prepare(name)}.'
        ) from e


def _read_split(source) -> tuple[np.ndarray, np.ndarray]:
    """A tfds split -> (images [n, 32, 32, 3] uint8, class_ids [n] int64).

    Rows are sorted by the records' 'id' (the original file order).
    """
    n = len(source)
    images = np.empty((n, 32, 32, 3), np.uint8)
    class_ids = np.empty(n, np.int64)
    keys = []
    for start in range(0, n, _CHUNK):
        rows = range(start, min(start + _CHUNK, n))
        records = source.__getitems__(rows)  # one batched read per chunk
        images[rows.start:rows.stop] = [r['image'] for r in records]
        class_ids[rows.start:rows.stop] = [r['label'] for r in records]
        keys.extend(r['id'] for r in records)
    # 'id' is zero-padded ('train_00042'), so string order is file order.
    order = np.argsort(np.asarray(keys), kind='stable')
    return images[order], class_ids[order]


def make_spec(name: str, data_dir: str | os.PathLike) -> datasets.DatasetSpec:
    """A ``DatasetSpec`` for one CIFAR-10 protocol read from ``data_dir``.

    Nothing is read until ``spec.load()`` is called.

    Args:
      name: a key of ``CIFAR10_PROTOCOLS``.
      data_dir: see ``load_cifar10``.
    """
    protocol = get_protocol(name)
    c, q, t = _NUM_CLASSES, protocol.query_per_class, protocol.train_per_class
    kept = t if protocol.train_in_database else 0
    where = 'in' if protocol.train_in_database else 'not in'
    return datasets.DatasetSpec(
        load=functools.partial(load_cifar10, data_dir),
        num_classes=_NUM_CLASSES,
        protocol=protocol,
        backbone='resnet50',
        top_k=None,
        description=f'CIFAR-10, 32x32 RGB: {c * q:,} query / '
        f'{c * t:,} train ({where} the database) / '
        f'{c * (_PER_CLASS - q - t + kept):,} database, mAP@all',
    )


def load_cifar10_splits(name: str, data_dir: str | os.PathLike,
                        seed: int = 0) -> datasets.Splits:
    """Loads CIFAR-10 and splits it by the protocol ``name``.

    Args:
      name: a key of ``CIFAR10_PROTOCOLS``.
      data_dir: see ``load_cifar10``.
      seed: seed of the per-class permutation (see ``split_by_class``).

    Returns:
      ``Splits`` with one-hot float32 labels [N, 10] and, as ids, rows of
      ``load_cifar10``'s arrays.
    """
    return datasets.splits_from_spec(make_spec(name, data_dir), name, seed)


# --- CIFAR-100 (ODH's protocol, ACM MM 2024) ----------------------------------

# 600 images per class (500 train + 100 test); per class 50 query and 100
# train, the database is the rest including the train images:
# 5,000 / 10,000 / 55,000, mAP@500.
CIFAR100_PROTOCOLS = {
    'cifar100': datasets.Protocol(50, 100, train_in_database=True),
}
CIFAR100_TOP_K = 500


def load_cifar100(data_dir: str | os.PathLike) -> tuple[np.ndarray,
                                                         np.ndarray]:
    """All 60,000 CIFAR-100 images (fine labels), python version or tfds.

    As ``load_cifar10``: rows are the train rows then the test rows, in
    the original file order (the python version's ``train`` then ``test``,
    or tfds's splits sorted by 'id'); cached for the last data_dir;
    read-only. ``data_dir``: ``cifar-100-python.tar.gz``, the folder it
    extracts to (``cifar-100-python``), a folder holding either, or a tfds
    copy (``tfds build cifar100 --data_dir=DIR
    --file_format=array_record``).

    Returns:
      (images [60000, 32, 32, 3] uint8, class_ids [60000] int64 in 0..99).
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
    return _load_cifar100(path)


@functools.lru_cache(maxsize=1)
def _load_cifar100(data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    return _load('cifar100', data_dir)


def make_cifar100_spec(name: str,
                       data_dir: str | os.PathLike) -> datasets.DatasetSpec:
    """A ``DatasetSpec`` for a CIFAR-100 protocol (nothing read yet).

    Args:
      name: a key of ``CIFAR100_PROTOCOLS``.
      data_dir: see ``load_cifar100``.
    """
    if name not in CIFAR100_PROTOCOLS:
        raise ValueError(
            f'Unknown CIFAR-100 protocol {name!r}; choose one of '
            f'{sorted(CIFAR100_PROTOCOLS)}.'
        )
    protocol = CIFAR100_PROTOCOLS[name]
    q, t = protocol.query_per_class, protocol.train_per_class
    return datasets.DatasetSpec(
        load=functools.partial(load_cifar100, data_dir),
        num_classes=100,
        protocol=protocol,
        backbone='resnet18',
        top_k=CIFAR100_TOP_K,
        description=f'CIFAR-100, 32x32 RGB: {100 * q:,} query / '
        f'{100 * t:,} train (in the database) / {100 * (600 - q):,} '
        f'database, mAP@{CIFAR100_TOP_K}',
    )
