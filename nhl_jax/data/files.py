"""Image-file datasets: decoded, resized and cropped while batching.

The torchvision recipe of the NHL code: resize the shorter side to 256
(bilinear), then a random 224 crop and a horizontal flip with probability
1/2 for training, and the centre 224 crop for queries and the database
(another input side keeps the ratio: ``crop_sizes``).
Random choices come from a generator seeded by (seed, epoch, sample), so a
resumed run sees exactly the same augmented images.
"""

from typing import NamedTuple

import numpy as np

from nhl_jax.data.datasets import _check_array, _check_labels
from nhl_jax.data.listfile import ListFileError, ListSplit

# torchvision's recipe: resize the shorter side to 256, crop 224.
CROP, RESIZE = 224, 256


def crop_sizes(image_size: int | None = None) -> tuple[int, int]:
    """(resize, crop) for a model input side; None: (256, 224).

    Another side keeps the recipe's ratio, rounded: 32 -> (37, 32), 8 ->
    (9, 8).
    """
    crop = CROP if image_size is None else int(image_size)
    return (crop * RESIZE + CROP // 2) // CROP, crop


class ImageError(ListFileError):
    """An image file that cannot be decoded while batching.

    A ``UsageError``: the command line prints it as one line, not a
    traceback mid-epoch.
    """


class FileDataset(NamedTuple):
    """Images on disk with multi-hot labels.

    Attributes:
      paths: [N] image file paths (str).
      labels: [N, C] float32 multi-hot labels.
      ids: [N] int64 row of each sample in its source (the list file).
      resize: shorter side after resizing.
      crop: side of the square crop fed to the model.
    """

    paths: np.ndarray  # [N] object (str)
    labels: np.ndarray  # [N, C] float32
    ids: np.ndarray  # [N] int64
    resize: int = 256
    crop: int = 224


def from_list_split(split: ListSplit, *, resize: int = 256,
                    crop: int = 224) -> FileDataset:
    """A ``FileDataset`` of one list-file split (ids = line order)."""
    return FileDataset(split.paths, split.labels,
                       np.arange(len(split.paths), dtype=np.int64),
                       resize, crop)


def check_file_dataset(ds: FileDataset, name: str = 'dataset') -> FileDataset:
    """Checks labels, lengths and sizes (images are checked when decoded)."""
    _check_array(np.asarray(ds.labels), np.float32, 2, f'{name}.labels',
                 '[N, C]', 'build them with one_hot(class_ids, num_classes)')
    if len(ds.paths) != len(ds.labels) or len(ds.ids) != len(ds.labels):
        raise ValueError(
            f'{name} has {len(ds.paths)} paths, {len(ds.labels)} label rows '
            f'and {len(ds.ids)} ids; index all three with the same rows.'
        )
    if not len(ds.paths):
        raise ValueError(f'{name} is empty; check its list file.')
    if not 0 < ds.crop <= ds.resize:
        raise ValueError(
            f'{name}: crop {ds.crop} must be positive and at most resize '
            f'{ds.resize}.'
        )
    _check_labels(np.asarray(ds.labels), name)
    return ds


def decode(path: str, resize: int, crop: int,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """One image as uint8 [crop, crop, 3]: resize, then crop (and flip).

    Args:
      path: image file (any format Pillow reads).
      resize: the shorter side is resized to this (aspect kept).
      crop: side of the square crop.
      rng: None for the centre crop; a generator for a random crop and a
        horizontal flip with probability 1/2 (training).

    Returns:
      [crop, crop, 3] uint8 RGB.

    Raises:
      ImageError: naming the file when it cannot be read as an image.
    """
    from PIL import Image  # a dependency of image-file datasets only

    try:
        with Image.open(path) as image:
            image = image.convert('RGB')
            w, h = image.size
            scale = resize / min(w, h)
            size = (max(crop, round(w * scale)), max(crop, round(h * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
    except (OSError, ValueError) as e:
        reason = ' '.join(str(e).split())  # one line
        raise ImageError(
            f'cannot read image {path!r}: {reason}; replace the file or '
            'remove its line from the list files, then --resume.') from None
    w, h = image.size
    if rng is None:  # torchvision CenterCrop's rounding
        top, left = round((h - crop) / 2.0), round((w - crop) / 2.0)
    else:
        top, left = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
    # Crop and flip in Pillow, which releases the GIL (numpy slicing and
    # the contiguous copy held it): the same pixels, and decoding threads
    # (``pipeline.resolve_workers``) then run more of their time in
    # parallel.
    top, left = int(top), int(left)
    image = image.crop((left, top, left + crop, top + crop))
    if rng is not None and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.array(image, np.uint8)


def gather(ds: FileDataset, index: np.ndarray,
           augment_seed: tuple[int, int] | None) -> np.ndarray:
    """Decodes rows ``index`` as [B, crop, crop, 3] uint8.

    Args:
      ds: the dataset.
      index: [B] rows.
      augment_seed: (seed, epoch) for training augmentation, None for the
        deterministic centre crop.
    """
    images = []
    for i in np.asarray(index):
        rng = (None if augment_seed is None else
               np.random.default_rng([*augment_seed, int(i)]))
        images.append(decode(ds.paths[i], ds.resize, ds.crop, rng))
    return np.stack(images)
