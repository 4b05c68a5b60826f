"""Retrieval evaluation: Hamming ranking and mean average precision.

Everything runs in NumPy on the host (``nhl_jax.hamming`` says why); JAX
arrays are accepted and copied to the host.

mAP follows DeepHash-pytorch's ``CalcTopMap``, with its
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

The ranking itself (packed words, popcount distances, the stable radix
sort or key partition) is ``nhl_jax.hamming``'s. Here, relevance rides
along the ranking (a gather of class ids, or a flag bit in the partition
keys), so no [Q, N] keys are sorted; AP then visits only the relevant
ranks. Repeated (code, labels) query rows are ranked once. Queries go in
chunks (bounded memory) over a thread pool. benchmarks/map_speed.py times
it against the common per-query loop; ``nhl_jax.metrics`` builds
precision, recall and radius metrics on the same ranking.
"""

import numbers
from typing import NamedTuple

import numpy as np

from nhl_jax import hamming

ZERO_RELEVANT_POLICIES = ('zero', 'skip')
DEFAULT_CHUNK_SIZE = 16


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
    if np.any(h != h):  # noqa: PLR0124
        raise ValueError('h contains NaN, so it has no sign; check the model '
                         'outputs (a diverged training run?) before binarising')
    return np.where(h >= 0, 1, -1).astype(np.int8)


def hamming_distances(q_codes, db_codes) -> np.ndarray:
    """All query-to-database Hamming distances, (K - q . b) / 2.

    Computed exactly, by popcounts of packed bits (``nhl_jax.hamming``).
    The full [Q, N] matrix is materialised; ``average_precisions`` works
    in query chunks and never does.

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
    return hamming.distances(hamming.pack(q), hamming.pack(db), q.shape[1])


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
      chunk_size: queries ranked at once. Peak memory is about 25 bytes
        per element of [chunk_size, N] per thread (distances, relevance,
        the int64 sort order, the XOR words), above float32 copies of
        the inputs.
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
      q_codes, q_labels, db_codes, db_labels, top_k: as in
        ``average_precisions``.
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
    _check_zero_relevant(zero_relevant)
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
    _check_run_options(chunk_size, num_threads)
    inputs, inverse = _unique_queries(
        _check_inputs(q_codes, q_labels, db_codes, db_labels))
    num_items = len(inputs.db_codes)
    width = num_items if top_k is None else min(top_k, num_items)
    ranker = _Ranker(inputs.db_codes, inputs.db_side, width)

    def run(start, stop):
        q_side = inputs.q_side[start:stop]
        dist, rel = ranker.distances_and_relevance(
            inputs.q_codes[start:stop], q_side)
        sums, hits = _hit_sums(ranker.ranked(dist, rel, q_side), (width,))
        return sums[0] / np.maximum(hits[0], 1), hits[0]

    aps, hits = zip(*hamming.map_chunks(run, len(inputs.q_codes), chunk_size,
                                        num_threads))
    return np.concatenate(aps)[inverse], np.concatenate(hits)[inverse]


class _Inputs(NamedTuple):
    """Validated retrieval inputs (see ``_check_inputs``)."""
    q_codes: np.ndarray  # [Q, K] float32 ±1
    db_codes: np.ndarray  # [N, K] float32 ±1
    q_side: np.ndarray  # [Q] class ids or [Q, C] float32 multi-hot
    db_side: np.ndarray  # [N] class ids or [C, N] float32 multi-hot


def _check_inputs(q_codes, q_labels, db_codes, db_labels):
    """Checks codes and labels; returns them as ``_Inputs``."""
    q = _as_codes(q_codes, 'q_codes')
    db = _as_codes(db_codes, 'db_codes')
    _check_same_bits(q, db)
    q_y = _as_labels(q_labels, 'q_labels', 'q_codes', len(q))
    db_y = _as_labels(db_labels, 'db_labels', 'db_codes', len(db))
    if q_y.shape[1] != db_y.shape[1]:
        raise ValueError(
            f'q_labels has C={q_y.shape[1]} classes but db_labels has '
            f'C={db_y.shape[1]}; use the same label space for both')
    return _Inputs(q, db, *_relevance_operands(q_y, db_y))


def _unique_queries(inputs):
    """Ranks each distinct (code, labels) query row once.

    Every metric of a query is a function of its code and labels alone,
    so repeated rows (common for trained short codes: 8 bits have 256
    values) get their results copied, exactly.

    Returns:
      (``inputs`` with the distinct query rows, [Q] int index of each
      original query among them).
    """
    num_queries = len(inputs.q_codes)
    labels = np.ascontiguousarray(inputs.q_side.reshape(num_queries, -1))
    rows = np.hstack([hamming.pack(inputs.q_codes), labels.view(np.uint8)])
    _, first, inverse = np.unique(rows, axis=0, return_index=True,
                                  return_inverse=True)
    if len(first) == num_queries:  # nothing repeats: keep the order
        return inputs, np.arange(num_queries)
    return inputs._replace(q_codes=inputs.q_codes[first],
                           q_side=inputs.q_side[first]), inverse.reshape(-1)


def _check_run_options(chunk_size, num_threads):
    _check_positive_int(chunk_size, 'chunk_size')
    if num_threads is not None:
        _check_positive_int(num_threads, 'num_threads')


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


class _Ranker:
    """Hamming ranking and relevance of query chunks to one database."""

    def __init__(self, db, db_side, width):
        """Precomputes the database side.

        Args:
          db: [N, K] float32 ±1 codes.
          db_side: database operand from ``_relevance_operands``.
          width: k, the number of top-ranked items needed (1 <= k <= N);
            None when only distances and relevance are needed.
        """
        num_items, num_bits = db.shape
        self.hamming = hamming.Hamming(hamming.pack(db), num_bits)
        self.db_side = db_side
        self.ranking = (None if width is None
                        else hamming.Ranking(num_bits, num_items, width))

    def distances_and_relevance(self, q, q_side):
        """([B, N] distances, [B, N] bool relevance) of one chunk.

        Args:
          q: [B, K] float32 ±1 query codes.
          q_side: [B] or [B, C] query operand from ``_relevance_operands``.
        """
        return (self.hamming(hamming.pack(q)),
                _relevance(q_side, self.db_side))

    def ranked(self, dist, rel, q_side):
        """[B, k] bool relevance of the top k items, in ranked order.

        The order is ascending distance, ties by ascending database index.

        Args:
          dist: [B, N] distances from ``distances_and_relevance``.
          rel: [B, N] bool relevance from ``distances_and_relevance``.
          q_side: [B] or [B, C] query operand, as given there.
        """
        if self.ranking.by_keys or q_side.ndim > 1:
            return self.ranking.top_flags(dist, rel)
        # Class ids after a full sort: gather the [N] ids, not the [B, N]
        # relevance.
        return self.db_side[self.ranking.order(dist)] == q_side[:, None]


def _hit_sums(relevant, cutoffs):
    """AP numerators and hit counts of ranked rows at several cutoffs.

    Only the relevant positions are visited: the t-th hit of a row at
    1-based rank r_t adds t / r_t. Each row's terms are summed on their
    own (``reduceat``), so results do not depend on the chunking.

    Args:
      relevant: [B, k] bool, relevance in ranked order.
      cutoffs: ints in 1..k; the top c items are scored for each c.

    Returns:
      ([len(cutoffs), B] float64 sums of t / r_t over the hits in the top
      c, [len(cutoffs), B] int64 hit counts h_c).
    """
    num_rows, width = relevant.shape
    flat = np.flatnonzero(relevant)  # [H] row-major, so grouped by row
    bounds = np.searchsorted(flat, np.arange(num_rows + 1) * width)
    first_hit, hits = bounds[:-1], np.diff(bounds)  # [B], [B]
    row = np.repeat(np.arange(num_rows), hits)  # [H]
    rank = flat - row * width + 1  # 1-based rank r_t
    hit_number = np.arange(1, flat.size + 1) - first_hit[row]  # t
    terms = np.append(hit_number / rank, 0.0)  # the 0 lets segments end at H
    # row * (width + 1) + rank ascends, so one search finds every h_c.
    row_rank = flat + row + 1
    sums = np.zeros((len(cutoffs), num_rows))
    counts = np.zeros((len(cutoffs), num_rows), np.int64)
    for i, cutoff in enumerate(cutoffs):
        counts[i] = hits if cutoff >= width else np.searchsorted(
            row_rank, np.arange(num_rows) * (width + 1) + cutoff,
            side='right') - first_hit
        segments = np.stack([first_hit, first_hit + counts[i]], axis=1)
        segment_sums = np.add.reduceat(terms, segments.ravel())[::2]
        sums[i] = np.where(counts[i] > 0, segment_sums, 0.0)
    return sums, counts


def _as_codes(codes, name):
    """Checks [N, K] ±1 codes and returns them as float32."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f'{name} must be a 2-D [N, K] array of ±1 codes, got '
                         f'shape {codes.shape}; for one code use {name}[None]')
    if codes.shape[0] == 0 or codes.shape[1] == 0:
        raise ValueError(f'{name} is empty (shape {codes.shape}); pass at '
                         f'least one code of at least one bit')
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


def _check_zero_relevant(zero_relevant):
    if zero_relevant not in ZERO_RELEVANT_POLICIES:
        raise ValueError(f'zero_relevant must be one of '
                         f'{ZERO_RELEVANT_POLICIES}, got {zero_relevant!r}')


def _check_positive_int(value, name):
    if not (_is_int(value) and value > 0):
        raise ValueError(f'{name} must be a positive int, got {value!r}')
