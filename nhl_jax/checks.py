"""Small value checks shared by every layer (configs, data, retrieval)."""

import numbers
import os
import zipfile

import numpy as np

from nhl_jax.errors import UsageError


def is_int(value) -> bool:
    """Whether ``value`` is an integer (NumPy's too), but not a bool."""
    return (isinstance(value, numbers.Integral)
            and not isinstance(value, (bool, np.bool_)))


def positive_or_unset(value, flag: str, unset: str) -> None:
    """Raises unless ``value`` is None or a positive int.

    Args:
      value: e.g. a ``--batch_size``.
      flag: the flag or keyword in the message.
      unset: what leaving it unset means, e.g. "the run's eval batch size".

    Raises:
      UsageError: naming the value and the fix.
    """
    if value is not None and not (is_int(value) and value > 0):
        raise UsageError(f'{flag} must be a positive int, or unset for '
                         f'{unset}; got {value!r}.')


def existing_folder(path: str, what: str) -> None:
    """Raises unless the folder that ``path`` goes into exists.

    A library write checks this first, so that its error names the folder
    rather than the temporary file an atomic write makes beside ``path``.

    Args:
      path: the file to write.
      what: the file in the message, e.g. 'codes file'.

    Raises:
      UsageError: the folder is missing or is a file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f'cannot write {what} {path!r}: folder {folder!r} '
                         'does not exist (or is a file); make it first, e.g. '
                         'os.makedirs(folder, exist_ok=True).')


def writable_file(path: str, flag: str) -> str:
    """Checks, before any work, that a command can write the file ``path``.

    Its folder may be missing (``make_folder`` makes it just before the
    write); the nearest folder above that exists must be writable.

    Args:
      path: the file a flag names (``~`` is expanded).
      flag: the flag, e.g. '--output', named in the fix.

    Returns:
      ``path`` with ``~`` expanded.

    Raises:
      UsageError: ``path`` is a folder, a file stands where a folder must
        be, or nothing may be written there.
    """
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        raise UsageError(f'{flag} {path!r} is a folder; name a file in it, '
                         f'e.g. {flag}={os.path.join(path, "out")}.')
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise UsageError(f'{flag} {path!r}: {folder!r} is a file, not a '
                         f'folder; choose another {flag}.')
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f'{flag} {path!r}: folder {folder!r} is not '
                         f'writable; fix its permissions or choose another '
                         f'{flag}.')
    return path


def make_folder(path: str) -> None:
    """Makes the missing folders of the file ``path`` (``writable_file``
    checked them)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def load_npy(path: str, what: str) -> np.ndarray:
    """The array of an .npy file, or a one-line error naming the file.

    Args:
      path: the file.
      what: what it should hold, e.g. '[Q, H, W, C] uint8 images'.

    Raises:
      UsageError: ``path`` is missing, not an .npy, or an .npz archive.
    """
    loaded = _np_load(path, f'an .npy of {what}')
    if not isinstance(loaded, np.ndarray):
        loaded.close()
        raise UsageError(f'{path!r} is an .npz archive, not an .npy of '
                         f'{what}.')
    return loaded


def load_images(path: str, flag: str) -> np.ndarray:
    """[N, H, W, C] uint8 images of an .npy file, or a one-line error.

    Args:
      path: the file.
      flag: the flag that named it, for the message ('--images').

    Raises:
      UsageError: not an .npy of 4-D uint8 images, with the fix.
    """
    images = load_npy(path, '[N, H, W, C] uint8 images')
    check_images(images, f'{flag} {path!r}')
    return images


def check_images(images: np.ndarray, what: str) -> None:
    """Raises unless ``images`` are [N, H, W, C] uint8 (the encoders' input).

    Args:
      images: the array.
      what: what holds them, for the message ('images', '--images x.npy').

    Raises:
      UsageError: naming the dtype and shape found, and the fix.
    """
    if images.ndim != 4 or images.dtype != np.uint8:
        raise UsageError(
            f'{what} holds {images.dtype} of shape {images.shape}, not '
            '[N, H, W, C] uint8 images; for one image use x[None], add a '
            'channel axis to grey ones (x[..., None]) and store pixels as '
            'uint8 0..255.')


def load_npz(path: str, what: str) -> np.lib.npyio.NpzFile:
    """An open .npz archive (a context manager), or a one-line error.

    Args:
      path: the file.
      what: what it should be, e.g. 'a codes file (an .npz written by
        nhl-jax encode)'.

    Raises:
      UsageError: ``path`` is missing, not an .npz, or one bare array.
    """
    loaded = _np_load(path, what)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise UsageError(f'{path!r} is not {what}: it holds one bare array.')
    return loaded


def _np_load(path: str, what: str):
    if not os.path.isfile(path):
        raise UsageError(f'{path!r} does not exist (or is a folder); pass '
                         f'{what}.')
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        # A text file, a truncated archive: NumPy's own words name its
        # internals (pickles, magic strings), not what the file should be.
        raise UsageError(f'{path!r} is not {what}: NumPy cannot read it as '
                         '.npy or .npz.') from None
