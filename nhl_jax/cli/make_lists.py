r"""Writes train.txt, test.txt and database.txt from a folder tree or a CSV.

    nhl-jax make-lists --folder=~/photos            # ~/photos/<class>/<image>
    nhl-jax make-lists --csv=labels.csv --out=~/lists   # path,label[,...]
    nhl-jax train --dataset=listfile --data_dir=~/photos

The list files (one line ``<path> <0/1 per class>`` per image, paths
relative to ``--out``, the data root of ``--dataset=listfile``) share a
split with other codebases (DeepHash-pytorch reads the same format);
``classes.txt`` names the label columns, one per line.

- ``--folder``: the split of ``--dataset=folder`` (``nhl_jax.data.folder``)
  with the same ``--seed``, ``--query_fraction`` and
  ``--train_per_class`` (the config's ``seed``,
  ``folder_query_fraction`` and ``folder_train_per_class``), so
  ``--dataset=listfile`` on the lists trains on exactly the images of
  ``--dataset=folder``. ``--out`` defaults to the folder.
- ``--csv``: one row ``path,label[,label...]`` per image (paths relative
  to the CSV's folder or absolute; a first row whose first cell is
  ``path`` is a header). Classes are the label names, sorted (as numbers
  when all are integers). Rows of one label each are split per class as a
  folder is; with several labels on a row, all rows are split as one
  class (at random), so ``--train_per_class`` is then the training set's
  size. ``--out`` defaults to the CSV's folder.

Nothing is written when a check fails (missing images, whitespace in a
path, a class of one image, list files already there without
``--overwrite``).
"""

import csv
import os
import sys
from typing import NamedTuple

import numpy as np
from absl import flags

from nhl_jax import runlog
from nhl_jax.cli import command
from nhl_jax.data import datasets, listfile
from nhl_jax.data import folder as folder_lib
from nhl_jax.data.options import DataOptions
from nhl_jax.errors import UsageError

CLASSES_FILE = 'classes.txt'


class Lists(NamedTuple):
    """Labelled images and their split.

    Attributes:
      classes: [C] class names, in label-column order.
      paths: [N] image paths.
      labels: [N, C] multi-hot labels (0/1).
      rows: {'query', 'train', 'database'} -> sorted rows of ``paths``.
    """

    classes: list[str]
    paths: np.ndarray  # [N] object (str)
    labels: np.ndarray  # [N, C] float32
    rows: dict[str, np.ndarray]


def from_folder(root: str, seed: int = 0,
                options: DataOptions | None = None) -> Lists:
    """The images of a class-folder tree, split as ``--dataset=folder``."""
    tree = folder_lib.scan(root)
    labels = datasets.one_hot(tree.class_ids, len(tree.classes))
    return Lists(tree.classes, tree.paths, labels,
                 _rows(tree.class_ids, seed, options))


def _rows(class_ids, seed, options) -> dict[str, np.ndarray]:
    rows = folder_lib.split(class_ids, seed, options)
    return dict(zip(('query', 'train', 'database'), rows))


def from_csv(path: str, seed: int = 0,
             options: DataOptions | None = None) -> Lists:
    """The images of a ``path,label[,label...]`` CSV, split (see module).

    Raises:
      UsageError: a malformed row, a missing or repeated image, or (single
        labels) a class of fewer than 2 images; file and line named.
    """
    paths, names = _read_csv(path)
    classes = _sorted_classes({n for row in names for n in row})
    column = {name: c for c, name in enumerate(classes)}
    labels = np.zeros((len(paths), len(classes)), np.float32)
    for i, row in enumerate(names):
        labels[i, [column[n] for n in row]] = 1
    if all(len(row) == 1 for row in names):
        class_ids = labels.argmax(1)
        counts = np.bincount(class_ids, minlength=len(classes))
        if counts.min() < 2:
            raise UsageError(
                f'{path}: class {classes[counts.argmin()]!r} has '
                f'{counts.min()} image; every class needs at least 2 (a '
                'query and a database image).')
    else:  # multi-label: one random split over all rows
        class_ids = np.zeros(len(paths), np.int64)
    return Lists(classes, np.array(paths, dtype=object), labels,
                 _rows(class_ids, seed, options))


def _sorted_classes(names) -> list[str]:
    """Class names sorted as numbers when every one is an int, else as
    strings."""
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def _read_csv(path: str) -> tuple[list[str], list[list[str]]]:
    """(image paths, label names per row) of a CSV, every image checked."""
    if not os.path.isfile(path):
        raise UsageError(f'CSV {path!r} does not exist; pass --csv=<a file '
                         'of path,label[,label...] rows>.')
    root = os.path.dirname(os.path.abspath(path))
    paths, names, seen = [], [], {}
    with open(path, newline='', encoding='utf-8') as f:
        for number, row in enumerate(csv.reader(f), start=1):
            cells = [cell.strip() for cell in row]
            while cells and not cells[-1]:
                cells.pop()
            if not cells or (number == 1 and cells[0].lower() == 'path'):
                continue
            where = f'{path}:{number}'
            if len(cells) < 2 or not all(cells):
                raise UsageError(f'{where}: expected path,label[,label...], '
                                 f'got {",".join(row)!r}.')
            image = os.path.join(root, os.path.expanduser(cells[0]))
            if not os.path.isfile(image):
                raise UsageError(f'{where}: image {cells[0]!r} not found '
                                 f'(paths are relative to {root!r}).')
            if image in seen:
                raise UsageError(
                    f'{where}: image {cells[0]!r} is listed again (first on '
                    f'line {seen[image]}); give each image one row with all '
                    'its labels.')
            seen[image] = number
            paths.append(image)
            names.append(sorted(set(cells[1:])))
    if not paths:
        raise UsageError(f'CSV {path!r} has no rows; expected one row '
                         'path,label[,label...] per image.')
    return paths, names


def write_lists(lists: Lists, out: str, *,
                overwrite: bool = False) -> list[str]:
    """Writes the three list files and classes.txt into ``out``.

    Everything is checked before the first file is written; each file is
    written atomically.

    Args:
      lists: from ``from_folder`` or ``from_csv``.
      out: the data root the lines' paths are relative to (made if
        missing).
      overwrite: replace list files that are already there.

    Returns:
      The paths written.

    Raises:
      UsageError: a path with whitespace (the format cannot hold it), or
        existing files without ``overwrite``.
    """
    out = os.path.abspath(os.path.expanduser(out))
    relative = np.array([os.path.relpath(p, out) for p in lists.paths],
                        dtype=object)
    spaced = [p for p in relative if len(p.split()) != 1]
    if spaced:
        raise UsageError(
            f'image path {spaced[0]!r} holds whitespace, which list files '
            f'cannot (their fields are split on it; {len(spaced)} path(s) '
            'in all); rename those files or folders.')
    names = [*listfile.SPLIT_FILES.values(), CLASSES_FILE]
    targets = [os.path.join(out, name) for name in names]
    there = [t for t in targets if os.path.exists(t)]
    if there and not overwrite:
        raise UsageError(f'{there[0]} already exists; pass --overwrite to '
                         'replace the list files, or choose another --out.')
    os.makedirs(out, exist_ok=True)
    texts = [listfile.format_lines(relative[lists.rows[split]],
                                   lists.labels[lists.rows[split]])
             for split in listfile.SPLIT_FILES]
    texts.append(''.join(f'{name}\n' for name in lists.classes))
    for target, text in zip(targets, texts):
        with runlog.atomic_file(target, 'w', suffix='.txt') as f:
            f.write(text)
    return targets


# --- the command -------------------------------------------------------------


def define_flags(flag_values=flags.FLAGS) -> None:
    """Defines the command's flags on ``flag_values`` (tests: a fresh one)."""
    fv = {'flag_values': flag_values}
    flags.DEFINE_string('folder', None, 'A tree <folder>/<class>/<image>.',
                        **fv)
    flags.DEFINE_string('csv', None, 'A CSV of path,label[,label...] rows.',
                        **fv)
    flags.DEFINE_string('out', None, 'Where the list files go (default: '
                        'the folder, or the CSV\'s folder).', **fv)
    flags.DEFINE_integer('seed', 0, 'Seed of the split (the run\'s seed).',
                         **fv)
    flags.DEFINE_float('query_fraction', None, 'Share of each class that '
                       'are queries (default 0.1).', **fv)
    flags.DEFINE_integer('train_per_class', None, 'At most this many '
                         'training images per class (default: all of the '
                         'database).', **fv)
    flags.DEFINE_bool('overwrite', False, 'Replace existing list files.',
                      **fv)


def run(flag_values=flags.FLAGS) -> list[str]:
    """The command on parsed flags: writes the lists, prints a summary.

    Raises:
      UsageError: a bad flag or input; nothing is written then.
    """
    source, csv_path = flag_values['folder'].value, flag_values['csv'].value
    if (source is None) == (csv_path is None):
        raise UsageError('pass one of --folder=<class folders> or '
                         '--csv=<path,label rows>.')
    options = DataOptions(
        folder_query_fraction=flag_values['query_fraction'].value,
        folder_train_per_class=flag_values['train_per_class'].value).check()
    seed = flag_values['seed'].value
    if seed < 0:
        raise UsageError(f'--seed must be >= 0, got {seed}.')
    path = os.path.expanduser(source or csv_path)
    lists = (from_folder(path, seed, options) if source is not None
             else from_csv(path, seed, options))
    out = flag_values['out'].value or (
        path if source is not None else os.path.dirname(os.path.abspath(path)))
    written = write_lists(lists, out,
                          overwrite=flag_values['overwrite'].value)
    _summary(lists, written, seed)
    return written


def _summary(lists: Lists, written: list[str], seed: int) -> None:
    shown = ', '.join(lists.classes[:10])
    more = len(lists.classes) > 10
    print(f'{len(lists.classes)} classes: {shown}{", ..." if more else ""}')
    for split in ('query', 'train', 'database'):
        print(f'{split:<9}{len(lists.rows[split]):>8}   seed {seed}')
    for path in written:
        print(f'wrote {path}')
    print('train on them: nhl-jax train --dataset=listfile '
          f'--data_dir={os.path.dirname(written[0])}')


def main(argv):
    """nhl-jax make-lists: list files from a class folder or a CSV."""
    del argv
    try:
        run()
    except UsageError as e:
        sys.exit(f'error: {e}')


def cli(argv=None) -> None:
    """Runs the command on ``argv`` (default: ``sys.argv``)."""
    command.run(main, define_flags, argv, defines='folder')


if __name__ == '__main__':
    cli()
