"""Exact and approximate Hamming search over packed codes.

``build_index(db_packed, bits, backend=...)`` returns a ``HammingIndex``
with ``search(q_packed, k)`` (top-k, ties broken stably by database row)
and ``range_search(q_packed, radius)`` (every item at Hamming distance <=
radius, the DCH protocol's convention). The 'numpy' backend is exact:
popcount of the XOR (``hamming``), in query chunks of bounded memory. The
'faiss' backend (the optional ``faiss`` extra, ``faiss_search``) wraps
``IndexBinaryFlat`` (exact), ``IndexBinaryHNSW`` or
``IndexBinaryMultiHash`` (approximate, for large databases); see
``faiss_index``. Codes are packed as in ``codes``::

    packed = pack_codes(sign_codes(h))                # [N, ceil(K / 8)]
    index = build_index(prefix_codes(packed, 32), 32)
    result = index.search(prefix_codes(q_packed, 32), k=10)
    result.indices, result.distances                  # [Q, 10] each
"""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from nhl_jax.retrieval import _inputs, faiss_search, hamming
from nhl_jax.retrieval.codes import check_packed

FAISS_KINDS = faiss_search.FAISS_KINDS

# Bytes the [chunk, N] working arrays of a search chunk may hold, and
# bytes per (query, item) pair: the XOR word and distances, then the
# ranking keys and their partition.
_CHUNK_BYTES = 64 * 2**20
_PAIR_BYTES = 24


class SearchResult(NamedTuple):
    """Top-k neighbours, nearest first, ties by ascending database row."""

    indices: np.ndarray  # [Q, k] int64 database rows
    distances: np.ndarray  # [Q, k] int32 Hamming distances


class RangeResult(NamedTuple):
    """Neighbours within a radius, in compressed rows (faiss's layout).

    Query q's results are ``indices[lims[q]:lims[q + 1]]`` (and the same
    slice of ``distances``), sorted by distance, then database row.
    """

    lims: np.ndarray  # [Q + 1] int64
    indices: np.ndarray  # [T] int64
    distances: np.ndarray  # [T] int32

    def of(self, query: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, distances) of one query."""
        span = slice(self.lims[query], self.lims[query + 1])
        return self.indices[span], self.distances[span]


class HammingIndex(NamedTuple):
    """A searchable database of packed codes (``build_index``).

    Attributes:
      search: ``search(q_packed [Q, B], k) -> SearchResult``; k is capped
        at the database size.
      range_search: ``range_search(q_packed, radius) -> RangeResult``: all
        items at distance <= radius.
      bits: K, the code length.
      size: N, the number of database codes.
    """

    search: Callable[[np.ndarray, int], SearchResult]
    range_search: Callable[[np.ndarray, int], RangeResult]
    bits: int
    size: int


@_inputs.host_only
def numpy_index(db_packed, bits: int, *,
                chunk_size: int | None = None) -> HammingIndex:
    """Exact Hamming search in NumPy (``hamming``), in query chunks.

    Args:
      db_packed: [N, ceil(K / 8)] uint8 database codes (``pack_codes``).
      bits: K.
      chunk_size: queries compared at once; None keeps each chunk's
        [chunk, N] working arrays under 64 MiB.

    Returns:
      A ``HammingIndex``.
    """
    engine = hamming.Hamming(_check_database(db_packed, bits), bits)
    chunk = chunk_size or max(1, _CHUNK_BYTES // (_PAIR_BYTES * engine.size))

    def by_chunks(q, run):
        """``run([B, N] distances)`` over chunks of q, concatenated."""
        parts = hamming.map_chunks(
            lambda start, stop: run(engine(q[start:stop])), len(q), chunk,
            num_threads=1)
        return [np.concatenate(part) for part in zip(*parts)]

    def top_k(q, k):
        return by_chunks(q, hamming.Ranking(bits, engine.size, k).top_k)

    def within(q, radius):
        counts, rows, dist = by_chunks(
            q, lambda dist: hamming.within(dist, radius))
        return np.concatenate([[0], np.cumsum(counts)]), rows, dist

    return _hamming_index(top_k, within, bits, engine.size)


@_inputs.host_only
def faiss_index(db_packed, bits: int, *, kind: str = 'flat',
                neighbors: int = 32, tables: int = 3,
                index=None) -> HammingIndex:
    """Hamming search with a faiss binary index (``pip install .[faiss]``).

    Args:
      db_packed: [N, ceil(K / 8)] uint8 database codes.
      bits: K.
      kind: a key of ``FAISS_KINDS``: 'flat' (exact), 'hnsw' (approximate,
        top-k only) or 'multihash' (exact for radius < tables); how they
        and faiss's ties and radii compare: ``faiss_search``.
      neighbors: HNSW's M, links per node.
      tables: multi-hash tables.
      index: a faiss index of ``kind`` that already holds ``db_packed``
        (``faiss.read_index_binary`` of a saved one), or None to build it.

    Returns:
      A ``HammingIndex``.
    """
    found = faiss_search.FaissSearch(_check_database(db_packed, bits), bits,
                                     kind, neighbors=neighbors, tables=tables,
                                     index=index)
    return _hamming_index(found.top_k, found.within, bits, found.size)


def _hamming_index(top_k, within, bits, size) -> HammingIndex:
    """A ``HammingIndex`` of one backend, with its arguments checked.

    Args:
      top_k: ``(q, k) -> ([Q, k] rows, [Q, k] distances)`` for checked
        [Q, B] packed queries q and 1 <= k <= size.
      within: ``(q, radius) -> (lims, rows, distances)`` (``RangeResult``).
      bits: K.
      size: N.
    """

    @_inputs.host_only
    def search(q_packed, k):
        _check_count(k, 'k')
        rows, dist = top_k(_check_queries(q_packed, bits), min(k, size))
        return SearchResult(rows.astype(np.int64), dist.astype(np.int32))

    @_inputs.host_only
    def range_search(q_packed, radius):
        _check_count(radius, 'radius', minimum=0)
        lims, rows, dist = within(_check_queries(q_packed, bits), radius)
        return RangeResult(lims.astype(np.int64), rows.astype(np.int64),
                           dist.astype(np.int32))

    return HammingIndex(search, range_search, bits, size)


def _check_database(db_packed, bits):
    db = np.ascontiguousarray(check_packed(db_packed, bits, 'db_packed'))
    if len(db) == 0:
        raise ValueError('db_packed is empty; index at least one code')
    return db


def _check_queries(q_packed, bits):
    q = check_packed(q_packed, bits, 'q_packed')
    if len(q) == 0:
        raise ValueError('q_packed is empty; pass at least one query code')
    return np.ascontiguousarray(q)


def _check_count(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or value < minimum:
        raise ValueError(f'{name} must be an int >= {minimum}, got {value!r}')


BACKENDS = {'numpy': numpy_index, 'faiss': faiss_index}


@_inputs.host_only
def build_index(db_packed, bits: int, *, backend: str = 'numpy',
                **options) -> HammingIndex:
    """A ``HammingIndex`` from the backend named ``backend``.

    Args:
      db_packed: [N, ceil(K / 8)] uint8 database codes.
      bits: K.
      backend: a key of ``BACKENDS`` ('numpy' exact; 'faiss' optional).
      **options: keyword arguments of ``numpy_index`` or ``faiss_index``.
    """
    if backend not in BACKENDS:
        raise ValueError(f'Unknown search backend {backend!r}; choose one of '
                         f'{sorted(BACKENDS)}')
    return BACKENDS[backend](db_packed, bits, **options)
