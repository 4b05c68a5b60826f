"""List-file datasets in the DeepHash-pytorch format (ImageNet100, COCO, ...).

Each of ``train.txt``, ``test.txt`` (the queries) and ``database.txt`` has
one sample per line::

    <relative image path> <0/1 for class 1> ... <0/1 for class C>

e.g. ``train2014/COCO_train2014_000000072095.jpg 0 0 1 ... 0``; paths are
relative to the data root and contain no whitespace. Blank lines are
skipped. Every problem is reported as one ``ListFileError`` naming the file,
the line and the expected format, before any image is decoded;
``check_images`` then opens every image once, before the run writes
anything.
"""

import os
from typing import NamedTuple

import numpy as np

from nhl_jax.errors import UsageError

SPLIT_FILES = {'train': 'train.txt', 'query': 'test.txt',
               'database': 'database.txt'}
FORMAT = "'<relative image path> <C values, each 0 or 1>'"


class ListFileError(UsageError):
    """A list file (or an image it names) is missing or malformed.

    A ``UsageError`` (so a ``ValueError``): the command line prints it as
    one line.
    """


# Up to this many distinct images are decoded in full by ``check_images``
# (slow, but a truncated file shows only then); larger sets get only their
# headers read (far cheaper; benchmarks/RESULTS.md), and the decoder names
# a file that fails later.
FULL_CHECK_LIMIT = 1000


class ListSplit(NamedTuple):
    """One split of a list-file dataset.

    Attributes:
      paths: [N] absolute image paths (str).
      labels: [N, C] float32 multi-hot labels.
    """

    paths: np.ndarray  # [N] object (str)
    labels: np.ndarray  # [N, C] float32


def _where(path: str, number: int) -> str:
    return f'{path}:{number}'


def _parse_line(line: str, path: str, number: int, num_classes,
                origin: str = 'as configured'):
    tokens = line.split()
    if len(tokens) < 2:
        raise ListFileError(
            f'{_where(path, number)}: expected {FORMAT}, got {line.strip()!r}.'
        )
    bad = [t for t in tokens[1:] if t not in ('0', '1')]
    if bad:
        raise ListFileError(
            f'{_where(path, number)}: label values must be 0 or 1, got '
            f'{bad[0]!r}; expected {FORMAT}.'
        )
    labels = [t == '1' for t in tokens[1:]]
    if num_classes is not None and len(labels) != num_classes:
        raise ListFileError(
            f'{_where(path, number)}: {len(labels)} label values, but '
            f'{num_classes} classes expected ({origin}); every line needs '
            'one 0/1 per class.'
        )
    if not any(labels):
        raise ListFileError(
            f'{_where(path, number)}: no class is set (all labels 0); every '
            'sample needs at least one class for retrieval relevance.'
        )
    return tokens[0], labels


def read_list_file(path: str, root: str, *, num_classes: int | None = None,
                   check_images: bool = True,
                   origin: str = 'as configured') -> ListSplit:
    """Reads and validates one list file.

    Args:
      path: the list file.
      root: the data root the image paths are relative to.
      num_classes: C; None takes it from the first line.
      check_images: also check that every image file exists.
      origin: where a given C comes from, for messages.

    Returns:
      The split's absolute image paths and labels.

    Raises:
      ListFileError: for a missing file, a malformed line (file and line
        named), inconsistent class counts, a missing image, or no samples.
    """
    _require(path)
    paths, labels = [], []
    with open(path, encoding='utf-8', errors='replace') as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            image, row = _parse_line(line, path, number, num_classes,
                                     origin)
            if num_classes is None:
                num_classes, origin = len(row), f'as on line {number}'
            full = os.path.join(root, image)
            if check_images and not os.path.isfile(full):
                raise ListFileError(
                    f'{_where(path, number)}: image {image!r} not found under '
                    f'root {root!r}.'
                )
            paths.append(full)
            labels.append(row)
    if not paths:
        raise _no_samples(path)
    return ListSplit(np.array(paths, dtype=object),
                     np.array(labels, dtype=np.float32))


def count_classes(path: str) -> int:
    """C of a list file: the label values on its first sample line.

    Raises:
      ListFileError: a missing file, a malformed first line or no sample.
    """
    _require(path)
    with open(path, encoding='utf-8', errors='replace') as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                return len(_parse_line(line, path, number, None)[1])
    raise _no_samples(path)


def _require(path: str) -> None:
    if not os.path.isfile(path):
        raise ListFileError(
            f'list file {path!r} does not exist; expected one line '
            f'{FORMAT} per image.')


def _no_samples(path: str) -> ListFileError:
    return ListFileError(f'list file {path!r} has no samples; expected one '
                         f'line {FORMAT} per image.')


def format_lines(paths, labels: np.ndarray) -> str:
    """The lines of a list file: ``<path> <0/1 per class>`` per sample.

    Args:
      paths: [N] image paths relative to the data root, without
        whitespace (the format has no quoting).
      labels: [N, C] multi-hot labels (0/1).
    """
    rows = np.where(np.asarray(labels) > 0, '1', '0')
    return ''.join(f'{path} {" ".join(row)}\n'
                   for path, row in zip(paths, rows))


def read_list_splits(root: str, *, num_classes: int | None = None,
                     files: dict[str, str] | None = None,
                     check_images: bool = True) -> dict[str, ListSplit]:
    """Reads the query, train and database list files under ``root``.

    Args:
      root: the data root, holding the list files and the images.
      num_classes: C; None takes it from the first file's first line.
      files: split name -> list file name (default ``SPLIT_FILES``).
      check_images: also check that every image file exists.

    Returns:
      {'train', 'query', 'database'} -> ``ListSplit``, all with C classes.
    """
    splits, origin = {}, 'as configured'
    for split, name in (files or SPLIT_FILES).items():
        splits[split] = read_list_file(os.path.join(root, name), root,
                                       num_classes=num_classes,
                                       check_images=check_images,
                                       origin=origin)
        if num_classes is None:
            num_classes, origin = (splits[split].labels.shape[1],
                                   f'as in {name}')
    return splits


def check_images(splits: dict[str, ListSplit], *,
                 full_limit: int | None = None,
                 fix: str = 'remove its line from the list files') -> None:
    """Opens every image of ``splits`` once, to fail before any training.

    Each distinct file's header is read (format and size); when there are
    at most ``full_limit`` files they are decoded as well (JPEGs at 1/8
    scale, which still reads every byte), which also finds truncated files.

    Args:
      splits: from ``read_list_splits``.
      full_limit: the most files decoded in full (None:
        ``FULL_CHECK_LIMIT``).
      fix: what the message proposes besides replacing the file.

    Raises:
      ListFileError: naming the first image that cannot be read, the list
        file it is in and the fix.
    """
    first = {}  # path -> the split that names it first
    for split, part in splits.items():
        for path in part.paths:
            first.setdefault(path, split)
    full = len(first) <= (FULL_CHECK_LIMIT if full_limit is None
                          else full_limit)
    for path, split in first.items():
        reason = _unreadable(path, full)
        if reason:
            raise ListFileError(
                f'image {path!r} (in {SPLIT_FILES.get(split, split)}) cannot '
                f'be read as an image ({reason}); replace the file or '
                f'{fix}.')


def _unreadable(path: str, decode: bool) -> str | None:
    """Why Pillow cannot open (or decode) ``path``; None if it can."""
    from PIL import Image  # a dependency of image-file datasets only

    try:
        with Image.open(path) as image:
            if decode:
                image.draft('RGB', (image.width // 8, image.height // 8))
                image.load()
    except Exception as e:  # noqa: BLE001 (Pillow raises many types)
        # OSError, ValueError, SyntaxError, struct.error,
        # DecompressionBombError, ...: each means a bad file.
        text = ' '.join(str(e).split())[:200]
        return f'{type(e).__name__}: {text}' if text else type(e).__name__
    return None
