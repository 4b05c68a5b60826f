"""Every dataset by name: offline ones, CIFAR-10 protocols, list-file sets.

    splits = load_splits('mnist5k', seed=0)
    splits = load_splits('cifar10-1', data_dir='~/cifar-10-python.tar.gz')
    splits = load_splits('coco', data_dir='/data/coco')  # the list files' root
"""

import functools
import os

from nhl_jax.data import cifar, datasets, files, listfile

# List-file datasets (DeepHash-pytorch format): classes and mAP@K.
_LIST_DATASETS = {
    'imagenet100': (100, 1000, 'ImageNet100'),
    'coco': (80, 5000, 'MS-COCO'),
    'nuswide_21': (21, 5000, 'NUS-WIDE, 21 concepts'),
    'nuswide_21_m': (21, 5000, 'NUS-WIDE, 21 concepts (m)'),
    'nuswide_81_m': (81, 5000, 'NUS-WIDE, 81 concepts (m)'),
    'mirflickr': (38, None, 'MIRFlickr-25K'),
    'voc2012': (20, None, 'PASCAL VOC 2012'),
}


def _list_splits(root: str, num_classes: int, seed: int, *,
                 resize: int = 256, crop: int = 224) -> datasets.Splits:
    del seed  # the list files fix the splits
    parts = listfile.read_list_splits(root, num_classes=num_classes)
    listfile.check_images(parts)  # now, not mid-epoch
    return datasets.Splits(**{
        name: files.from_list_split(parts[name], resize=resize, crop=crop)
        for name in datasets.Splits._fields})


def _list_spec(name: str, data_dir: str) -> datasets.DatasetSpec:
    for file in listfile.SPLIT_FILES.values():  # fail before any work
        path = os.path.join(data_dir, file)
        if not os.path.isfile(path):
            raise listfile.ListFileError(
                f'list file {path!r} does not exist; {name} needs train.txt, '
                f'test.txt and database.txt under --data_dir, one line '
                f'{listfile.FORMAT} per image.'
            )
    num_classes, top_k, title = _LIST_DATASETS[name]
    k = 'all' if top_k is None else top_k
    return datasets.DatasetSpec(
        load=None, num_classes=num_classes, protocol=None,
        backbone='resnet50', top_k=top_k,
        description=f'{title} from list files (train.txt, test.txt = query, '
        f'database.txt) under the data dir, mAP@{k}',
        image_shape=(224, 224, 3),
        splits=functools.partial(_list_splits, data_dir, num_classes))


# name -> spec(data_dir) for the datasets read from a data directory.
FROM_DATA_DIR = {
    **{name: functools.partial(cifar.make_spec, name)
       for name in cifar.CIFAR10_PROTOCOLS},
    **{name: functools.partial(cifar.make_cifar100_spec, name)
       for name in cifar.CIFAR100_PROTOCOLS},
    **{name: functools.partial(_list_spec, name) for name in _LIST_DATASETS},
}

# Every dataset name, with a one-line description.
DATASETS = {
    **{name: spec.description for name, spec in datasets.OFFLINE.items()},
    **{name: f'CIFAR-10 protocol {name} (needs --data_dir: the python '
       'version or tfds)' for name in cifar.CIFAR10_PROTOCOLS},
    **{name: f'CIFAR-100 protocol {name} (needs --data_dir: the python '
       'version or tfds)' for name in cifar.CIFAR100_PROTOCOLS},
    **{name: f'{t[2]} list files (needs --data_dir)'
       for name, t in _LIST_DATASETS.items()},
}


def get_spec(name: str, data_dir: str | None = None) -> datasets.DatasetSpec:
    """The ``DatasetSpec`` of ``name``.

    Args:
      name: a key of ``DATASETS``.
      data_dir: where CIFAR (the python-version archive, its folder or
        tfds) or the list files and images live; unused by the offline
        datasets.

    Raises:
      ValueError: for an unknown name (listing the valid ones), or a
        dataset that needs ``data_dir`` without one.
    """
    if name in datasets.OFFLINE:
        return datasets.OFFLINE[name]
    if name not in FROM_DATA_DIR:
        raise ValueError(
            f'Unknown dataset {name!r}; choose one of {sorted(DATASETS)}.'
        )
    if not data_dir:
        raise ValueError(
            f'dataset {name!r} is read from files: pass --data_dir (for '
            'CIFAR the python-version archive, its extracted folder or the '
            'tfds data directory; the root of train.txt / test.txt / '
            'database.txt for list-file datasets).'
        )
    return FROM_DATA_DIR[name](os.path.expanduser(str(data_dir)))


def load_splits(name: str, seed: int = 0,
                data_dir: str | None = None) -> datasets.Splits:
    """Query, train and database splits of a dataset.

    Args:
      name: a key of ``DATASETS``.
      seed: seed of the per-class split (protocol datasets).
      data_dir: see ``get_spec``.

    Returns:
      ``Splits`` of ``ArrayDataset`` (in memory) or ``FileDataset``.
    """
    spec = get_spec(name, data_dir)
    if spec.splits is not None:
        return spec.splits(seed)
    return datasets.splits_from_spec(spec, name, seed)


def spec_image_shape(spec: datasets.DatasetSpec) -> tuple[int, ...]:
    """(H, W, C) the model sees for a dataset (loads it if it must)."""
    if spec.image_shape is not None:
        return tuple(spec.image_shape)
    return tuple(spec.load()[0].shape[1:])
