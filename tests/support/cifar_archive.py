"""CIFAR python-version batch files and archives, written as the real ones.

The real files (cs.toronto.edu/~kriz/cifar.html) were pickled by Python 2
with protocol 2: a dict whose keys and strings are Python 2 strings
(``SHORT_BINSTRING`` / ``BINSTRING``, read by Python 3 as bytes with
``encoding='bytes'``), ``data`` a uint8 numpy array [n, 3072] (each row the
red, green then blue 32 x 32 plane, row-major) pickled through
``numpy.core.multiarray._reconstruct``, the labels lists of ints.
``Py2Pickler`` writes those opcodes from Python 3 (whose own protocol 2
would pickle bytes as ``_codecs.encode`` calls). The file names are
written out here rather than taken from the reader's table, so a wrong
name there fails the tests.
"""

import io
import os
import pickle
import struct
import tarfile
from typing import ClassVar

import numpy as np

# numpy's array reconstructor, whatever module holds it in this numpy.
_RECONSTRUCT = np.empty(0).__reduce__()[0]

CIFAR10 = {'folder': 'cifar-10-batches-py',
           'archive': 'cifar-10-python.tar.gz',
           'train': [f'data_batch_{i}' for i in range(1, 6)],
           'test': 'test_batch'}
CIFAR100 = {'folder': 'cifar-100-python',
            'archive': 'cifar-100-python.tar.gz',
            'train': ['train'], 'test': 'test'}


# pylint: disable-next=protected-access
_PurePickler = pickle._Pickler  # the Python one: its dispatch is a table


class Py2Pickler(_PurePickler):
    """Protocol 2 as Python 2's cPickle wrote it: str as a byte string."""

    dispatch: ClassVar[dict] = dict(_PurePickler.dispatch)

    def save_string(self, obj):
        raw = obj if isinstance(obj, bytes) else obj.encode('latin1')
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack('<i', len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_string
    dispatch[str] = save_string

    def save_global(self, obj, name=None):
        if obj is _RECONSTRUCT:  # the name numpy < 2 wrote
            self.write(pickle.GLOBAL + b'numpy.core.multiarray\n'
                       b'_reconstruct\n')
            self.memoize(obj)
            return
        super().save_global(obj, name)


def dumps(obj) -> bytes:
    """``obj`` pickled as a Python 2 CIFAR batch file is."""
    out = io.BytesIO()
    Py2Pickler(out, protocol=2).dump(obj)
    return out.getvalue()


def batch(images, labels, label_key='labels', title='batch', **more) -> dict:
    """A batch dict as in the real files (bytes keys, CHW rows).

    Args:
      images: [n, 32, 32, 3] uint8.
      labels: [n] ints.
      label_key: 'labels' (CIFAR-10) or 'fine_labels' (CIFAR-100).
      title: the batch_label text.
      **more: further keys (e.g. coarse_labels=[...]).
    """
    images = np.asarray(images, np.uint8)
    entry = {b'batch_label': title.encode(),
             label_key.encode(): [int(v) for v in labels],
             b'data': images.transpose(0, 3, 1, 2).reshape(len(images), -1),
             b'filenames': [f'img_{i:05d}.png'.encode()
                            for i in range(len(images))]}
    entry.update({k.encode(): v for k, v in more.items()})
    return entry


def write_folder(root, name, images, labels, num_train):
    """The extracted folder of CIFAR ``name`` under ``root``; its path.

    Args:
      root: where the folder goes.
      name: 'cifar10' or 'cifar100'.
      images: [n, 32, 32, 3] uint8, the train rows then the test rows.
      labels: [n] class ids (fine labels for CIFAR-100).
      num_train: rows of the training files (CIFAR-10 spreads them over
        its five batches).
    """
    layout = CIFAR10 if name == 'cifar10' else CIFAR100
    folder = os.path.join(root, layout['folder'])
    os.makedirs(folder)
    parts = np.array_split(np.arange(num_train), len(layout['train']))
    parts.append(np.arange(num_train, len(images)))
    files = [*layout['train'], layout['test']]
    for file, rows in zip(files, parts):
        if name == 'cifar10':
            entry = batch(images[rows], labels[rows], title=file)
        else:
            entry = batch(images[rows], labels[rows], 'fine_labels', file,
                          coarse_labels=[int(v) // 5 for v in labels[rows]])
        with open(os.path.join(folder, file), 'wb') as f:
            f.write(dumps(entry))
    return folder


def write_archive(folder, path=None):
    """``folder`` as the .tar.gz the CIFAR page serves; its path."""
    name = os.path.basename(folder)
    layout = CIFAR10 if name == CIFAR10['folder'] else CIFAR100
    path = path or os.path.join(os.path.dirname(folder), layout['archive'])
    with tarfile.open(path, 'w:gz') as tar:
        tar.add(folder, arcname=name)
    return path


def random_rows(n, num_classes=10, seed=0):
    """(images [n, 32, 32, 3] uint8, class_ids [n] int64) at random."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
            rng.integers(0, num_classes, n))
