"""Retrieval evaluation: Hamming ranking and mean average precision.

Everything here runs in NumPy on the host: evaluation is a ranking problem,
and XLA's CPU sort is an order of magnitude slower than NumPy's
(ecosystem.md 12). JAX arrays are accepted and copied to the host.

mAP follows DeepHash-pytorch's ``CalcTopMap`` (papers.md 5.3), with its
pitfalls settled explicitly:

- relevance is rel(q, b) = 1[y_q . y_b > 0] for 0/1 multi-hot labels
  [*, C], i.e. the two share a class;
- the database is ranked by ascending Hamming distance, and ties are broken
  STABLY by database index (the lower index ranks first), so results never
  depend on the sort algorithm; ``np.argsort``'s default quicksort, as in
  the reference code, orders ties arbitrarily, which moves mAP at 8 or 16
  bits, where only 9 or 17 distances exist;
- AP@k = (1/h) sum_t t / r_t over the h relevant items at 1-based ranks
  r_1 < ... < r_h within the top k. It is normalised by the hits h in the
  top k, not by all relevant items, so it is not monotone in h;
- ``top_k=None`` means all N items (the reference's ``topK=-1`` slices
  ``[0:-1]`` and silently drops the last item; that bug is not reproduced);
- a query with h = 0 has AP 0; ``zero_relevant`` chooses whether such
  queries count in the mean ('zero', DeepHash-pytorch/NHL) or are left out
  ('skip', thulab/DeepHash).

How the ranking is computed: each (query, item) pair gets one integer key
``dist << s | index << 1 | rel``, built by one float32 matmul. Keys are
unique, so any sort of them, including NumPy's fast unstable SIMD sort,
yields exactly the stable distance ranking, and the relevance bit travels
with the key, so there is no [Q, N] index array to gather through.
``top_k`` uses a partition of the same keys, which is exact for the same
reason. AP then visits only the relevant ranks. Queries go in chunks
(bounded memory) over a thread pool, since NumPy releases the GIL in
matmul, sort and partition. On 2 cores, 1,000 queries x 54,000 items at
64 bits take about 0.35 s for mAP@all (benchmarks/map_speed.py).
"""

import concurrent.futures
import contextlib
import numbers
import os

import numpy as np

try:  # Optional; see _one_blas_thread_each.
    import threadpoolctl
except ImportError:  # pragma: no cover
    threadpoolctl = None

ZERO_RELEVANT_POLICIES = ('zero', 'skip')
DEFAULT_CHUNK_SIZE = 64

# The ±1 matmuls are exact in float32 while 2 K < 2**24.
_MAX_BITS = 2**23 - 1


def sign_codes(h) -> np.ndarray:
    """Binarises continuous hash outputs to ±1 codes.

    Zero maps to +1: ``torch.sign(0) = 0`` would be a third code value that
    is neither bit and shifts every Hamming distance by 1/2.

    Args:
      h: [N, K] continuous outputs (NumPy or JAX array, any real dtype).

    Returns:
      [N, K] int8 array of -1 and +1, the same shape as ``h``.

    Raises:
      ValueError: if ``h`` contains NaN.
    """
    h = np.asarray(h)
    # h != h finds NaN in every float dtype, bfloat16 from JAX included.
    if np.any(h != h):
        raise ValueError('h contains NaN, so it has no sign; check the model '
                         'outputs (a diverged training run?) before binarising')
    return np.where(h >= 0, 1, -1).astype(np.int8)


def hamming_distances(q_codes, db_codes) -> np.ndarray:
    """All query-to-database Hamming distances, (K - q . b) / 2.

    Computed by a ±1 float32 matmul, which is exact for the supported K
    (below 2**23). The full [Q, N] matrix is materialised;
    ``average_precisions`` works in query chunks and never does.

    Args:
      q_codes: [Q, K] ±1 query codes.
      db_codes: [N, K] ±1 database codes.

    Returns:
      [Q, N] distances in the smallest unsigned dtype that holds K (uint8
      for K <= 255).
    """
    q = _as_codes(q_codes, 'q_codes')
    db = _as_codes(db_codes, 'db_codes')
    _check_same_bits(q, db)
    num_bits = q.shape[1]
    dist = q @ db.T
    np.subtract(num_bits, dist, out=dist)
    dist *= 0.5
    return dist.astype(np.min_scalar_type(num_bits))


def average_precisions(q_codes, q_labels, db_codes, db_labels, *,
                       top_k=None, chunk_size=DEFAULT_CHUNK_SIZE,
                       num_threads=None) -> np.ndarray:
    """Per-query AP@top_k of Hamming ranking (module docstring).

    Args:
      q_codes: [Q, K] ±1 query codes (e.g. from ``sign_codes``).
      q_labels: [Q, C] 0/1 multi-hot query labels (bool or numeric).
      db_codes: [N, K] ±1 database codes.
      db_labels: [N, C] 0/1 multi-hot database labels.
      top_k: number of top-ranked items to score; None scores all N.
        Values above N are treated as N.
      chunk_size: queries ranked at once. Memory is about 16 bytes per
        element of [chunk_size, N] per thread (up to 48 when most items
        are relevant).
      num_threads: threads over query chunks; None uses every CPU.

    Returns:
      [Q] float64 AP per query; 0 for a query with no relevant item in
      its top k.

    Raises:
      ValueError: for malformed inputs; the message names the fix.
    """
    aps, _ = _average_precisions_and_hits(
        q_codes, q_labels, db_codes, db_labels, top_k=top_k,
        chunk_size=chunk_size, num_threads=num_threads)
    return aps


def mean_average_precision(q_codes, q_labels, db_codes, db_labels, *,
                           top_k=None, zero_relevant='zero',
                           chunk_size=DEFAULT_CHUNK_SIZE,
                           num_threads=None) -> float:
    """mAP@top_k of Hamming ranking (module docstring).

    Args:
      q_codes: [Q, K] ±1 query codes (e.g. from ``sign_codes``).
      q_labels: [Q, C] 0/1 multi-hot query labels (bool or numeric).
      db_codes: [N, K] ±1 database codes.
      db_labels: [N, C] 0/1 multi-hot database labels.
      top_k: number of top-ranked items to score; None scores all N.
        Values above N are treated as N.
      zero_relevant: queries with no relevant item in their top k count
        as AP 0 ('zero', DeepHash-pytorch and NHL) or are left out of the
        mean ('skip', thulab/DeepHash). With 'skip' and no query having
        a hit, the mean is undefined and NaN is returned.
      chunk_size: queries ranked at once (see ``average_precisions``).
      num_threads: threads over query chunks; None uses every CPU.

    Returns:
      The mean AP as a Python float.

    Raises:
      ValueError: for malformed inputs; the message names the fix.
    """
    if zero_relevant not in ZERO_RELEVANT_POLICIES:
        raise ValueError(f'zero_relevant must be one of '
                         f'{ZERO_RELEVANT_POLICIES}, got {zero_relevant!r}')
    aps, hits = _average_precisions_and_hits(
        q_codes, q_labels, db_codes, db_labels, top_k=top_k,
        chunk_size=chunk_size, num_threads=num_threads)
    if zero_relevant == 'skip':
        aps = aps[hits > 0]
        if aps.size == 0:
            return float('nan')
    return float(np.mean(aps))


def _average_precisions_and_hits(q_codes, q_labels, db_codes, db_labels, *,
                                 top_k, chunk_size, num_threads):
    """Validates the inputs, then ranks query chunks on a thread pool.

    Returns:
      ([Q] float64 AP, [Q] int64 hits h in the top k).
    """
    _check_top_k(top_k)
    _check_positive_int(chunk_size, 'chunk_size')
    if num_threads is not None:
        _check_positive_int(num_threads, 'num_threads')
    q = _as_codes(q_codes, 'q_codes')
    db = _as_codes(db_codes, 'db_codes')
    _check_same_bits(q, db)
    q_y = _as_labels(q_labels, 'q_labels', 'q_codes', len(q))
    db_y = _as_labels(db_labels, 'db_labels', 'db_codes', len(db))
    if q_y.shape[1] != db_y.shape[1]:
        raise ValueError(
            f'q_labels has C={q_y.shape[1]} classes but db_labels has '
            f'C={db_y.shape[1]}; use the same label space for both')

    num_items = len(db)
    width = num_items if top_k is None else min(top_k, num_items)
    q_side, db_side = _relevance_operands(q_y, db_y)
    ranker = _ChunkRanker(db, db_side, width)
    # The constant column turns the matmul into the key's distance field.
    q_aug = np.hstack([q, np.ones((len(q), 1), np.float32)])
    starts = range(0, len(q), chunk_size)

    def run(start):
        stop = start + chunk_size
        return ranker(q_aug[start:stop], q_side[start:stop])

    threads = min(num_threads or _cpu_count(), len(starts))
    if threads == 1:
        results = [run(start) for start in starts]
    else:
        with _one_blas_thread_each(), \
                concurrent.futures.ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(run, starts))
    aps, hits = zip(*results)
    return np.concatenate(aps), np.concatenate(hits)


def _one_blas_thread_each():
    """Limits BLAS to one thread per caller while the chunk threads run.

    Concurrent multi-threaded OpenBLAS calls contend with each other and
    with the sorting threads (on 2 cores, mAP@all took 0.6 s instead of
    0.33 s). The limit is process-wide and is undone on exit; without the
    optional ``threadpoolctl`` nothing is limited.
    """
    if threadpoolctl is None:
        return contextlib.nullcontext()
    return threadpoolctl.threadpool_limits(1, user_api='blas')


def _relevance_operands(q_y, db_y):
    """Cheapest operands for rel = 1[y_q . y_b > 0].

    Args:
      q_y: [Q, C] 0/1 labels.
      db_y: [N, C] 0/1 labels.

    Returns:
      ([Q], [N]) class ids when every row is one-hot (an id comparison is
      several times faster than the matmul), else ([Q, C], [C, N]) float32
      multi-hot operands of a matmul (exact for 0/1 values).
    """
    if np.all(q_y.sum(axis=1) == 1) and np.all(db_y.sum(axis=1) == 1):
        ids = np.min_scalar_type(q_y.shape[1] - 1)
        return q_y.argmax(axis=1).astype(ids), db_y.argmax(axis=1).astype(ids)
    return (q_y.astype(np.float32),
            np.ascontiguousarray(db_y.T, dtype=np.float32))


def _relevance(q_side, db_side):
    """[B, N] bool relevance from ``_relevance_operands`` rows."""
    if q_side.ndim == 1:
        return q_side[:, None] == db_side[None, :]
    return (q_side @ db_side) > 0


def _key_layout(num_bits, num_items):
    """Bit layout of the ranking key ``dist << shift | index << 1 | rel``.

    Args:
      num_bits: K, so distances take values 0..K.
      num_items: N, so indices take values 0..N-1.

    Returns:
      (shift, unsigned key dtype).
    """
    shift = max(1, (num_items - 1).bit_length()) + 1
    total = num_bits.bit_length() + shift
    if total <= 32:
        return shift, np.dtype(np.uint32)
    if total <= 64:
        return shift, np.dtype(np.uint64)
    raise ValueError(f'K={num_bits} bits with N={num_items} items needs a '
                     f'{total}-bit ranking key; split the database')


class _ChunkRanker:
    """AP of query chunks against one database (shared, read-only)."""

    def __init__(self, db, db_side, width):
        """Precomputes the database side of the ranking key.

        Args:
          db: [N, K] float32 ±1 codes.
          db_side: database operand from ``_relevance_operands``.
          width: k, the number of top-ranked items scored (1 <= k <= N).
        """
        num_items, num_bits = db.shape
        shift, self.key_dtype = _key_layout(num_bits, num_items)
        # [q, 1] . [-b, K] * 2**(shift-1) = dist << shift, exactly: every
        # partial sum is an integer below 2**24 times a power of two, so
        # float32 never rounds.
        scale = np.float32(2.0 ** (shift - 1))
        db_aug = np.hstack([-db, np.full((num_items, 1), num_bits,
                                         np.float32)])
        self.db_aug_t = np.ascontiguousarray((db_aug * scale).T)  # [K+1, N]
        self.db_side = db_side
        self.index_bits = np.arange(num_items, dtype=self.key_dtype) << 1
        self.width = width

    def __call__(self, q_aug, q_side):
        """AP and hits of one chunk.

        Args:
          q_aug: [B, K+1] float32 ±1 query codes with a column of ones.
          q_side: [B] or [B, C] query operand from ``_relevance_operands``.

        Returns:
          ([B] float64 AP, [B] int64 hits).
        """
        keys = self._keys(q_aug, q_side)
        if 2 * self.width <= keys.shape[1]:
            # Keys are unique, so the partition's first k are exactly the
            # first k of the stable ranking.
            top = np.partition(keys, self.width - 1, axis=1)
            keys = np.sort(top[:, :self.width], axis=1)
        else:
            keys.sort(axis=1)
            keys = keys[:, :self.width]
        # The relevance bit is bit 0, so it survives the cast to one byte.
        relevant = keys.astype(np.uint8)
        relevant &= 1
        return _ap_of_ranked(relevant.view(np.bool_))

    def _keys(self, q_aug, q_side):
        """[B, N] unique keys ``dist << shift | index << 1 | rel``."""
        keys = (q_aug @ self.db_aug_t).astype(self.key_dtype)
        keys |= self.index_bits
        keys |= _relevance(q_side, self.db_side)
        return keys


def _ap_of_ranked(relevant):
    """AP of rows of relevance flags already in ranked order.

    Only the relevant positions are visited: for the t-th hit of a row at
    1-based rank r_t, add t / r_t.

    Args:
      relevant: [B, k] bool, relevance in ranked order.

    Returns:
      ([B] float64 AP, [B] int64 hits).
    """
    num_rows, width = relevant.shape
    flat = np.flatnonzero(relevant)  # row-major, so grouped by row
    hits = np.count_nonzero(relevant, axis=1).astype(np.int64)
    first_hit = np.cumsum(hits) - hits
    hit_number = np.arange(1, flat.size + 1) - np.repeat(first_hit, hits)
    rank = flat - np.repeat(np.arange(num_rows) * width - 1, hits)
    sums = np.zeros(num_rows)
    has_hits = hits > 0
    if flat.size:
        sums[has_hits] = np.add.reduceat(hit_number / rank,
                                         first_hit[has_hits])
    return sums / np.maximum(hits, 1), hits


def _as_codes(codes, name):
    """Checks [N, K] ±1 codes and returns them as float32."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f'{name} must be a 2-D [N, K] array of ±1 codes, got '
                         f'shape {codes.shape}; for one code use {name}[None]')
    if codes.shape[0] == 0 or codes.shape[1] == 0:
        raise ValueError(f'{name} is empty (shape {codes.shape}); pass at '
                         f'least one code of at least one bit')
    if codes.shape[1] > _MAX_BITS:
        raise ValueError(f'{name} has K={codes.shape[1]} bits; at most '
                         f'{_MAX_BITS} are supported (float32 exactness)')
    if not _is_real(codes.dtype):
        raise ValueError(f'{name} must be real ±1 codes, got dtype '
                         f'{codes.dtype}; binarise outputs with sign_codes(h) '
                         f'and map bool bits with 2 * bits - 1')
    codes = codes.astype(np.float32)
    if not np.all(np.abs(codes) == 1):
        raise ValueError(f'{name} must contain only -1 and +1; binarise '
                         f'continuous outputs with sign_codes(h), and map '
                         f'0/1 bits with 2 * bits - 1')
    return codes


def _is_real(dtype):
    """Integer or float, including JAX's bfloat16 (not a NumPy float)."""
    return dtype.kind in 'iuf' or dtype.name == 'bfloat16'


def _check_same_bits(q, db):
    if q.shape[1] != db.shape[1]:
        raise ValueError(f'q_codes has K={q.shape[1]} bits but db_codes has '
                         f'K={db.shape[1]}; encode both with the same length')


def _as_labels(labels, name, codes_name, count):
    """Checks [count, C] 0/1 labels and returns them as an array."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f'{name} must be a 2-D multi-hot [N, C] array, got '
                         f'shape {labels.shape}; one-hot encode class ids, '
                         f'e.g. np.eye(C)[ids]')
    if labels.shape[0] != count:
        raise ValueError(f'{name} has {labels.shape[0]} rows but '
                         f'{codes_name} has {count}; pass one label row per '
                         f'code')
    if not (_is_real(labels.dtype) or labels.dtype == np.bool_):
        raise ValueError(f'{name} must be real or bool multi-hot labels, '
                         f'got dtype {labels.dtype}')
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError(f'{name} must be multi-hot (only 0 and 1); '
                         f'binarise soft labels first, e.g. labels > 0')
    return labels


def _is_int(value):
    return (isinstance(value, numbers.Integral)
            and not isinstance(value, (bool, np.bool_)))


def _check_top_k(top_k):
    if top_k is not None and not (_is_int(top_k) and top_k > 0):
        raise ValueError(f'top_k must be a positive int or None (all N '
                         f'items), got {top_k!r}; for mAP@all pass None, '
                         f'not -1')


def _check_positive_int(value, name):
    if not (_is_int(value) and value > 0):
        raise ValueError(f'{name} must be a positive int, got {value!r}')


def _cpu_count():
    """CPUs this process may use (the affinity mask where there is one)."""
    if hasattr(os, 'sched_getaffinity'):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
