"""A loaded bundle: encode images to packed codes and search the database.

``load(directory)`` checks the bundle (every file and its SHA-256, the
platform) and returns a ``Searcher``; nothing of the training code is
imported, only jax, numpy, ``nhl_jax.retrieval`` and (if installed)
faiss::

    searcher = load('bundle')
    codes = searcher.encode(images)          # {bits: [Q, ceil(bits / 8)]}
    hits = searcher.search(images, k=10, bits=32)
    hits.ids, hits.distances                 # [Q, 10] each
"""

import importlib.util
import os
from typing import NamedTuple

import jax
import numpy as np

from nhl_jax import retrieval
from nhl_jax.errors import UsageError
from nhl_jax.serving import bundle

BACKENDS = ('faiss', 'numpy')


class Neighbours(NamedTuple):
    """Top-k database items per query, nearest first, ties by row."""

    ids: np.ndarray  # [Q, k] int64 ids of the items in their dataset
    distances: np.ndarray  # [Q, k] int32 Hamming distances
    rows: np.ndarray  # [Q, k] int64 rows of the bundle's database


class RangeNeighbours(NamedTuple):
    """Database items within a radius, in compressed rows (faiss's layout).

    Query q's items are ``ids[lims[q]:lims[q + 1]]`` (and the same slice of
    ``distances`` and ``rows``), by distance, then row.
    """

    lims: np.ndarray  # [Q + 1] int64
    ids: np.ndarray  # [T] int64
    distances: np.ndarray  # [T] int32
    rows: np.ndarray  # [T] int64

    def of(self, query: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, distances) of one query."""
        span = slice(self.lims[query], self.lims[query + 1])
        return self.ids[span], self.distances[span]


def load(directory: str, *, backend: str | None = None) -> 'Searcher':
    """Reads and checks a bundle written by ``nhl-jax export``.

    Args:
      directory: the bundle.
      backend: 'faiss' (the bundle's index files), 'numpy' (exact NumPy
        ranking) or None: faiss when it is installed.

    Returns:
      A ``Searcher``.

    Raises:
      UsageError: a missing or changed file, another bundle format, an
        encoder without this platform, or an unknown backend.
    """
    backend = _backend(backend)
    manifest = bundle.read_manifest(directory)
    bundle.verify(directory, manifest)
    bundle.check_platform(manifest, directory)
    encoder = _deserialize(directory, manifest)
    database = retrieval.load_codes(os.path.join(directory, bundle.DATABASE))
    return Searcher(directory, manifest, encoder, database, backend)


def _backend(backend):
    """The backend asked for, or faiss when it is installed."""
    has_faiss = importlib.util.find_spec('faiss') is not None
    if backend is None:
        return 'faiss' if has_faiss else 'numpy'
    if backend not in BACKENDS:
        raise UsageError(f'Unknown search backend {backend!r}; choose one of '
                         f'{list(BACKENDS)}.')
    if backend == 'faiss' and not has_faiss:
        raise UsageError("backend='faiss' needs faiss: pip install faiss-cpu, "
                         "or use backend='numpy'.")
    return backend


def _deserialize(directory, manifest):
    """The bundle's ``jax.export.Exported`` encoder."""
    path = os.path.join(directory, manifest['encoder']['file'])
    with open(path, 'rb') as f:
        serialized = bytearray(f.read())
    try:
        return jax.export.deserialize(serialized)
    except Exception as e:  # noqa: BLE001 (jax raises many types)
        reason = str(e).strip().splitlines()[0][:200] if str(e) else ''
        raise UsageError(
            f'{path} cannot be read by jax {jax.__version__} '
            f'({type(e).__name__}: {reason}); it was exported with jax '
            f'{manifest["versions"]["jax"]}: install that version, or '
            're-export the run with this one.') from None


class Searcher:
    """An exported encoder with its database, searched at any trained length.

    Attributes:
      bits: the code lengths, sorted.
      input_shape: (H, W, C) of the images the encoder takes (uint8).
      ids: [N] int64 ids of the database items in their dataset.
      labels: [N, C] float32 labels of the database items.
      manifest: the bundle's manifest.
      backend: 'faiss' or 'numpy'.
    """

    def __init__(self, directory, manifest, encoder, database, backend):
        self.directory = directory
        self.manifest = manifest
        self.bits = tuple(manifest['bits'])
        self.input_shape = tuple(manifest['input']['shape'][1:])
        self.batch_size = manifest['encoder']['batch_size']
        self.backend = backend
        self.ids = database.ids
        self.labels = database.labels
        self._database = database
        self._encode = jax.jit(encoder.call)
        self._indexes = {}

    def encode(self, images, *, batch_size: int | None = None
               ) -> dict[int, np.ndarray]:
        """Packed codes of every length, as ``nhl-jax encode`` gives them.

        Args:
          images: [Q, H, W, C] uint8 images, Q >= 1.
          batch_size: images per call of the encoder (default: the run's
            evaluation batch).

        Returns:
          {bits: [Q, ceil(bits / 8)] uint8} (``retrieval.pack_codes``).

        Raises:
          ValueError: images of another shape or dtype, or an encoder
            output that is NaN (it has no sign).
        """
        images = self._check_images(images)
        size = batch_size or self.batch_size
        if size < 1:
            raise UsageError(f'batch_size must be >= 1, got {batch_size}.')
        chunks = [self._encode_chunk(images[start:start + size], size)
                  for start in range(0, len(images), size)]
        return {b: np.concatenate([c[i] for c in chunks])
                for i, b in enumerate(self.bits)}

    def _encode_chunk(self, images, size):
        """Codes of one chunk, padded to a power of two up to ``size``.

        Padding with copies of the last row is what the run's evaluation
        does: a full chunk is the computation ``nhl-jax encode`` ran, and
        at most log2(size) + 1 shapes are ever compiled.
        """
        count = len(images)
        padded = min(size, 1 << (count - 1).bit_length())
        batch = np.concatenate(
            [images, np.repeat(images[-1:], padded - count, axis=0)])
        codes, nan = jax.device_get(self._encode(batch))
        if nan[:count].any():
            raise ValueError(
                f'the encoder output holds NaN for {int(nan[:count].sum())} '
                'image(s), which have no sign; check the images and the '
                'run (did its training diverge?)')
        return [c[:count] for c in codes]

    def search(self, queries, k: int = 10, *,
               bits: int | None = None) -> Neighbours:
        """The k nearest database items of each query, ties by row.

        faiss's ``IndexBinaryFlat`` keeps the lowest rows at a tied k-th
        distance too (faiss 1.15; the tests compare it with the NumPy
        ranking), so both backends return the same items.

        Args:
          queries: [Q, H, W, C] uint8 images, or [Q, ceil(bits / 8)] uint8
            packed codes.
          k: neighbours per query (capped at the database size).
          bits: the code length (default: the longest).

        Returns:
          ``Neighbours``, [Q, k] each.
        """
        bits = self._check_bits(bits)
        found = self._index(bits).search(self._packed(queries, bits), k)
        return Neighbours(self.ids[found.indices], found.distances,
                          found.indices)

    def range_search(self, queries, radius: int, *,
                     bits: int | None = None) -> RangeNeighbours:
        """Every database item at Hamming distance <= ``radius``.

        Args and returns as ``search``, with ``RangeNeighbours``.
        """
        bits = self._check_bits(bits)
        found = self._index(bits).range_search(self._packed(queries, bits),
                                               radius)
        return RangeNeighbours(found.lims, self.ids[found.indices],
                               found.distances, found.indices)

    def _check_bits(self, bits):
        bits = max(self.bits) if bits is None else bits
        if bits not in self.bits:
            raise UsageError(f'this bundle has no {bits}-bit codes; choose '
                             f'bits in {list(self.bits)}.')
        return bits

    def _check_images(self, images):
        images = np.asarray(images)
        if (images.dtype != np.uint8 or images.ndim != 4
                or images.shape[1:] != self.input_shape or not len(images)):
            wanted = ', '.join(map(str, ('Q', *self.input_shape)))
            raise UsageError(
                f'images must be uint8 [{wanted}] with Q >= 1 (pixels '
                f'0..255), got {images.dtype} of shape {images.shape}; '
                'convert them as the run\'s dataset was.')
        return images

    def _packed(self, queries, bits):
        """[Q, ceil(bits / 8)] packed query codes, of images or codes."""
        queries = np.asarray(queries)
        if queries.ndim == 2:
            return retrieval.check_packed(queries, bits, 'packed queries')
        if queries.ndim != 4:
            raise UsageError(
                f'queries must be uint8 images [Q, H, W, C] or packed codes '
                f'[Q, {-(-bits // 8)}], got shape {queries.shape}.')
        return self.encode(queries)[bits]

    def _index(self, bits) -> retrieval.HammingIndex:
        """The search index of one length, built on first use."""
        if bits not in self._indexes:
            db = retrieval.codes_of_length(self._database, bits)
            if self.backend == 'numpy':
                self._indexes[bits] = retrieval.numpy_index(db, bits)
            else:
                import faiss  # an optional dependency, checked by load()
                index = faiss.read_index_binary(os.path.join(
                    self.directory, self.manifest['faiss'][str(bits)]))
                self._indexes[bits] = retrieval.faiss_index(db, bits,
                                                            index=index)
        return self._indexes[bits]
