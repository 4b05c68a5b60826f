"""Hamming ranking: the per-query statistics that every metric reads.

``query_stats`` ranks each query's database by ascending Hamming distance,
ties ordered by a policy (``ties=``), and returns per query the AP and hit
counts at the plan's cutoffs, the relevant items R, and the items and
relevant items within every radius; ``nhl_jax.retrieval.metrics`` builds
mAP, precision, recall and the radius metrics on them.

Ties (items at the same distance):

- 'stable' (default): by database index, the lower index first;
- 'random': by one permutation of the database, ``np.random.default_rng(
  seed).permutation(N)`` (item ``perm[0]`` first, then ``perm[1]``, ...),
  the same for every query: one draw of a uniformly random tie order;
- 'expected': the exact expectation over uniformly random orders within
  every group of equal distance (``ties.expected_stats``). It needs no
  sort, only the counts of items and of relevant items at each distance,
  and depends neither on the database order nor on a seed, so it is the
  number to compare across codebases at short lengths, where ties
  dominate.

Backends, ``backend=``: 'numpy' ranks on the host, in query chunks over a
thread pool ('auto' on a CPU); 'jax' in ``ranking_jax``, each chunk's
queries split over JAX's local devices ('auto' on a GPU or TPU). Both give
the same counts and the same AP: the JAX program returns integers only,
and the AP of both backends is summed on the host in float64
(``stats``).

In NumPy, the ranking itself (popcount distances, the stable radix sort or
the selection of a short top k, distance histograms) is ``hamming``'s.
Here, relevance is gathered along the ranking (class ids of the top k, or
the top k of a [B, N] relevance for multi-hot labels); AP then visits only
the relevant ranks. Repeated (code, labels) query rows are ranked once.
"""

import numpy as np

from nhl_jax.retrieval import codes, hamming
from nhl_jax.retrieval._inputs import Plan
from nhl_jax.retrieval.stats import group_stats, ranked_stats
from nhl_jax.retrieval.ties import harmonic_numbers

DEFAULT_CHUNK_SIZE = 16
# jax.default_backend() names on which 'auto' ranks with JAX.
_ACCELERATORS = frozenset({'gpu', 'cuda', 'rocm', 'tpu'})


def query_stats(inputs, plan: Plan, *, ties, seed, backend, chunk_size,
                num_threads, devices=None) -> dict:
    """Per-query statistics of validated inputs (every metric reads them).

    Args:
      inputs: ``Inputs`` from ``check_inputs``.
      plan: what to compute.
      ties, seed, backend, chunk_size, num_threads, devices: as in
        ``average_precisions`` (checked by the caller).

    Returns:
      A dict of NumPy arrays whose last axis is the Q queries: ``'aps'``
      [len(map_k), Q] float64 AP@k and ``'ap_counted'`` (bool: a hit in
      the top k; 'expected': possible); ``'hits'`` [len(count_k), Q]
      hits h_k (int64; 'expected': float64 E[h_k]); ``'relevant'`` [Q]
      int64 R when asked; ``'retrieved'``, ``'retrieved_hits'`` [K + 1,
      Q] int64 items and relevant items within each radius when asked.
    """
    if ties == 'random':  # rank the permuted database, stably
        order = np.random.default_rng(seed).permutation(len(inputs.db_codes))
        inputs = inputs._replace(db_codes=inputs.db_codes[order],
                                 db_side=inputs.db_side[..., order])
    inputs, inverse = _unique_queries(inputs)
    expected = ties == 'expected'
    if resolve_backend(backend) == 'jax':
        from nhl_jax.retrieval import ranking_jax  # JAX's device runtime
        stats = ranking_jax.query_stats(inputs, plan, expected=expected,
                                        chunk_size=chunk_size,
                                        devices=devices)
    else:
        stats = _numpy_query_stats(inputs, plan, expected,
                                   chunk_size or DEFAULT_CHUNK_SIZE,
                                   num_threads)
    return {name: value[..., inverse] for name, value in stats.items()}


def resolve_backend(backend: str) -> str:
    """'numpy' or 'jax': 'auto' is 'jax' where JAX runs on a GPU or TPU.

    'auto' asks JAX for its default backend, which starts JAX's runtime
    (after ``parallel.initialize`` in a multi-process run); an explicit
    'numpy' never touches JAX.
    """
    if backend != 'auto':
        return backend
    import jax
    return 'jax' if jax.default_backend() in _ACCELERATORS else 'numpy'


def _numpy_query_stats(inputs, plan, expected, chunk_size, num_threads):
    """``query_stats`` of distinct queries, in NumPy over query chunks."""
    num_items, num_bits = inputs.db_codes.shape
    cutoffs = (*plan.map_k, *plan.count_k)
    ranks = bool(cutoffs) and not expected
    if ranks:
        ranker = _Ranker(inputs.db_codes, inputs.db_side, max(cutoffs))
    else:  # histograms alone: the database order does not matter
        counter = _GroupCounter(inputs.db_codes, inputs.db_side)
    harmonic = harmonic_numbers(num_items) if expected else None

    def run(start, stop):
        q, q_side = inputs.q_codes[start:stop], inputs.q_side[start:stop]
        stats, groups = {}, None
        if ranks:
            dist = ranker.distances(q)
            rel = (ranker.relevance(q_side) if q_side.ndim > 1
                   or plan.radii else None)  # class ids need none
            stats.update(ranked_stats(ranker.ranked(dist, rel, q_side),
                                      plan))
            if plan.radii:
                groups = hamming.histograms(dist, rel, num_bits)
            elif plan.relevant:
                stats['relevant'] = ranker.relevant_counts(q_side, rel)
        else:
            groups = counter(q, q_side)
        if groups is not None:
            stats.update(group_stats(*groups, plan, harmonic))
        return stats

    if num_threads is None and not ranks:
        # Histograms are mostly bincount, which holds the GIL: a second
        # thread gains nothing on idle cores and loses on busy ones
        # (benchmarks/map_speed.py; benchmarks/RESULTS.md).
        num_threads = 1
    chunks = hamming.map_chunks(run, len(inputs.q_codes), chunk_size,
                                num_threads)
    return {name: np.concatenate([c[name] for c in chunks], axis=-1)
            for name in chunks[0]}


class _GroupCounter:
    """Tie groups of query chunks: items and relevant items per distance.

    Nothing is ranked, so the database may be reordered: with class ids
    it is sorted by class once, a query's relevant items are then one
    contiguous block, and m_d is the histogram of that block's distances
    (no [B, N] relevance, and N + N / C items counted instead of
    2 N flag-carrying keys).
    """

    def __init__(self, db, db_side):
        """Args: as ``_Ranker``'s."""
        self.num_bits = db.shape[1]
        self.ids = None
        if db_side.ndim == 1:
            order = np.argsort(db_side, kind='stable')
            db, db_side = db[order], db_side[order]
            self.ids = db_side
        self.ranker = _Ranker(db, db_side, None)

    def __call__(self, q, q_side):
        """([B, K + 1] int64 n_d, [B, K + 1] int64 m_d) of one chunk."""
        if self.ids is None:
            dist, rel = self.ranker.distances_and_relevance(q, q_side)
            return hamming.histograms(dist, rel, self.num_bits)
        dist = self.ranker.hamming(codes.pack(q))
        first = np.searchsorted(self.ids, q_side, side='left')
        last = np.searchsorted(self.ids, q_side, side='right')
        bins = self.num_bits + 1
        counts = [hamming.count(row, bins) for row in dist]
        hits = [hamming.count(row[i:j], bins)
                for row, i, j in zip(dist, first, last)]
        return np.stack(counts), np.stack(hits)

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
    rows = np.hstack([codes.pack(inputs.q_codes), labels.view(np.uint8)])
    _, first, inverse = np.unique(rows, axis=0, return_index=True,
                                  return_inverse=True)
    if len(first) == num_queries:  # nothing repeats: keep the order
        return inputs, np.arange(num_queries)
    return inputs._replace(q_codes=inputs.q_codes[first],
                           q_side=inputs.q_side[first]), inverse.reshape(-1)

def _relevance(q_side, db_side):
    """[B, N] bool relevance from ``relevance_operands`` rows."""
    if q_side.ndim == 1:
        return q_side[:, None] == db_side[None, :]
    return (q_side @ db_side) > 0


class _Ranker:
    """Hamming ranking and relevance of query chunks to one database."""

    def __init__(self, db, db_side, width):
        """Precomputes the database side.

        Args:
          db: [N, K] float32 ±1 codes.
          db_side: database operand from ``relevance_operands``.
          width: k, the number of top-ranked items needed (1 <= k <= N);
            None when only distances and relevance are needed.
        """
        num_items, num_bits = db.shape
        self.hamming = hamming.Hamming(codes.pack(db), num_bits)
        self.db_side = db_side
        # Items per class id, the R of class-id queries.
        self.class_sizes = (np.bincount(db_side) if db_side.ndim == 1
                            else None)
        self.ranking = (None if width is None
                        else hamming.Ranking(num_bits, num_items, width))

    def distances_and_relevance(self, q, q_side):
        """([B, N] distances, [B, N] bool relevance) of one chunk.

        Args:
          q: [B, K] float32 ±1 query codes.
          q_side: [B] or [B, C] query operand from ``relevance_operands``.
        """
        return self.distances(q), self.relevance(q_side)

    def distances(self, q):
        """[B, N] distances of [B, K] float32 ±1 query codes."""
        return self.hamming(codes.pack(q))

    def relevance(self, q_side):
        """[B, N] bool relevance of a [B] or [B, C] query operand."""
        return _relevance(q_side, self.db_side)

    def relevant_counts(self, q_side, rel):
        """[B] int64 R, the relevant items of each query of a chunk.

        Args:
          q_side: [B] or [B, C] query operand.
          rel: its [B, N] relevance; None for class ids, whose R is the
            size of their class.
        """
        if rel is not None:
            return np.count_nonzero(rel, axis=1)
        sizes = self.class_sizes
        return np.where(q_side < len(sizes),
                        sizes[np.minimum(q_side, len(sizes) - 1)], 0)

    def ranked(self, dist, rel, q_side):
        """[B, k] bool relevance of the top k items, in ranked order.

        The order is ascending distance, ties by ascending database index.

        Args:
          dist: [B, N] distances from ``distances``.
          rel: [B, N] bool relevance from ``relevance``; None (not
            needed) for class ids.
          q_side: [B] or [B, C] query operand, as given there.
        """
        rows = self.ranking.rows(dist)
        if q_side.ndim > 1:
            return np.take_along_axis(rel, rows, axis=1)
        # Class ids: gather the [N] ids, no [B, N] relevance needed.
        return self.db_side[rows] == q_side[:, None]
