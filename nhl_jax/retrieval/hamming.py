"""The Hamming engine: packed words, popcount distances, stable ranking.

Every Hamming ranking of binary codes in nhl_jax on the host is computed
here: mAP, precision, recall and radius metrics (``ranking``, ``metrics``),
top-k and radius search (``index``). It all
runs in NumPy on the host: ranking is a sorting problem, and XLA's CPU sort
is much slower than NumPy's.

Codes: ±1 codes [N, K] become bits (+1 -> 1, -1 -> 0) packed eight to a
byte (``codes.pack``), then W = ceil(K / 64) zero-padded uint64 words per
code (``codes.words``), stored word-major; padding bits are 0 on both sides, so
they XOR to 0.

Distances: d(q, b) = sum over words of popcount(q XOR b), one word at a
time over a chunk of B queries, into [B, N] distances of the smallest
unsigned dtype that holds K (``Hamming``): about 9 bytes per (query, item)
pair, whatever K.

Ranking: ascending distance, ties broken STABLY by ascending database row,
so results never depend on the sort algorithm (``Ranking``). A row of
small unsigned distances is ranked by NumPy's stable sort, a radix sort
for up to 16 bits: O(N), ties in row order. A top k much shorter than N
is instead selected: the row's distance histogram gives the k-th
smallest distance r, and only the items within r are sorted, in row
order, so the ties at r stay in row order too. Histograms (``count``,
``histograms``) count pairs of uint8 distances at once. ``within`` lists
the items within a radius in the same order.

Chunks: ``map_chunks`` runs a function over query chunks (bounded memory)
on a thread pool, since NumPy releases the GIL in XOR, popcount, sort and
gather.
"""

import concurrent.futures
import contextlib
import os

import numpy as np

from nhl_jax.retrieval import codes

try:  # Optional; see _one_blas_thread_each.
    import threadpoolctl
except ImportError:  # pragma: no cover
    threadpoolctl = None


def _word_major(packed) -> np.ndarray:
    """[W, N] uint64 words: one word of every code is contiguous."""
    return np.ascontiguousarray(codes.words(packed).T)


_XOR_BYTES = 1 << 20


class Hamming:
    """Hamming distances of query chunks to one database.

    Read-only after construction, so threads may share one.
    """

    def __init__(self, db_packed, num_bits: int):
        """Converts the database to words.

        Args:
          db_packed: [N, ceil(K / 8)] uint8 codes (``pack``).
          num_bits: K.
        """
        self.num_bits = num_bits
        self.size = len(db_packed)
        self.dtype = np.min_scalar_type(num_bits)
        self.db_words = _word_major(db_packed)  # [W, N]

    def __call__(self, q_packed) -> np.ndarray:
        """[B, N] distances of [B, ceil(K / 8)] packed query codes.

        The dtype is the smallest unsigned one that holds K: uint8 for
        K <= 255.
        """
        q_words = _word_major(q_packed)  # [W, B]
        num_queries = q_words.shape[1]
        dist = np.empty((num_queries, self.size), self.dtype)
        # Blocks of items whose [B, block] XOR buffer (about 1 MB) stays in
        # cache: one [B, N] buffer is slower at large N (benchmarks/
        # RESULTS.md).
        block = max(1024, _XOR_BYTES // (8 * num_queries))
        xor = np.empty((num_queries, min(block, self.size)), np.uint64)
        for start in range(0, self.size, block):
            stop = min(start + block, self.size)
            out, buffer = dist[:, start:stop], xor[:, :stop - start]
            # One word at a time: a [B, block] buffer, not [B, block, W].
            for word, (q_word, db_word) in enumerate(zip(q_words,
                                                         self.db_words)):
                np.bitwise_xor(q_word[:, None], db_word[None, start:stop],
                               out=buffer)
                if word == 0:
                    np.bitwise_count(buffer, out=out)
                else:
                    out += np.bitwise_count(buffer)
        return dist


def distances(q_packed, db_packed, num_bits: int) -> np.ndarray:
    """All [Q, N] distances of packed codes, at once (``Hamming``)."""
    return Hamming(db_packed, num_bits)(q_packed)


def key_layout(num_bits: int, num_items: int, *, signed: bool = False):
    """Bit layout of the ranking key ``dist << shift | row << 1 | flag``.

    Such keys are unique, so their order is the stable ranking with the
    flag carried along (``ranking_jax`` sorts them).

    Args:
      num_bits: K, so distances take values 0..K.
      num_items: N, so rows take values 0..N-1.
      signed: a signed dtype (one bit fewer), for keys that are negated.

    Returns:
      (shift, key dtype: uint32 or uint64, or int32 or int64).

    Raises:
      ValueError: if the key needs more than 64 bits.
    """
    shift = max(1, (num_items - 1).bit_length()) + 1
    total = num_bits.bit_length() + shift + signed
    if total <= 32:
        return shift, np.dtype(np.int32 if signed else np.uint32)
    if total <= 64:
        return shift, np.dtype(np.int64 if signed else np.uint64)
    raise ValueError(f'K={num_bits} bits with N={num_items} items needs a '
                     f'{total}-bit ranking key; split the database')


class Ranking:
    """The top k of the stable ranking of [B, N] distance rows.

    Ranked order is ascending distance, ties by ascending row.
    """

    def __init__(self, num_bits: int, num_items: int, k: int):
        """Chooses how to rank.

        Args:
          num_bits: K, so distances take values 0..K.
          num_items: N, the length of a distance row.
          k: the number of top-ranked items needed, 1 <= k <= N.
        """
        self.k = k
        self.num_bits = num_bits
        # A top k much shorter than N is cheaper to select (``select``)
        # than to sort; a full ranking is a radix sort.
        self.by_keys = 2 * k <= num_items

    def order(self, dist) -> np.ndarray:
        """[B, k] int64 rows of the top k by a full stable sort.

        Right on either path, but cheaper than ``select`` only when
        ``by_keys`` is False.
        """
        # Small unsigned ints: NumPy's stable sort is a radix sort, O(N)
        # per row, ties in row order.
        return np.argsort(dist, axis=1, kind='stable')[:, :self.k]

    def select(self, dist) -> np.ndarray:
        """[B, k] int64 rows of the top k, without sorting the rows.

        The k-th smallest distance r of a row comes from its histogram
        (``count``); only the items at distance <= r, in row order, are
        then sorted stably (k items plus the ties at r). For a k much
        shorter than N this is faster than a partition of unique keys
        (benchmarks/RESULTS.md).
        """
        rows = np.empty((len(dist), self.k), np.int64)
        for i, row in enumerate(dist):
            within = np.cumsum(count(row, self.num_bits + 1))
            radius = int(np.searchsorted(within, self.k))
            found = np.flatnonzero(row <= radius)
            rows[i] = found[np.argsort(row[found], kind='stable')[:self.k]]
        return rows

    def rows(self, dist) -> np.ndarray:
        """[B, k] int64 rows of the top k, by the cheaper path."""
        return self.select(dist) if self.by_keys else self.order(dist)

    def top_flags(self, dist, flags) -> np.ndarray:
        """[B, k] bool ``flags`` [B, N] of the top k, in ranked order."""
        return np.take_along_axis(flags, self.rows(dist), axis=1)

    def top_k(self, dist):
        """([B, k] int64 rows, [B, k] distances) of the top k, in order.

        The distances keep the dtype of ``dist``.
        """
        rows = self.rows(dist)
        return rows, np.take_along_axis(dist, rows, axis=1)


def within(dist, radius: int):
    """The items at distance <= radius of each row, in ranked order.

    Args:
      dist: [B, N] distances.
      radius: r >= 0.

    Returns:
      ([B] int64 counts, [T] int64 rows, [T] distances): row b's items
      follow those of rows 0..b-1, sorted by distance, then row.
    """
    rows, cols = np.nonzero(dist <= radius)  # row-major: grouped by row
    found = dist[rows, cols]
    order = np.lexsort((cols, found, rows))
    counts = np.bincount(rows, minlength=len(dist))
    return counts, cols[order].astype(np.int64), found[order]


def histograms(dist, flags, num_bits: int):
    """Items, and flagged items, at each distance of each row.

    One ``count`` of ``dist << 1 | flag`` per row: the row's keys stay in
    cache, and no [B, N] int64 bin index is built.

    Args:
      dist: [B, N] distances in 0..K.
      flags: [B, N] bool (e.g. relevance).
      num_bits: K.

    Returns:
      ([B, K + 1] int64 items at distance d, [B, K + 1] int64 flagged
      items at distance d).
    """
    bins = 2 * (num_bits + 1)
    keys = dist.astype(np.min_scalar_type(bins - 1))
    keys <<= 1
    keys |= flags
    both = np.stack([count(row, bins) for row in keys])
    both = both.reshape(len(keys), num_bits + 1, 2)
    return both.sum(axis=2), both[..., 1]


def count(values, bins: int) -> np.ndarray:
    """``np.bincount(values, minlength=bins)`` of values in 0..bins-1.

    Long uint8 rows are counted two at a time: viewed as uint16, each
    value is one bin of a [bins, 256] table of (second, first) pairs,
    whose two marginals add up to the counts. ``bincount`` costs a fixed
    time per element plus its conversion to int64, so halving the
    elements pays for the bins * 256 table from about 2 * bins * 256
    elements on (on either byte order: the marginals are symmetric).

    Args:
      values: [N] unsigned ints below ``bins``.
      bins: the number of bins.

    Returns:
      [bins] int64 counts.
    """
    if values.dtype != np.uint8 or len(values) < 2 * bins * 256:
        return np.bincount(values, minlength=bins)
    even = len(values) - len(values) % 2
    pairs = np.bincount(values[:even].view(np.uint16), minlength=bins * 256)
    # Rows are the second value, columns the first; columns from bins on
    # are empty.
    pairs = pairs[:bins * 256].reshape(bins, 256)[:, :bins]
    counts = pairs.sum(axis=0) + pairs.sum(axis=1)
    if even < len(values):
        counts[values[-1]] += 1
    return counts


def map_chunks(run, num_queries: int, chunk_size: int,
               num_threads: int | None):
    """``run(start, stop)`` over query chunks, on a thread pool.

    Args:
      run: a function of a query range; chunks may run concurrently.
      num_queries: Q.
      chunk_size: queries per chunk.
      num_threads: threads; None uses every CPU, 1 runs in this thread.

    Returns:
      The list of ``run`` results, in query order.
    """
    starts = range(0, num_queries, chunk_size)

    def run_one(start):
        return run(start, min(start + chunk_size, num_queries))

    threads = min(num_threads or _cpu_count(), len(starts))
    if threads <= 1:  # one chunk, or none
        return [run_one(start) for start in starts]
    with _one_blas_thread_each(), \
            concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(run_one, starts))


def _one_blas_thread_each():
    """Limits BLAS to one thread per caller while the chunk threads run.

    Concurrent multi-threaded OpenBLAS calls (``ranking``'s relevance
    matmul) contend with each other and with the sorting threads, which
    slows mAP@all down (benchmarks/RESULTS.md). The limit is
    process-wide and is undone on exit; without the optional
    ``threadpoolctl`` nothing is limited.
    """
    if threadpoolctl is None:
        return contextlib.nullcontext()
    return threadpoolctl.threadpool_limits(1, user_api='blas')


def _cpu_count():
    """CPUs this process may use (the affinity mask where there is one)."""
    if hasattr(os, 'sched_getaffinity'):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
