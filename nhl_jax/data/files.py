"""Image-file datasets: decoded, resized and cropped while batching.

The torchvision recipe of the NHL code: resize the shorter side to 256
(bilinear), then a random 224 crop and a horizontal flip with probability
1/2 for training, and the centre 224 crop for queries and the database
(another input side keeps the ratio: ``crop_sizes``).
Random choices come from a generator seeded by (seed, epoch, sample), so a
resumed run sees exactly the same augmented images. By default JPEGs are
decoded at a reduced scale where the resize allows it and only the crop is
resampled (``DECODERS``), which gives nearly the same pixels for much less
work (benchmarks/input_pipeline.py).
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
      decoder: how files are decoded, a key of ``DECODERS``: ``'draft'``
        (reduced JPEG scale where the resize allows it, only the crop
        resampled) or ``'full'`` (the whole image at full scale, as
        torchvision does).
    """

    paths: np.ndarray  # [N] object (str)
    labels: np.ndarray  # [N, C] float32
    ids: np.ndarray  # [N] int64
    resize: int = 256
    crop: int = 224
    decoder: str = 'draft'


def from_list_split(split: ListSplit, *, resize: int = 256,
                    crop: int = 224, decoder: str = 'draft') -> FileDataset:
    """A ``FileDataset`` of one list-file split (ids = line order)."""
    return FileDataset(split.paths, split.labels,
                       np.arange(len(split.paths), dtype=np.int64),
                       resize, crop, decoder)


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
    _decoder(ds.decoder)
    return ds


def decode(path: str, resize: int, crop: int,
           rng: np.random.Generator | None = None, *,
           decoder: str = 'draft') -> np.ndarray:
    """One image as uint8 [crop, crop, 3]: resize, then crop (and flip).

    Args:
      path: image file (any format Pillow reads).
      resize: the shorter side is resized to this (aspect kept).
      crop: side of the square crop.
      rng: None for the centre crop; a generator for a random crop and a
        horizontal flip with probability 1/2 (training).
      decoder: a key of ``DECODERS``: ``'draft'`` (default) or ``'full'``.
        Both draw the same crop and flip from ``rng``.

    Returns:
      [crop, crop, 3] uint8 RGB.

    Raises:
      ImageError: naming the file when it cannot be read as an image.
      ValueError: for an unknown ``decoder``.
    """
    from PIL import Image  # a dependency of image-file datasets only

    read = _decoder(decoder)
    try:
        with Image.open(path) as image:
            size = _resized_size(image.size, resize, crop)
            box = _crop_box(size, crop, rng)
            image = read(image, size, box)
    except (OSError, ValueError) as e:
        reason = ' '.join(str(e).split())  # one line
        raise ImageError(
            f'cannot read image {path!r}: {reason}; replace the file or '
            'remove its line from the list files, then --resume.') from None
    if rng is not None and rng.random() < 0.5:
        # In Pillow, which releases the GIL (numpy slicing held it), so
        # decoding threads run more of their time in parallel.
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.array(image, np.uint8)


def _resized_size(size, resize: int, crop: int) -> tuple[int, int]:
    """(W, H) after resizing the shorter side of ``size`` to ``resize``."""
    w, h = size
    scale = resize / min(w, h)
    return max(crop, round(w * scale)), max(crop, round(h * scale))


def _crop_box(size, crop: int, rng) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the crop in the resized image."""
    w, h = size
    if rng is None:  # torchvision CenterCrop's rounding
        top, left = round((h - crop) / 2.0), round((w - crop) / 2.0)
    else:
        top, left = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
    top, left = int(top), int(left)
    return left, top, left + crop, top + crop


def _decode_full(image, size, box):
    """Decodes in full, resizes the whole image to ``size``, then crops."""
    from PIL import Image

    image = image.convert('RGB').resize(size, Image.Resampling.BILINEAR)
    return image.crop(box)


def _decode_draft(image, size, box):
    """Decodes at the smallest JPEG scale that keeps ``size``, resizes the crop.

    JPEG's DCT can decode at 1/2, 1/4 or 1/8 scale; Pillow's ``draft``
    picks the smallest whose both sides stay >= ``size``, so the resize
    still only shrinks. Resampling just the crop's region (Pillow's
    ``box``) gives the pixels of resizing everything and cropping, up to
    the rounding of the filter weights (at most 1 grey level), at a
    fraction of the cost. Other formats decode in full.
    """
    from PIL import Image

    # ``draft`` returns the image's extent in the reduced pixel grid.
    scaled = image.draft('RGB', size)
    width, height = scaled[1][2:] if scaled else image.size
    if image.mode != 'RGB':
        image = image.convert('RGB')
    sx, sy = width / size[0], height / size[1]
    left, top, right, bottom = box
    return image.resize((right - left, bottom - top),
                        Image.Resampling.BILINEAR,
                        box=(left * sx, top * sy, right * sx, bottom * sy))


# How a file becomes its resized crop: ``(opened image, resized (W, H),
# crop box in the resized image) -> [crop, crop] RGB image``.
DECODERS = {'draft': _decode_draft, 'full': _decode_full}


def _decoder(name: str):
    if name not in DECODERS:
        raise ValueError(f'unknown decoder {name!r}; use one of '
                         f'{sorted(DECODERS)}.')
    return DECODERS[name]


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
        images.append(decode(ds.paths[i], ds.resize, ds.crop, rng,
                             decoder=ds.decoder))
    return np.stack(images)
