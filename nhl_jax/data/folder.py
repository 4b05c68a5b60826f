"""A folder of images, one sub-folder per class, split by a seeded protocol.

The layout that torchvision's ``ImageFolder`` reads::

    data_dir/cat/0001.jpg
    data_dir/cat/0002.png
    data_dir/dog/a.jpg

Classes are the sub-folders sorted by name (hidden ones skipped); a
class's images are its files with an image extension (``EXTENSIONS``),
sorted by name, each with that single label. Row r of ``scan`` is a
sample's id. Per class, as the CIFAR protocols do (``split_classes``), a
seeded share of the images are queries, the rest the database, and the
training images are drawn from the database::

    splits = load_folder_splits('~/photos', seed=0)

``nhl-jax make-lists`` writes the same split as list files.
"""

import functools
import math
import os
from typing import NamedTuple

import numpy as np

from nhl_jax.data import datasets, files, listfile
from nhl_jax.data.options import DataOptions
from nhl_jax.errors import UsageError

# The share of each class that are queries when none is configured.
QUERY_FRACTION = 0.1
# torchvision's IMG_EXTENSIONS, and .gif: what Pillow reads.
EXTENSIONS = frozenset({'.bmp', '.gif', '.jpeg', '.jpg', '.pgm', '.png',
                        '.ppm', '.tif', '.tiff', '.webp'})


class FolderError(UsageError):
    """A folder that is not ``<data_dir>/<class>/<image>`` with 2+ classes
    of 2+ images each; the command line prints it as one line."""


class Folder(NamedTuple):
    """The images of a class-folder tree.

    Attributes:
      classes: [C] class names (the sub-folders, sorted).
      paths: [N] image paths (root joined with class and file name).
      class_ids: [N] int64 index into ``classes`` of each image.
    """

    classes: list[str]
    paths: np.ndarray  # [N] object (str)
    class_ids: np.ndarray  # [N] int64


def class_names(root: str) -> list[str]:
    """The class sub-folders of ``root``, sorted by name.

    Raises:
      FolderError: if ``root`` is not a folder or has fewer than 2.
    """
    if not os.path.isdir(root):
        raise FolderError(
            f'{root!r} is not a folder; --dataset=folder reads '
            '<data_dir>/<class>/<image>.')
    names = sorted(entry.name for entry in os.scandir(root)
                   if entry.is_dir() and not entry.name.startswith('.'))
    if len(names) < 2:
        raise FolderError(
            f'folder {root!r} has {len(names)} class folder(s) {names}; a '
            'retrieval split needs at least 2 classes: put the images of '
            'each class in a folder of its own, <data_dir>/<class>/<image>.')
    return names


def scan(root: str) -> Folder:
    """Every image of the class folders under ``root``, in class order.

    Raises:
      FolderError: a missing folder, fewer than 2 classes, or a class
        with fewer than 2 images (a query and a database image).
    """
    classes = class_names(root)
    paths, class_ids = [], []
    for c, name in enumerate(classes):
        folder = os.path.join(root, name)
        images = sorted(entry.name for entry in os.scandir(folder)
                        if entry.is_file() and _is_image(entry.name))
        if len(images) < 2:
            raise FolderError(
                f'class folder {folder!r} holds {len(images)} image(s) '
                f'({", ".join(sorted(EXTENSIONS))}); every class needs at '
                'least 2 (a query and a database image): add images or '
                'remove the folder.')
        paths += [os.path.join(folder, image) for image in images]
        class_ids += [c] * len(images)
    return Folder(classes, np.array(paths, dtype=object),
                  np.array(class_ids, dtype=np.int64))


def _is_image(name: str) -> bool:
    return (not name.startswith('.')
            and os.path.splitext(name)[1].lower() in EXTENSIONS)


def split(class_ids: np.ndarray, seed: int,
          options: DataOptions | None = None) -> tuple[np.ndarray, ...]:
    """Seeded per-class (query, train, database) rows of ``class_ids``.

    Per class of n images: round(folder_query_fraction * n) queries (at
    least 1, at most n - 1), the other images the database, and the first
    folder_train_per_class of those (all by default) the training set.

    Args:
      class_ids: [N] int class of each image, at least 2 of each.
      seed: non-negative int.
      options: the split's sizes (``DataOptions``; None: the defaults).

    Returns:
      (query, train, database): sorted int64 rows.
    """
    options = DataOptions() if options is None else options.check()
    return datasets.split_classes(
        class_ids, seed, functools.partial(
            _cut, fraction=query_fraction(options),
            train_cap=options.folder_train_per_class))


def query_fraction(options: DataOptions) -> float:
    """The configured share of queries, or ``QUERY_FRACTION``."""
    fraction = options.folder_query_fraction
    return QUERY_FRACTION if fraction is None else fraction


def _cut(members: np.ndarray, c: int, *, fraction: float,
         train_cap: int | None):
    """One class's shuffled rows -> (query, train, database) rows."""
    del c
    n = members.size
    queries = min(max(1, math.floor(fraction * n + 0.5)), n - 1)
    train_end = n if train_cap is None else min(n, queries + train_cap)
    return members[:queries], members[queries:train_end], members[queries:]


def load_folder_splits(root: str, seed: int = 0,
                       options: DataOptions | None = None) -> datasets.Splits:
    """The query, train and database ``FileDataset`` splits of a class folder.

    Every image is opened once first (``listfile.check_images``), so a
    bad file fails before the run writes anything.

    Args:
      root: the folder of class folders.
      seed: seed of the per-class split.
      options: the split's sizes and ``image_size`` (None: the defaults).

    Returns:
      ``Splits`` whose ids are rows of ``scan(root)`` and whose labels are
      one-hot float32 [N, C].
    """
    options = DataOptions() if options is None else options
    tree = scan(root)
    labels = datasets.one_hot(tree.class_ids, len(tree.classes))
    listfile.check_images(
        {'the folder': listfile.ListSplit(tree.paths, labels)},
        fix='remove it')
    resize, crop = files.crop_sizes(options.image_size)
    return datasets.Splits(*(
        files.FileDataset(tree.paths[rows], labels[rows], rows, resize, crop)
        for rows in split(tree.class_ids, seed, options)))


def make_spec(data_dir: str, options: DataOptions) -> datasets.DatasetSpec:
    """The ``DatasetSpec`` of ``--dataset=folder`` (lists only the classes
    until ``spec.splits(seed)`` is called)."""
    classes = class_names(data_dir)
    fraction = query_fraction(options)
    train = options.folder_train_per_class
    crop = files.crop_sizes(options.image_size)[1]
    return datasets.DatasetSpec(
        load=None, num_classes=len(classes), protocol=None,
        backbone='resnet50', top_k=None,
        description=f'images in {len(classes)} class folders under the data '
        f'dir, split per class: {fraction:g} of each as queries, the rest '
        f'the database, {"all" if train is None else f"up to {train}"} of '
        f'it for training; {crop}x{crop} RGB, mAP@all',
        image_shape=(crop, crop, 3),
        splits=functools.partial(load_folder_splits, data_dir,
                                 options=options))
