"""Retrieval evaluation: Hamming ranking and mean average precision.

mAP follows DeepHash-pytorch's ``CalcTopMap``, with its
pitfalls settled explicitly:

- relevance is rel(q, b) = 1[y_q . y_b > 0] for 0/1 multi-hot labels
  [*, C], i.e. the two share a class;
- the database is ranked by ascending Hamming distance, and ties are
  ordered by an explicit policy (below), so results never depend on the
  sort algorithm; ``np.argsort``'s default quicksort, as in the reference
  code, orders ties arbitrarily, which moves mAP at 8 or 16 bits, where
  only 9 or 17 distances exist;
- AP@k = (1/h) sum_t t / r_t over the h relevant items at 1-based ranks
  r_1 < ... < r_h within the top k. It is normalised by the hits h in the
  top k, not by all relevant items, so it is not monotone in h;
- ``top_k=None`` means all N items (the reference's ``topK=-1`` slices
  ``[0:-1]`` and silently drops the last item; that bug is not reproduced);
- a query with h = 0 has AP 0; ``zero_relevant`` chooses whether such
  queries count in the mean ('zero', DeepHash-pytorch/NHL) or are left out
  ('skip', thulab/DeepHash).

Ties (items at the same distance), ``ties=``:

- 'stable' (default): by database index, the lower index first;
- 'random': by one permutation of the database, ``np.random.default_rng(
  seed).permutation(N)`` (item ``perm[0]`` first, then ``perm[1]``, ...),
  the same for every query: one draw of a uniformly random tie order;
- 'expected': the exact expectation of AP over uniformly random orders
  within every group of equal distance (McSherry and Najork, ECIR 2008;
  closed form in ``expected_stats``). It needs no sort, only the counts of
  items and of relevant items at each distance, and depends neither on
  the database order nor on a seed, so it is the number to compare
  across codebases at short lengths, where ties dominate.

Backends, ``backend=``: 'numpy' ranks on the host, in query chunks over a
thread pool ('auto' on a CPU); 'jax' in ``nhl_jax.ranking_jax`` on JAX's
default device, where the codes are ('auto' on a GPU or TPU). Both give
the same counts and, up to float64 summation order, the same AP.

In NumPy, the ranking itself (packed words, popcount distances, the
stable radix sort or the selection of a short top k, distance
histograms) is ``nhl_jax.hamming``'s. Here, relevance is gathered along
the ranking (class ids of the top k, or the top k of a [B, N] relevance
for multi-hot labels); AP then visits only the relevant ranks. Repeated
(code, labels) query rows are ranked once. JAX arrays are accepted and
copied to the host. benchmarks/map_speed.py times it against the common
per-query loop; ``nhl_jax.metrics`` builds precision, recall and radius
metrics on the same statistics (``query_stats``).
"""

import numbers
from typing import NamedTuple

import numpy as np

from nhl_jax import hamming

ZERO_RELEVANT_POLICIES = ('zero', 'skip')
TIE_POLICIES = ('stable', 'random', 'expected')
BACKENDS = ('auto', 'numpy', 'jax')
DEFAULT_CHUNK_SIZE = 16
# jax.default_backend() names on which 'auto' ranks with JAX.
_ACCELERATORS = frozenset({'gpu', 'cuda', 'rocm', 'tpu'})


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
                       top_k=None, ties='stable', seed=0, backend='auto',
                       chunk_size=None, num_threads=None) -> np.ndarray:
    """Per-query AP@top_k of Hamming ranking (module docstring).

    Args:
      q_codes: [Q, K] ±1 query codes (e.g. from ``sign_codes``).
      q_labels: [Q, C] 0/1 multi-hot query labels (bool or numeric).
      db_codes: [N, K] ±1 database codes.
      db_labels: [N, C] 0/1 multi-hot database labels.
      top_k: number of top-ranked items to score; None scores all N.
        Values above N are treated as N.
      ties: 'stable', 'random' or 'expected' (module docstring).
      seed: seed of the 'random' tie order (a non-negative int).
      backend: 'numpy', 'jax' or 'auto' (module docstring).
      chunk_size: queries ranked at once; None: 16 in NumPy, where peak
        memory is about 25 bytes per element of [chunk_size, N] per
        thread (distances, relevance, the int64 sort order, the XOR
        words) above float32 copies of the inputs; in JAX,
        ``ranking_jax.default_chunk_size``.
      num_threads: NumPy threads over query chunks; None uses every CPU
        (one for 'expected', whose counting holds the GIL).

    Returns:
      [Q] float64 AP per query; 0 for a query with no relevant item in
      its top k ('expected': the expectation of that AP).

    Raises:
      ValueError: for malformed inputs; the message names the fix.
    """
    aps, _ = _average_precisions_and_hits(
        q_codes, q_labels, db_codes, db_labels, top_k=top_k, ties=ties,
        seed=seed, backend=backend, chunk_size=chunk_size,
        num_threads=num_threads)
    return aps


def mean_average_precision(q_codes, q_labels, db_codes, db_labels, *,
                           top_k=None, zero_relevant='zero', ties='stable',
                           seed=0, backend='auto', chunk_size=None,
                           num_threads=None) -> float:
    """mAP@top_k of Hamming ranking (module docstring).

    Args:
      q_codes, q_labels, db_codes, db_labels, top_k: as in
        ``average_precisions``.
      zero_relevant: queries with no relevant item in their top k count
        as AP 0 ('zero', DeepHash-pytorch and NHL) or are left out of the
        mean ('skip', thulab/DeepHash); under 'expected' ties, 'skip'
        leaves out the queries whose top k holds no relevant item in any
        tie order. With 'skip' and no query having a hit, the mean is
        undefined and NaN is returned.
      ties: 'stable', 'random' or 'expected' (module docstring).
      seed: seed of the 'random' tie order.
      backend: 'numpy', 'jax' or 'auto' (module docstring).
      chunk_size: queries ranked at once (see ``average_precisions``).
      num_threads: NumPy threads over query chunks; None uses every CPU.

    Returns:
      The mean AP as a Python float.

    Raises:
      ValueError: for malformed inputs; the message names the fix.
    """
    _check_zero_relevant(zero_relevant)
    aps, counted = _average_precisions_and_hits(
        q_codes, q_labels, db_codes, db_labels, top_k=top_k, ties=ties,
        seed=seed, backend=backend, chunk_size=chunk_size,
        num_threads=num_threads)
    if zero_relevant == 'skip':
        aps = aps[counted]
        if aps.size == 0:
            return float('nan')
    return float(np.mean(aps))


def _average_precisions_and_hits(q_codes, q_labels, db_codes, db_labels, *,
                                 top_k, ties, seed, backend, chunk_size,
                                 num_threads):
    """Validates the inputs, then ranks query chunks.

    Returns:
      ([Q] float64 AP, [Q] bool: a relevant item is (or, under
      'expected', can be) in the top k).
    """
    _check_top_k(top_k)
    _check_ties(ties, seed)
    _check_backend(backend)
    _check_run_options(chunk_size, num_threads)
    inputs = _check_inputs(q_codes, q_labels, db_codes, db_labels)
    num_items = len(inputs.db_codes)
    plan = Plan(map_k=(num_items if top_k is None else min(top_k,
                                                           num_items),))
    stats = query_stats(inputs, plan, ties=ties, seed=seed, backend=backend,
                        chunk_size=chunk_size, num_threads=num_threads)
    return stats['aps'][0], stats['ap_counted'][0]


class Plan(NamedTuple):
    """What ``query_stats`` computes for every query.

    Attributes:
      map_k: cutoffs of AP, each in 1..N.
      count_k: cutoffs of hit counts (precision@k, recall@k), in 1..N.
      radii: counts within every radius 0..K.
      relevant: the number R of relevant items.
    """

    map_k: tuple[int, ...] = ()
    count_k: tuple[int, ...] = ()
    radii: bool = False
    relevant: bool = False


def query_stats(inputs, plan: Plan, *, ties, seed, backend, chunk_size,
                num_threads) -> dict:
    """Per-query statistics of validated inputs, for ``nhl_jax.metrics``.

    Args:
      inputs: ``_Inputs`` from ``_check_inputs``.
      plan: what to compute.
      ties, seed, backend, chunk_size, num_threads: as in
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
        from nhl_jax import ranking_jax  # imports JAX's device runtime
        stats = ranking_jax.query_stats(inputs, plan, expected=expected,
                                        chunk_size=chunk_size)
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
            sums, found = _hit_sums(ranker.ranked(dist, rel, q_side),
                                    cutoffs)
            count = len(plan.map_k)
            stats.update(aps=sums[:count] / np.maximum(found[:count], 1),
                         ap_counted=found[:count] > 0, hits=found[count:])
            if plan.radii:
                groups = hamming.histograms(dist, rel, num_bits)
            elif plan.relevant:
                stats['relevant'] = ranker.relevant_counts(q_side, rel)
        else:
            groups = counter(q, q_side)
        if groups is None:
            return stats
        counts, hits = groups  # n_d, m_d at each distance d
        stats['relevant'] = hits.sum(axis=1)
        if expected:
            stats.update(expected_stats(counts, hits, plan, harmonic))
        if plan.radii:
            stats['retrieved'] = np.cumsum(counts, axis=1).T
            stats['retrieved_hits'] = np.cumsum(hits, axis=1).T
        return stats

    if num_threads is None and not ranks:
        # Histograms are mostly bincount, which holds the GIL: a second
        # thread gained nothing at 1,000 x 54,000 on 2 idle cores, and
        # lost 25 % on busy ones.
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
        dist = self.ranker.hamming(hamming.pack(q))
        first = np.searchsorted(self.ids, q_side, side='left')
        last = np.searchsorted(self.ids, q_side, side='right')
        bins = self.num_bits + 1
        counts = [hamming.count(row, bins) for row in dist]
        hits = [hamming.count(row[i:j], bins)
                for row, i, j in zip(dist, first, last)]
        return np.stack(counts), np.stack(hits)


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
    if chunk_size is not None:
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
        # Items per class id, the R of class-id queries.
        self.class_sizes = (np.bincount(db_side) if db_side.ndim == 1
                            else None)
        self.ranking = (None if width is None
                        else hamming.Ranking(num_bits, num_items, width))

    def distances_and_relevance(self, q, q_side):
        """([B, N] distances, [B, N] bool relevance) of one chunk.

        Args:
          q: [B, K] float32 ±1 query codes.
          q_side: [B] or [B, C] query operand from ``_relevance_operands``.
        """
        return self.distances(q), self.relevance(q_side)

    def distances(self, q):
        """[B, N] distances of [B, K] float32 ±1 query codes."""
        return self.hamming(hamming.pack(q))

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


def harmonic_numbers(num_items: int) -> np.ndarray:
    """[N + 1] float64 harmonic numbers H_0 = 0, H_n = 1 + 1/2 + ... + 1/n.

    From the digamma function, H_n = psi(n + 1) + gamma, so each is
    within about one ulp (a running sum would accumulate rounding).
    """
    from scipy import special  # a dependency of JAX
    harmonic = special.digamma(np.arange(1.0, num_items + 2)) + np.euler_gamma
    harmonic[0] = 0.0
    return harmonic


def expected_stats(counts, relevant, plan, harmonic, xp=np,
                   supports=None) -> dict:
    """E[AP@k] and E[h_k] over uniformly random orders within tie groups.

    The closed form of McSherry and Najork (ECIR 2008, "Computing
    information retrieval performance measures efficiently in the
    presence of tied scores"), derived here for AP@k normalised by the
    hits h_k in the top k. Per query, tie group d holds n = n_d items, m
    = m_d relevant, below a = n_0 + ... + n_{d-1} items of which M are
    relevant. In a random order of the group, position j (1-based) is
    relevant with probability m / n, and then the j - 1 positions above
    it hold (j - 1)(m - 1) / (n - 1) relevant items on average
    (hypergeometric), so the group adds, in expectation, to
    sum_t t / r_t

      C(n, m) = (m / n) sum_{j=1..n} [M + 1 + (j - 1)(m - 1) / (n - 1)]
                                     / (a + j)
              = (m / n) [(M + 1) D + (m - 1) / (n - 1) (n - (a + 1) D)],

    D = H_{a+n} - H_a. mAP@all divides by the fixed h = R: E[AP] = sum_d
    C(n_d, m_d) / R. A cut k inside group g (a < k <= a + n_g) keeps its
    first c = k - a positions, which hold a hypergeometric number X of
    relevant items (n_g items, m_g relevant, c drawn); h_k = M + X is
    then random, and given X = x the c positions are a random order of x
    relevant items. The groups above g do not depend on X, so

      E[AP@k] = sum_x P(X = x) [S + C(c, x)] / (M + x)   (0 if M + x = 0)

    with S = sum_{d<g} C(n_d, m_d). P(X = x) follows from its ratios
    P(x + 1) / P(x) = (m - x)(c - x) / ((x + 1)(n - m - c + x + 1)),
    normalised. Hits are linear: E[h_k] = M + c m_g / n_g.

    Rounding: n - (a + 1) D cancels, so the term of a group after a items
    carries a relative error of about a * 1e-16 (at most 1e-10 measured
    at a million items), not one ulp.

    Args:
      counts: [B, K + 1] ints, n_d per query (rows sum to N).
      relevant: [B, K + 1] ints, m_d per query.
      plan: a ``Plan``; ``map_k`` and ``count_k`` are used.
      harmonic: [N + 1] float64 ``harmonic_numbers(N)`` (an ``xp`` array).
      xp: the array module, ``numpy`` or ``jax.numpy`` (under x64).
      supports: per ``map_k`` cutoff below N, the static length of the
        hypergeometric support (JAX); None takes it from the data.

    Returns:
      {'aps': [len(map_k), B] float64, 'ap_counted': [len(map_k), B]
      bool (a hit in the top k is possible), 'hits': [len(count_k), B]
      float64 E[h_k]}.
    """
    num_items = len(harmonic) - 1
    above = xp.cumsum(counts, axis=1) - counts
    groups = _Groups(counts, relevant, above,
                     xp.cumsum(relevant, axis=1) - relevant)
    sums = _tie_group_sums(groups.counts, groups.relevant, groups.above,
                           groups.relevant_above, harmonic, xp)
    total = xp.sum(relevant, axis=1)
    aps, counted = [], []
    for i, k in enumerate(plan.map_k):
        if k >= num_items:  # h = R: no cut inside a group
            aps.append(xp.sum(sums, axis=1) / xp.maximum(total, 1))
            counted.append(total > 0)
            continue
        ap, possible = _expected_ap_at_cut(
            k, groups, sums, harmonic, xp,
            None if supports is None else supports[i])
        aps.append(ap)
        counted.append(possible)
    hits = [total.astype(xp.float64) if k >= num_items else
            _expected_hits_at_cut(k, groups, xp) for k in plan.count_k]
    num_rows = counts.shape[0]
    return {'aps': _stack(aps, (0, num_rows), xp.float64, xp),
            'ap_counted': _stack(counted, (0, num_rows), bool, xp),
            'hits': _stack(hits, (0, num_rows), xp.float64, xp)}


def hypergeometric_support(k: int, num_items: int) -> int:
    """A bound on the values X takes at a cut k < N: min(k, N - k) + 1.

    X lies in [max(0, c - n + m), min(c, m)], min(c, m, n - m, n - c) + 1
    values, and c <= k, n - c <= N - k.
    """
    return min(k, num_items - k) + 1


class _Groups(NamedTuple):
    """Tie groups of query rows: [B, K + 1] arrays over distances d."""
    counts: object  # n_d
    relevant: object  # m_d
    above: object  # a_d = n_0 + ... + n_{d-1}
    relevant_above: object  # M_d = m_0 + ... + m_{d-1}


def _tie_group_sums(n, m, above, relevant_above, harmonic, xp):
    """C(n, m) of ``expected_stats``, elementwise (ints in, float64 out)."""
    width = harmonic[above + n] - harmonic[above]  # D = sum_j 1 / (a + j)
    n, m, above, relevant_above = (
        v.astype(xp.float64) for v in (n, m, above, relevant_above))
    # sum_j (j - 1) / (a + j), as (j - 1) = (a + j) - (a + 1).
    later = n - (above + 1) * width
    pairs = xp.where(n > 1, (m - 1) / xp.maximum(n - 1, 1), 0.0)
    return xp.where(n > 0, m / xp.maximum(n, 1)
                    * ((relevant_above + 1) * width + pairs * later), 0.0)


def _cut(k, groups, xp):
    """The tie group that holds rank k, per row.

    Returns:
      ([B, 1] int index g of the group, the ``_Groups`` fields at g, each
      [B, 1]).
    """
    index = xp.argmax(groups.above + groups.counts >= k, axis=1)[:, None]
    return index, _Groups(*(xp.take_along_axis(v, index, axis=1)
                            for v in groups))


def _expected_hits_at_cut(k, groups, xp):
    _, g = _cut(k, groups, xp)
    kept = (k - g.above).astype(xp.float64)
    return (g.relevant_above + kept * g.relevant / g.counts)[:, 0]


def _expected_ap_at_cut(k, groups, sums, harmonic, xp, support):
    """([B] E[AP@k], [B] bool: a hit possible) for a cut k < N."""
    index, g = _cut(k, groups, xp)
    before = xp.take_along_axis(xp.cumsum(sums, axis=1) - sums, index,
                                axis=1)  # S
    kept = k - g.above  # c
    low = xp.maximum(0, kept - (g.counts - g.relevant))
    high = xp.minimum(kept, g.relevant)
    if support is None:
        support = int(xp.max(high - low)) + 1
    x = low + xp.arange(support)[None, :]  # [B, L]
    valid = x <= high
    log_p = _hypergeometric_log_pmf(x, x < high, g.counts, g.relevant, kept,
                                    xp)
    log_p = xp.where(valid, log_p, -xp.inf)
    p = xp.exp(log_p - xp.max(log_p, axis=1, keepdims=True))
    p = p / xp.sum(p, axis=1, keepdims=True)
    cut_sums = _tie_group_sums(kept, x, g.above, g.relevant_above, harmonic,
                               xp)  # C(c, x), [B, L]
    hits = (g.relevant_above + x).astype(xp.float64)
    ap = xp.where(hits > 0, (before + cut_sums) / xp.maximum(hits, 1), 0.0)
    return (xp.sum(xp.where(valid, p * ap, 0.0), axis=1),
            (g.relevant_above + high)[:, 0] > 0)


def _hypergeometric_log_pmf(x, steps, n, m, c, xp):
    """log P(X = x) - log P(X = x_0) along rows of x = x_0, x_0 + 1, ...

    ``steps`` marks the x whose ratio P(x + 1) / P(x) is needed; the
    other entries are left to the caller's mask.
    """
    def log(v):
        return xp.log(xp.where(steps, v, 1).astype(xp.float64))

    ratio = log(m - x) + log(c - x) - log(x + 1) - log(n - m - c + x + 1)
    zero = xp.zeros_like(ratio[:, :1])
    return xp.concatenate([zero, xp.cumsum(ratio[:, :-1], axis=1)], axis=1)


def _stack(rows, empty_shape, dtype, xp):
    if not rows:
        return xp.zeros(empty_shape, dtype)
    return xp.stack(rows)


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


def _check_ties(ties, seed):
    if ties not in TIE_POLICIES:
        raise ValueError(f'ties must be one of {TIE_POLICIES}, got {ties!r}')
    if not (_is_int(seed) and seed >= 0):
        raise ValueError(f'seed must be a non-negative int, got {seed!r}')


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got '
                         f'{backend!r}')


def _check_zero_relevant(zero_relevant):
    if zero_relevant not in ZERO_RELEVANT_POLICIES:
        raise ValueError(f'zero_relevant must be one of '
                         f'{ZERO_RELEVANT_POLICIES}, got {zero_relevant!r}')


def _check_positive_int(value, name):
    if not (_is_int(value) and value > 0):
        raise ValueError(f'{name} must be a positive int, got {value!r}')
