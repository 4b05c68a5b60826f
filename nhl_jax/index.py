"""Packed binary codes, a codes file and exact Hamming search.

±1 codes [N, K] are stored as bits, +1 -> 1 and -1 -> 0, packed eight to a
byte by ``numpy.packbits`` (big-endian within a byte: code bit 0 is the
most significant bit of byte 0), so one code takes ceil(K / 8) bytes and
unused trailing bits are 0.

**Nested codes.** NHL's code of length b is the first b bits of the longest
code, so one export of the longest codes serves every length:
``prefix_codes(packed, b)`` keeps the first ceil(b / 8) bytes and clears
the bits past b in the last one. When b % 8 == 0 (8, 16, 32, 64, ...) it is
a plain byte slice, a view that copies nothing.

**Search.** ``build_index(db_packed, bits, backend=...)`` returns a
``HammingIndex`` with ``search(q_packed, k)`` (top-k, ties broken stably by
database row) and ``range_search(q_packed, radius)`` (every item at
Hamming distance <= radius, the DCH protocol's convention). The 'numpy'
backend is exact: popcount of the XOR (``nhl_jax.hamming``), in query
chunks of bounded memory. The 'faiss' backend (the optional ``faiss``
extra, ``nhl_jax.index_faiss``) wraps ``IndexBinaryFlat`` (exact),
``IndexBinaryHNSW`` or ``IndexBinaryMultiHash`` (approximate, for large
databases); see ``faiss_index``.

    packed = pack_codes(sign_codes(h))                # [N, ceil(K / 8)]
    index = build_index(prefix_codes(packed, 32), 32)
    result = index.search(prefix_codes(q_packed, 32), k=10)
    result.indices, result.distances                  # [Q, 10] each
"""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from nhl_jax import hamming, index_faiss, runlog

PARAMS = ('last', 'best')
FAISS_KINDS = index_faiss.FAISS_KINDS

# Bytes the [chunk, N] working arrays of a search chunk may hold, and
# bytes per (query, item) pair: the XOR word and distances, then the
# ranking keys and their partition.
_CHUNK_BYTES = 64 * 2**20
_PAIR_BYTES = 24


def _num_bytes(bits: int) -> int:
    return -(-bits // 8)


def pack_codes(codes) -> np.ndarray:
    """Packs ±1 codes into bits (+1 -> 1, -1 -> 0).

    Args:
      codes: [N, K] codes of -1 and +1 (e.g. ``evaluate.sign_codes(h)``).

    Returns:
      [N, ceil(K / 8)] uint8; trailing bits past K are 0.

    Raises:
      ValueError: if ``codes`` is not a 2-D array of ±1.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] == 0:
        raise ValueError(f'codes must be a [N, K] array with K >= 1, got '
                         f'shape {codes.shape}; for one code use codes[None]')
    if not np.all((codes == 1) | (codes == -1)):
        raise ValueError('codes must contain only -1 and +1; binarise '
                         'outputs with nhl_jax.evaluate.sign_codes(h) first')
    return hamming.pack(codes)


def unpack_codes(packed, bits: int) -> np.ndarray:
    """Inverse of ``pack_codes``: [N, ceil(K / 8)] uint8 -> [N, K] int8 ±1."""
    packed = check_packed(packed, bits)
    unpacked = np.unpackbits(packed, axis=1, count=bits)
    return (2 * unpacked.astype(np.int8) - 1).astype(np.int8)


def prefix_codes(packed, bits: int) -> np.ndarray:
    """The first ``bits`` bits of packed codes: a shorter nested code.

    Equal to ``pack_codes(codes[:, :bits])``. When ``bits % 8 == 0`` this
    is a byte slice (a view); otherwise the last kept byte is copied with
    its bits past ``bits`` cleared.

    Args:
      packed: [N, B] uint8 packed codes of any length >= ``bits``.
      bits: b, the prefix length, 1 <= b <= 8 B.

    Returns:
      [N, ceil(b / 8)] uint8.
    """
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype != np.uint8:
        raise ValueError(f'packed codes must be a [N, B] uint8 array, got '
                         f'{packed.dtype} of shape {packed.shape}')
    if not 1 <= bits <= 8 * packed.shape[1]:
        raise ValueError(f'cannot cut a {bits}-bit prefix from '
                         f'{8 * packed.shape[1]}-bit packed codes; choose '
                         f'1 <= bits <= {8 * packed.shape[1]}')
    head = packed[:, :_num_bytes(bits)]
    if bits % 8 == 0:
        return head
    head = head.copy()
    head[:, -1] &= np.uint8((0xFF << (8 - bits % 8)) & 0xFF)
    return head


def check_packed(packed, bits: int, name: str = 'packed') -> np.ndarray:
    """Checks [N, ceil(bits / 8)] uint8 codes with zero padding bits."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise ValueError(f'{name} must be a [N, B] uint8 array of packed '
                         f'codes (pack_codes), got {packed.dtype} of shape '
                         f'{packed.shape}')
    if packed.shape[1] != _num_bytes(bits):
        raise ValueError(f'{name} has {packed.shape[1]} bytes per code but '
                         f'{bits}-bit codes take {_num_bytes(bits)}; cut them '
                         f'with prefix_codes(packed, {bits})')
    if bits % 8 and np.any(packed[:, -1] & ((1 << (8 - bits % 8)) - 1)):
        raise ValueError(f'{name} has bits set past bit {bits}; cut codes '
                         f'with prefix_codes(packed, {bits}), not a slice')
    return packed


# --------------------------------------------------------------- codes file


class CodeSet(NamedTuple):
    """Packed codes of one split, with what is needed to use them.

    Attributes:
      packed: stored length b -> [N, ceil(b / 8)] uint8 codes. Nested
        codes store only the longest length.
      lengths: the trained code lengths, sorted.
      labels: [N, C] float32 multi-hot labels.
      ids: [N] int64 row of each item in its source dataset.
      params: 'last' (the final parameters) or 'best' (each length's best
        parameters, as results.json's ``map`` reports).
      nested: True when every length is a prefix of the one stored code
        (one NHL model: ``params='last'``).
    """

    packed: dict[int, np.ndarray]
    lengths: tuple[int, ...]
    labels: np.ndarray  # [N, C] float32
    ids: np.ndarray  # [N] int64
    params: str
    nested: bool


def codes_of_length(code_set: CodeSet, bits: int) -> np.ndarray:
    """[N, ceil(bits / 8)] packed codes of one length from a ``CodeSet``.

    Nested sets cut any length up to the longest (``prefix_codes``);
    lengths between the trained ones are valid prefixes of the nested
    layer, but only the trained ones were optimised.
    """
    if bits in code_set.packed:
        return code_set.packed[bits]
    longest = max(code_set.packed)
    if code_set.nested and 1 <= bits <= longest:
        return prefix_codes(code_set.packed[longest], bits)
    valid = (f'1..{longest}' if code_set.nested
             else str(sorted(code_set.packed)))
    raise ValueError(f'no {bits}-bit codes in this set ({code_set.params} '
                     f'params); choose bits in {valid}')


def save_codes(path: str, code_set: CodeSet) -> None:
    """Writes a ``CodeSet`` to an .npz, atomically (old file or new file).

    Keys: ``packed_<b>`` per stored length, ``bits`` (stored lengths),
    ``lengths``, ``labels``, ``ids``, ``params`` and ``nested``.
    """
    arrays = _code_set_arrays(code_set)
    with runlog.atomic_file(path, 'wb', suffix='.npz') as f:
        np.savez(f, **arrays)


def _code_set_arrays(code_set: CodeSet) -> dict[str, np.ndarray]:
    """Validates a ``CodeSet`` and lays it out as named arrays."""
    if code_set.nested and len(code_set.packed) != 1:
        raise ValueError(f'nested codes store one (the longest) length, got '
                         f'{sorted(code_set.packed)}')
    if code_set.params not in PARAMS:
        raise ValueError(f'params must be one of {PARAMS}, got '
                         f'{code_set.params!r}')
    count = len(code_set.ids)
    arrays = {}
    for b, packed in sorted(code_set.packed.items()):
        packed = check_packed(packed, b, f'{b}-bit codes')
        if len(packed) != count:
            raise ValueError(f'{b}-bit codes have {len(packed)} rows but '
                             f'there are {count} ids; one code per item')
        arrays[f'packed_{b}'] = packed
    labels = np.asarray(code_set.labels, np.float32)
    if labels.ndim != 2 or len(labels) != count:
        raise ValueError(f'labels must be [N, C] with N={count}, got shape '
                         f'{labels.shape}')
    return dict(arrays, bits=np.array(sorted(code_set.packed), np.int64),
                lengths=np.array(code_set.lengths, np.int64), labels=labels,
                ids=np.asarray(code_set.ids, np.int64),
                params=np.array(code_set.params),
                nested=np.array(bool(code_set.nested)))


def load_codes(path: str) -> CodeSet:
    """Reads a ``CodeSet`` written by ``save_codes``."""
    with np.load(path, allow_pickle=False) as f:
        try:
            stored = [int(b) for b in f['bits']]
            return CodeSet(
                packed={b: check_packed(f[f'packed_{b}'], b) for b in stored},
                lengths=tuple(int(b) for b in f['lengths']),
                labels=f['labels'], ids=f['ids'], params=str(f['params']),
                nested=bool(f['nested']))
        except KeyError as e:
            raise ValueError(f'{path} is not a codes file (no {e} array); '
                             'write one with experiments/encode.py') from None


def read_query_codes(path: str, bits: int):
    """Query codes of length ``bits`` from a file.

    Args:
      path: a codes file (.npz from ``save_codes``), or an .npy holding
        [Q, K] ±1 codes (any signed dtype) or [Q, B] packed uint8 bytes
        (1-D: one code). Longer codes are cut to their ``bits`` prefix.
      bits: the code length to search with.

    Returns:
      ``(packed [Q, ceil(bits / 8)] uint8, ids [Q] int64 or None)``.
    """
    if path.endswith('.npz'):
        code_set = load_codes(path)
        return codes_of_length(code_set, bits), code_set.ids
    codes = np.load(path, allow_pickle=False)
    codes = codes[None] if codes.ndim == 1 else codes
    width = 8 * codes.shape[-1] if codes.dtype == np.uint8 else codes.shape[-1]
    if codes.ndim != 2 or width < bits:
        raise ValueError(f'{path} holds {codes.dtype} codes of shape '
                         f'{codes.shape}, not [Q, >= {bits}-bit] codes; '
                         'save ±1 codes or packed uint8 bytes')
    if codes.dtype == np.uint8:
        return prefix_codes(codes, bits), None
    return pack_codes(codes[:, :bits]), None


# ------------------------------------------------------------------ search


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


def numpy_index(db_packed, bits: int, *,
                chunk_size: int | None = None) -> HammingIndex:
    """Exact Hamming search in NumPy (``nhl_jax.hamming``), in query chunks.

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


def faiss_index(db_packed, bits: int, *, kind: str = 'flat',
                neighbors: int = 32, tables: int = 3) -> HammingIndex:
    """Hamming search with a faiss binary index (``pip install .[faiss]``).

    Args:
      db_packed: [N, ceil(K / 8)] uint8 database codes.
      bits: K.
      kind: a key of ``FAISS_KINDS``: 'flat' (exact), 'hnsw' (approximate,
        top-k only) or 'multihash' (exact for radius < tables); how they
        and faiss's ties and radii compare: ``nhl_jax.index_faiss``.
      neighbors: HNSW's M, links per node.
      tables: multi-hash tables.

    Returns:
      A ``HammingIndex``.
    """
    found = index_faiss.FaissSearch(_check_database(db_packed, bits), bits,
                                    kind, neighbors=neighbors, tables=tables)
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

    def search(q_packed, k):
        _check_count(k, 'k')
        rows, dist = top_k(_check_queries(q_packed, bits), min(k, size))
        return SearchResult(rows.astype(np.int64), dist.astype(np.int32))

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
