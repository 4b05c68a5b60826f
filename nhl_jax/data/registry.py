"""Every dataset by name: offline ones, CIFAR protocols, list files, folders.

    splits = load_splits('mnist5k', seed=0)
    splits = load_splits('cifar10-1', data_dir='~/cifar-10-python.tar.gz')
    splits = load_splits('coco', data_dir='/data/coco')  # the list files' root
    splits = load_splits('folder', data_dir='~/photos',  # <class>/<image>
                         options=DataOptions(image_size=64))
"""

import functools
import os
from typing import NamedTuple

from nhl_jax.data import cifar, datasets, files, folder, listfile
from nhl_jax.data.options import DataOptions
from nhl_jax.errors import UsageError


class ListPreset(NamedTuple):
    """A list-file dataset: C (None: read from the files), mAP@K, title."""

    num_classes: int | None
    top_k: int | None
    title: str


# List-file datasets (DeepHash-pytorch format): classes and mAP@K.
_LIST_DATASETS = {
    'imagenet100': ListPreset(100, 1000, 'ImageNet100'),
    'coco': ListPreset(80, 5000, 'MS-COCO'),
    'nuswide_21': ListPreset(21, 5000, 'NUS-WIDE, 21 concepts'),
    'nuswide_21_m': ListPreset(21, 5000, 'NUS-WIDE, 21 concepts (m)'),
    'nuswide_81_m': ListPreset(81, 5000, 'NUS-WIDE, 81 concepts (m)'),
    'mirflickr': ListPreset(38, None, 'MIRFlickr-25K'),
    'voc2012': ListPreset(20, None, 'PASCAL VOC 2012'),
    # Any list files: C from the files (checked across all three).
    'listfile': ListPreset(None, None, 'Your own data'),
}

# The datasets of a user's own files: their mAP cut-off has no convention,
# so the command line says which it uses (mAP@all unless --config.top_k).
OWN_DATA = frozenset({'listfile', 'folder'})


def _list_splits(root: str, num_classes: int | None, seed: int, *,
                 resize: int = 256, crop: int = 224) -> datasets.Splits:
    del seed  # the list files fix the splits
    parts = listfile.read_list_splits(root, num_classes=num_classes)
    listfile.check_images(parts)  # now, not mid-epoch
    return datasets.Splits(**{
        name: files.from_list_split(parts[name], resize=resize, crop=crop)
        for name in datasets.Splits._fields})


def _list_spec(name: str, data_dir: str,
               options: DataOptions) -> datasets.DatasetSpec:
    for file in listfile.SPLIT_FILES.values():  # fail before any work
        path = os.path.join(data_dir, file)
        if not os.path.isfile(path):
            raise listfile.ListFileError(
                f'list file {path!r} does not exist; {name} needs train.txt, '
                f'test.txt and database.txt under --data_dir, one line '
                f'{listfile.FORMAT} per image.'
            )
    num_classes, top_k, title = _LIST_DATASETS[name]
    counted = num_classes is None
    if counted:
        num_classes = listfile.count_classes(
            os.path.join(data_dir, listfile.SPLIT_FILES['train']))
    resize, crop = files.crop_sizes(options.image_size)
    k = 'all' if top_k is None else top_k
    return datasets.DatasetSpec(
        load=None, num_classes=num_classes, protocol=None,
        backbone='resnet50', top_k=top_k,
        description=f'{title}: list files (train.txt, test.txt = query, '
        f'database.txt) under the data dir, {num_classes} classes'
        f'{" (from the files)" if counted else ""}, {crop}x{crop} RGB, '
        f'mAP@{k}',
        image_shape=(crop, crop, 3),
        # Counted: C read again with each file (the messages then name the
        # file it came from).
        splits=functools.partial(_list_splits, data_dir,
                                 None if counted else num_classes,
                                 resize=resize, crop=crop))


def _no_options(make):
    """``make(data_dir)`` as a registry entry (it takes no option)."""
    return lambda data_dir, options: make(data_dir)


# name -> (spec(data_dir, options), the DataOptions fields it takes) for
# the datasets read from a data directory.
FROM_DATA_DIR = {
    **{name: (_no_options(functools.partial(cifar.make_spec, name)), ())
       for name in cifar.CIFAR10_PROTOCOLS},
    **{name: (_no_options(functools.partial(cifar.make_cifar100_spec, name)),
              ())
       for name in cifar.CIFAR100_PROTOCOLS},
    **{name: (functools.partial(_list_spec, name), ('image_size',))
       for name in _LIST_DATASETS},
    'folder': (folder.make_spec, DataOptions._fields),
}

# Every dataset name, with a one-line description.
DATASETS = {
    **{name: spec.description for name, spec in datasets.OFFLINE.items()},
    **{name: f'CIFAR-10 protocol {name} (needs --data_dir: the python '
       'version or tfds)' for name in cifar.CIFAR10_PROTOCOLS},
    **{name: f'CIFAR-100 protocol {name} (needs --data_dir: the python '
       'version or tfds)' for name in cifar.CIFAR100_PROTOCOLS},
    **{name: f'{t.title}: list files (needs --data_dir)'
       for name, t in _LIST_DATASETS.items()},
    'folder': 'Your own data: images in <data_dir>/<class>/ folders, '
              'split per class by seed (needs --data_dir)',
}

# Why an option does not fit a dataset that does not take it.
_OPTION_USE = {
    'image_size': 'it sizes the images decoded from files (list-file and '
                  'folder datasets); arrays keep their size (ResNets resize '
                  'on the device: --config.backbone_kwargs.input_size)',
    'folder_query_fraction': 'it sizes the split of --dataset=folder',
    'folder_train_per_class': 'it sizes the split of --dataset=folder',
}


def _check_takes(name: str, options: DataOptions, takes) -> None:
    for field in options.given():
        if field not in takes:
            raise UsageError(
                f'{field} does not apply to dataset {name!r}: '
                f'{_OPTION_USE[field]}; leave --config.{field} unset.')


def get_spec(name: str, data_dir: str | None = None,
             options: DataOptions | None = None) -> datasets.DatasetSpec:
    """The ``DatasetSpec`` of ``name``.

    Args:
      name: a key of ``DATASETS``.
      data_dir: where CIFAR (the python-version archive, its folder or
        tfds), the list files and images, or the class folders live;
        unused by the offline datasets.
      options: the run's ``DataOptions`` (None: every default).

    Raises:
      ValueError: for an unknown name (listing the valid ones), or a
        dataset that needs ``data_dir`` without one.
      UsageError: a bad option, or one the dataset does not take.
    """
    options = DataOptions() if options is None else options.check()
    if name in datasets.OFFLINE:
        _check_takes(name, options, ())
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
            'database.txt for list-file datasets; the folder of class '
            'folders for folder).'
        )
    make, takes = FROM_DATA_DIR[name]
    _check_takes(name, options, takes)
    return make(os.path.expanduser(str(data_dir)), options)


def config_spec(config) -> datasets.DatasetSpec:
    """``get_spec`` of a run config's dataset, data_dir and options."""
    return get_spec(config['dataset'], config.get('data_dir'),
                    DataOptions.of(config))


def load_splits(name: str, seed: int = 0, data_dir: str | None = None,
                options: DataOptions | None = None) -> datasets.Splits:
    """Query, train and database splits of a dataset.

    Args:
      name: a key of ``DATASETS``.
      seed: seed of the per-class split (protocol and folder datasets).
      data_dir, options: see ``get_spec``.

    Returns:
      ``Splits`` of ``ArrayDataset`` (in memory) or ``FileDataset``.
    """
    spec = get_spec(name, data_dir, options)
    if spec.splits is not None:
        return spec.splits(seed)
    return datasets.splits_from_spec(spec, name, seed)


def spec_image_shape(spec: datasets.DatasetSpec) -> tuple[int, ...]:
    """(H, W, C) the model sees for a dataset (loads it if it must)."""
    if spec.image_shape is not None:
        return tuple(spec.image_shape)
    return tuple(spec.load()[0].shape[1:])
