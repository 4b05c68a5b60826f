"""The bundle directory: its files, its manifest and their checks.

``nhl-jax export`` (``nhl_jax.cli.bundle``) writes and ``serving.load``
reads one directory::

    manifest.json       what is inside: bits, input, preprocessing, source
                        run, versions, platforms, SHA-256 of every file
    encoder.jaxexport   jax.export of images [B, H, W, C] uint8 -> packed
                        codes of every length (preprocessing included)
    database.npz        the database's packed codes, labels and ids
                        (``nhl_jax.retrieval.save_codes``)
    faiss_<b>.index     per length b, a ``faiss.IndexBinaryFlat`` of the
                        database codes (``faiss.read_index_binary``)

Every check here raises ``UsageError`` (a ``ValueError``) in one line that
names the file and the fix, before any encoding or search.
"""

import hashlib
import json
import os

import jax

from nhl_jax.errors import UsageError

FORMAT = 'nhl_jax.bundle'
VERSION = 1
MANIFEST = 'manifest.json'
ENCODER = 'encoder.jaxexport'
DATABASE = 'database.npz'
_CHUNK = 1 << 20  # bytes hashed per read


def faiss_file(bits: int) -> str:
    """The name of the faiss index of ``bits``-bit codes."""
    return f'faiss_{bits}.index'


def sha256(path: str) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: str) -> dict:
    """The manifest of the bundle in ``directory``, checked for its format.

    Raises:
      UsageError: no such bundle, an unreadable manifest, or another
        format or version.
    """
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise UsageError(f'{directory!r} is not a bundle (no {MANIFEST}); '
                         'pass the --out directory of nhl-jax export.')
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f'{path} cannot be read ({e}); copy the bundle '
                         'again or re-export it.') from None
    if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
        raise UsageError(f'{path} is not an {FORMAT} manifest; pass the '
                         '--out directory of nhl-jax export.')
    if manifest.get('version') != VERSION:
        raise UsageError(
            f'{path} has bundle version {manifest.get("version")!r}, this '
            f'nhl_jax reads version {VERSION}; re-export the run with this '
            'nhl_jax, or load it with the version that wrote it.')
    return manifest


def verify(directory: str, manifest: dict) -> None:
    """Checks that every listed file is there, with its SHA-256.

    Raises:
      UsageError: naming the first missing or changed file.
    """
    for name, digest in sorted(manifest['files'].items()):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise UsageError(f'bundle {directory!r} lacks {name}; copy the '
                             'whole directory again, or re-export it.')
        if sha256(path) != digest:
            raise UsageError(
                f'{name} of bundle {directory!r} does not match its SHA-256 '
                f'in {MANIFEST} (changed or corrupt); copy the file again, '
                'or re-export the bundle.')


def check_platform(manifest: dict, directory: str) -> str:
    """The platform jax runs on here, if the encoder was exported for it.

    Raises:
      UsageError: the bundle has no encoder for this platform.
    """
    here = jax.export.default_export_platform()
    platforms = manifest['encoder']['platforms']
    if here not in platforms:
        raise UsageError(
            f'bundle {directory!r} has an encoder for {platforms}, not for '
            f'{here!r}, where jax runs here; re-export it with '
            f'--platforms={here}, or run on one of those (JAX_PLATFORMS=cpu '
            'for the CPU).')
    return here
