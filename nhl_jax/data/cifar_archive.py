"""CIFAR-10/100 from the python-version archive: NumPy and pickle only.

The archives of the CIFAR page (``cifar-10-python.tar.gz``,
``cifar-100-python.tar.gz``) and the folders they extract to
(``cifar-10-batches-py``, ``cifar-100-python``; torchvision downloads the
same) are read directly, without TensorFlow or tensorflow-datasets::

    images, class_ids = read('cifar10', find('cifar10', '~/data'))

Each batch file is a pickle (protocol 2, written by Python 2) of a dict
with byte-string keys: ``data``, a uint8 array [n, 3072] holding each
image's red, green and blue 32 x 32 planes, row-major; ``labels``
(CIFAR-10), or ``fine_labels`` and ``coarse_labels`` (CIFAR-100), lists of
ints; ``batch_label`` and ``filenames``. A pickle can call any Python
function while it loads, so ``_BatchUnpickler`` builds plain numeric
arrays itself and refuses every other global.

Rows follow tfds's order (it reads the binary version of the same
batches): ``data_batch_1`` .. ``data_batch_5`` then ``test_batch``;
CIFAR-100 ``train`` then ``test`` with the fine label (tfds's 'label'). A
row, hence a split id, is the same image by either path.
"""

import io
import os
import pickle
import tarfile
import zlib
from typing import NamedTuple

import numpy as np

from nhl_jax.errors import UsageError

URL = 'https://www.cs.toronto.edu/~kriz/cifar.html'
_SIDE = 32
_ROW = 3 * _SIDE * _SIDE


class Layout(NamedTuple):
    """Where a python-version CIFAR keeps its batches.

    Attributes:
      title: the name in messages.
      archive: the archive's file name.
      folder: the folder it extracts to (also its members' prefix).
      files: the batch files, in row order (train, then test).
      label: the key of the class ids in each batch.
      num_classes: the number of classes.
    """

    title: str
    archive: str
    folder: str
    files: tuple[str, ...]
    label: str
    num_classes: int


LAYOUTS = {
    'cifar10': Layout('CIFAR-10', 'cifar-10-python.tar.gz',
                      'cifar-10-batches-py',
                      (*(f'data_batch_{i}' for i in range(1, 6)),
                       'test_batch'), 'labels', 10),
    'cifar100': Layout('CIFAR-100', 'cifar-100-python.tar.gz',
                       'cifar-100-python', ('train', 'test'), 'fine_labels',
                       100),
}


def describe(name: str) -> str:
    """What ``find`` looks for, for messages."""
    layout = LAYOUTS[name]
    return (f'the archive {layout.archive} (or --data_dir naming it), its '
            f'extracted folder {layout.folder}/ ({", ".join(layout.files)})')


def find(name: str, data_dir: str) -> str | None:
    """The archive or extracted folder of CIFAR ``name`` at ``data_dir``.

    Args:
      name: a key of ``LAYOUTS``.
      data_dir: the archive itself, the extracted folder, or a folder
        holding either.

    Returns:
      The path to read, or None when there is neither.
    """
    layout = LAYOUTS[name]
    candidates = (data_dir, os.path.join(data_dir, layout.folder),
                  os.path.join(data_dir, layout.archive))
    for path in candidates:
        if os.path.isfile(path) or os.path.isfile(
                os.path.join(path, layout.files[0])):
            return path
    return None


def read(name: str, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Every row of CIFAR ``name`` from the archive or folder ``path``.

    Args:
      name: a key of ``LAYOUTS``.
      path: from ``find``.

    Returns:
      (images [N, 32, 32, 3] uint8, class_ids [N] int64), train rows then
      test rows.

    Raises:
      UsageError: a missing batch file, a truncated or foreign archive, a
        pickle holding anything but a CIFAR batch, or wrong keys, dtypes,
        shapes or labels (the file and the fix named).
    """
    layout = LAYOUTS[name]
    reader = _read_archive if os.path.isfile(path) else _read_folder
    batches = reader(layout, path)
    images, class_ids = (np.concatenate(part) for part in zip(*batches))
    return images, class_ids


def _read_folder(layout: Layout, folder: str):
    batches = []
    for file in layout.files:
        path = os.path.join(folder, file)
        if not os.path.isfile(path):
            raise UsageError(
                f'{layout.title} folder {folder!r} lacks {file} (it needs '
                f'{", ".join(layout.files)}); extract {layout.archive} '
                f'again (from {URL}).')
        with open(path, 'rb') as f:
            batches.append(_read_batch(f, path, layout))
    return batches


def _read_archive(layout: Layout, path: str):
    wanted = {f'{layout.folder}/{file}': file for file in layout.files}
    raw = {}
    try:
        with tarfile.open(path, 'r:gz') as tar:
            for member in tar:
                file = wanted.get(member.name.removeprefix('./'))
                if file is not None and member.isfile():
                    raw[file] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise UsageError(
            f'{path!r} cannot be read as the {layout.title} python-version '
            f'archive ({_reason(e)}): it is truncated or another file; '
            f'download {layout.archive} again from {URL}.') from None
    missing = [f'{layout.folder}/{f}' for f in layout.files if f not in raw]
    if missing:
        raise UsageError(
            f'archive {path!r} lacks {", ".join(missing)}: it is truncated '
            f'or not {layout.archive} (the python version); download it '
            f'again from {URL}.')
    return [_read_batch(io.BytesIO(raw.pop(file)), f'{path}:{file}', layout)
            for file in layout.files]


def _reason(error: BaseException) -> str:
    text = ' '.join(str(error).split())[:200]
    return f'{type(error).__name__}: {text}' if text else type(error).__name__


# --- one batch file ----------------------------------------------------------


class _Refused(pickle.UnpicklingError):
    """The pickle asks for something a CIFAR batch never holds."""


# Plain numbers only: an object dtype would unpickle arbitrary values.
_NUMBERS = frozenset(f'{kind}{size}' for kind in 'ui' for size in (1, 2, 4, 8))


def _text(value) -> str | None:
    """A Python 2 string (read as bytes) or str as str; None otherwise."""
    if isinstance(value, bytes):
        return value.decode('latin1')
    return value if isinstance(value, str) else None


class _Dtype:
    """``numpy.dtype(spec, align, copy)`` as pickled, for plain integers."""

    def __init__(self, spec, align=False, copy=False):
        del align, copy
        text = _text(spec)
        if text not in _NUMBERS:
            raise _Refused(f'a numpy dtype {spec if text is None else text!r}')
        self.dtype = np.dtype(text)

    def __setstate__(self, state):
        # (version, byte order, subarray, names, fields, ...): plain
        # numbers have only a byte order.
        if (not isinstance(state, tuple) or len(state) < 5
                or any(part is not None for part in state[2:5])):
            raise _Refused('a structured numpy dtype')
        order = _text(state[1])
        if order not in ('<', '>', '|', '='):
            raise _Refused(f'a numpy byte order {state[1]!r}')
        self.dtype = self.dtype.newbyteorder(order)


# What ``numpy.ndarray`` unpickles to: only the argument of ``_Array``.
_NDARRAY = object()


class _Array:
    """An array as ``ndarray.__reduce__`` pickles it, built from its bytes.

    ``_reconstruct(ndarray, (0,), b'b')`` then ``__setstate__((version,
    shape, dtype, is_fortran, raw bytes))``; nothing of numpy's unpickling
    runs, so nothing but the bytes of a plain array can come out.
    """

    def __init__(self, subtype, shape=None, typecode=None):
        del shape, typecode
        if subtype is not _NDARRAY:
            raise _Refused('an array of a type other than numpy.ndarray')
        self.array = None

    def __setstate__(self, state):
        try:
            _, shape, dtype, fortran, raw = state
            shape = tuple(int(n) for n in shape)
        except (TypeError, ValueError):
            raise _Refused('an array state that numpy does not write') from None
        raw = raw.encode('latin1') if isinstance(raw, str) else raw
        if not isinstance(dtype, _Dtype) or not isinstance(raw, bytes):
            raise _Refused('an array without a plain dtype and bytes')
        if min(shape, default=0) < 0 or len(raw) != (
                int(np.prod(shape)) * dtype.dtype.itemsize):
            raise pickle.UnpicklingError(
                f'array bytes ({len(raw)}) do not fill its shape {shape}')
        self.array = np.frombuffer(raw, dtype.dtype).reshape(
            shape, order='F' if fortran else 'C')


# The only globals of a batch file: numpy < 2 pickled arrays as
# ``numpy.core.multiarray._reconstruct`` (the real files), numpy 2 as
# ``numpy._core.multiarray._reconstruct``.
_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'): _Array,
    ('numpy._core.multiarray', '_reconstruct'): _Array,
    ('numpy', 'ndarray'): _NDARRAY,
    ('numpy', 'dtype'): _Dtype,
}


class _BatchUnpickler(pickle.Unpickler):
    """Loads a CIFAR batch; every global but numpy's array parts refused."""

    def find_class(self, module, name):
        found = _GLOBALS.get((module, name))
        if found is None:
            raise _Refused(f'{module}.{name}')
        return found


def _load(stream, where: str, layout: Layout) -> dict:
    """The batch dict of ``stream``: keys as str, arrays as numpy arrays."""
    try:
        batch = _BatchUnpickler(stream, encoding='bytes').load()
    except _Refused as e:
        raise UsageError(
            f'{where} holds {e}, which a {layout.title} batch file never '
            'does; it was not unpickled: use the files of '
            f'{layout.archive} from {URL}.') from None
    except Exception as e:  # noqa: BLE001 (a damaged pickle raises many)
        raise UsageError(
            f'{where} cannot be read as a {layout.title} batch file '
            f'({_reason(e)}): it is truncated or another file; download '
            f'or extract {layout.archive} again.') from None
    if not isinstance(batch, dict):
        raise UsageError(f'{where} holds a {type(batch).__name__}, not the '
                         f'dict of a {layout.title} batch file.')
    return {_text(k): v.array if isinstance(v, _Array) else v
            for k, v in batch.items()}


def _read_batch(stream, where: str, layout: Layout):
    """One batch file -> (images [n, 32, 32, 3] uint8, class_ids [n] int64)."""
    batch = _load(stream, where, layout)
    missing = [k for k in ('data', layout.label) if k not in batch]
    if missing:
        raise UsageError(
            f'{where} has no {" or ".join(missing)} (keys: '
            f'{sorted(map(str, batch))}); it is not a {layout.title} batch '
            'file of the python version.')
    data = batch['data']
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8
            or data.ndim != 2 or data.shape[1] != _ROW):
        got = (f'{data.dtype} {data.shape}' if isinstance(data, np.ndarray)
               else type(data).__name__)
        raise UsageError(f"{where}: 'data' must be uint8 [n, {_ROW}], got "
                         f'{got}; it is not a {layout.title} batch file.')
    class_ids = _class_ids(batch[layout.label], len(data), where, layout)
    images = data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return images, class_ids


def _class_ids(labels, rows: int, where: str, layout: Layout) -> np.ndarray:
    try:
        ids = np.asarray(labels)
    except (TypeError, ValueError):  # e.g. ragged nested lists
        ids = np.asarray(None)
    if (ids.ndim != 1 or len(ids) != rows
            or not np.issubdtype(ids.dtype, np.integer)
            or (rows and not 0 <= ids.min() <= ids.max()
                < layout.num_classes)):
        raise UsageError(
            f'{where}: {layout.label!r} must be {rows} ints in [0, '
            f'{layout.num_classes}), one per row of data, got '
            f'{ids.dtype} {ids.shape}; it is not a {layout.title} batch file.')
    return ids.astype(np.int64)
