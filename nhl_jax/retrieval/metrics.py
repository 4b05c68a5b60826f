"""Retrieval metrics of Hamming ranking, all from one pass over the ranking.

``retrieval_metrics`` computes, for ±1 codes and 0/1 multi-hot labels:
mAP@k for several k, precision@k, recall@k, precision and recall within
Hamming radius r, and the precision-recall curve over every radius.
Relevance and ranking are those of ``ranking``: rel(q, b) = 1[y_q . y_b >
0]; the database is ranked by ascending Hamming distance;
AP@k = (1/h_k) sum_t t / r_t over the h_k hits at 1-based ranks r_t <= k.

Per query, with R relevant items in the database, h_k hits in the top k
(k above N means N) and, within radius r (distance <= r, the DCH protocol;
faiss's strict ``range_search`` needs r + 1), n_r retrieved items of which
m_r are relevant:

| metric | value | nothing retrieved / nothing relevant |
|---|---|---|
| ``map@k`` | AP@k | h_k = 0: AP 0 (DeepHash-pytorch, NHL) |
| ``precision@k`` | h_k / min(k, N) | R = 0: 0 |
| ``recall@k`` | h_k / R | R = 0: 0 (undefined) |
| ``precision@r<r>`` | m_r / n_r | n_r = 0: 0 (thulab/DeepHash's DCH code) |
| ``recall@r<r>`` | m_r / R | R = 0: 0 (undefined) |
| ``pr_curve`` | (precision, recall) within r, for r = 0..K | as above |

Each reported value is the mean over queries. ``zero_relevant`` decides
which queries that mean covers: 'zero' (default) counts every query with the
values above; 'skip' leaves out, for ``map@k``, the queries with h_k = 0 (as
``mean_average_precision`` and thulab/DeepHash do) and, for every
other metric, the queries with R = 0, whose recall is undefined. A mean over
no query is NaN. DeepHash-pytorch's ``pr_curve`` instead averages over the
queries with a nonzero precision at each radius, which inflates precision
at small radii; that rule is not offered.

Ties (items at the same distance) move mAP@k, precision@k and recall@k, never
the radius metrics. ``ties='stable'`` orders them by database index (the
lower index first), as ``ranking`` does. ``ties='random'`` orders them by
one permutation of the database, ``np.random.default_rng(seed).permutation
(N)``: item ``perm[0]`` first, then ``perm[1]``, and so on, the same for
every query. So each query sees a uniformly random tie order, the result is
a deterministic function of ``seed``, and chunking cannot change it.
``ties='expected'`` reports, per query, the exact expectation over uniformly
random orders within each distance group (``ties.expected_stats``):
E[AP@k], and E[h_k] / min(k, N) and E[h_k] / R for precision and recall;
with 'skip', ``map@k`` leaves out the queries whose top k holds no relevant
item in any tie order. It needs no ranking: per query only the histograms of
items and relevant items over distances 0..K, as the radius metrics.

Memory: queries go in chunks of ``chunk_size`` over ``num_threads`` threads;
each chunk holds about 25 bytes per (query, item) pair (distances, relevance,
the int64 sort order, the XOR words or the int64 histogram bins), so the
peak is about 25 * chunk_size * N * threads bytes above float32 copies of the
inputs (a tracemalloc measurement is in benchmarks/RESULTS.md).
"""

from collections.abc import Sequence

import numpy as np

from nhl_jax.checks import is_int
from nhl_jax.retrieval import _inputs, codes, hamming, ranking


@_inputs.host_only
def hamming_distances(q_codes, db_codes) -> np.ndarray:
    """All query-to-database Hamming distances, (K - q . b) / 2.

    Computed exactly, by popcounts of packed bits (``hamming``).
    The full [Q, N] matrix is materialised; ``average_precisions`` works
    in query chunks and never does.

    Args:
      q_codes: [Q, K] ±1 query codes.
      db_codes: [N, K] ±1 database codes.

    Returns:
      [Q, N] distances in the smallest unsigned dtype that holds K (uint8
      for K <= 255).
    """
    q = _inputs.as_codes(q_codes, 'q_codes')
    db = _inputs.as_codes(db_codes, 'db_codes')
    _inputs.check_same_bits(q, db)
    return hamming.distances(codes.pack(q), codes.pack(db), q.shape[1])


@_inputs.host_only
def average_precisions(q_codes, q_labels, db_codes, db_labels, *,
                       top_k=None, ties='stable', seed=0, backend='auto',
                       chunk_size=None, num_threads=None,
                       devices=None) -> np.ndarray:
    """Per-query AP@top_k of Hamming ranking (``ranking``).

    Args:
      q_codes: [Q, K] ±1 query codes (e.g. from ``sign_codes``).
      q_labels: [Q, C] 0/1 multi-hot query labels (bool or numeric).
      db_codes: [N, K] ±1 database codes.
      db_labels: [N, C] 0/1 multi-hot database labels.
      top_k: number of top-ranked items to score; None scores all N.
        Values above N are treated as N.
      ties: 'stable', 'random' or 'expected' (``ranking``).
      seed: seed of the 'random' tie order (a non-negative int).
      backend: 'numpy', 'jax' or 'auto' (``ranking``).
      chunk_size: queries ranked at once; None: 16 in NumPy, where peak
        memory is about 25 bytes per element of [chunk_size, N] per
        thread (distances, relevance, the int64 sort order, the XOR
        words) above float32 copies of the inputs; in JAX,
        ``ranking_jax.default_chunk_size``.
      num_threads: NumPy threads over query chunks; None uses every CPU
        (one for 'expected', whose counting holds the GIL).
      devices: JAX devices of this process that split each chunk's
        queries (``ranking_jax``); None: all local devices.

    Returns:
      [Q] float64 AP per query; 0 for a query with no relevant item in
      its top k ('expected': the expectation of that AP).

    Raises:
      ValueError: for malformed inputs; the message names the fix.
    """
    aps, _ = _average_precisions_and_hits(
        q_codes, q_labels, db_codes, db_labels, top_k=top_k, ties=ties,
        seed=seed, backend=backend, chunk_size=chunk_size,
        num_threads=num_threads, devices=devices)
    return aps


@_inputs.host_only
def mean_average_precision(q_codes, q_labels, db_codes, db_labels, *,
                           top_k=None, zero_relevant='zero', ties='stable',
                           seed=0, backend='auto', chunk_size=None,
                           num_threads=None, devices=None) -> float:
    """mAP@top_k of Hamming ranking (``ranking``).

    Args:
      q_codes, q_labels, db_codes, db_labels, top_k: as in
        ``average_precisions``.
      zero_relevant: queries with no relevant item in their top k count
        as AP 0 ('zero', DeepHash-pytorch and NHL) or are left out of the
        mean ('skip', thulab/DeepHash); under 'expected' ties, 'skip'
        leaves out the queries whose top k holds no relevant item in any
        tie order. With 'skip' and no query having a hit, the mean is
        undefined and NaN is returned.
      ties: 'stable', 'random' or 'expected' (``ranking``).
      seed: seed of the 'random' tie order.
      backend: 'numpy', 'jax' or 'auto' (``ranking``).
      chunk_size: queries ranked at once (see ``average_precisions``).
      num_threads: NumPy threads over query chunks; None uses every CPU.
      devices: JAX devices that split the query chunks (as
        ``average_precisions``).

    Returns:
      The mean AP as a Python float.

    Raises:
      ValueError: for malformed inputs; the message names the fix.
    """
    _inputs.check_zero_relevant(zero_relevant)
    aps, counted = _average_precisions_and_hits(
        q_codes, q_labels, db_codes, db_labels, top_k=top_k, ties=ties,
        seed=seed, backend=backend, chunk_size=chunk_size,
        num_threads=num_threads, devices=devices)
    if zero_relevant == 'skip':
        aps = aps[counted]
        if aps.size == 0:
            return float('nan')
    return float(np.mean(aps))


def _average_precisions_and_hits(q_codes, q_labels, db_codes, db_labels, *,
                                 top_k, ties, seed, backend, chunk_size,
                                 num_threads, devices):
    """Validates the inputs, then ranks query chunks.

    Returns:
      ([Q] float64 AP, [Q] bool: a relevant item is (or, under
      'expected', can be) in the top k).
    """
    _inputs.check_top_k(top_k)
    _inputs.check_ties(ties, seed)
    _inputs.check_backend(backend)
    _inputs.check_run_options(chunk_size, num_threads, devices)
    inputs = _inputs.check_inputs(q_codes, q_labels, db_codes, db_labels)
    num_items = len(inputs.db_codes)
    plan = _inputs.Plan(map_k=(num_items if top_k is None else min(top_k,
                                                                   num_items),))
    stats = ranking.query_stats(inputs, plan, ties=ties, seed=seed,
                                backend=backend, chunk_size=chunk_size,
                                num_threads=num_threads, devices=devices)
    return stats['aps'][0], stats['ap_counted'][0]

@_inputs.host_only
def retrieval_metrics(q_codes, q_labels, db_codes, db_labels, *,
                      map_at=(None,), precision_at=(), recall_at=(),
                      radius=(), pr_curve=False, ties='stable', seed=0,
                      zero_relevant='zero', backend='auto', chunk_size=None,
                      num_threads=None, devices=None) -> dict:
    """Retrieval metrics of Hamming ranking (definitions: module docstring).

    Args:
      q_codes: [Q, K] ±1 query codes (e.g. from ``codes.sign_codes``).
      q_labels: [Q, C] 0/1 multi-hot query labels (bool or numeric).
      db_codes: [N, K] ±1 database codes.
      db_labels: [N, C] 0/1 multi-hot database labels.
      map_at: cutoffs k of mAP@k, all from one ranking; None is all N.
      precision_at: cutoffs k of precision@k; None is all N.
      recall_at: cutoffs k of recall@k; None is all N.
      radius: Hamming radii r (>= 0; above K means K) of precision and
        recall within distance <= r; 2 is the DCH protocol.
      pr_curve: also return the precision-recall curve over r = 0..K.
      ties: 'stable' (database index), 'random' (a permutation drawn
        from ``seed``) or 'expected' (the expectation over random tie
        orders; module docstring).
      seed: seed of the 'random' tie order (a non-negative int).
      zero_relevant: 'zero' or 'skip' (module docstring).
      backend: 'numpy', 'jax' or 'auto' (JAX on a GPU or TPU, else
        NumPy; ``ranking``).
      chunk_size: queries ranked at once; None: 16 in NumPy (memory:
        module docstring), ``ranking_jax.default_chunk_size`` in JAX.
      num_threads: NumPy threads over query chunks; None uses every CPU
        when something is ranked, else one (``ranking``).
      devices: JAX devices that split the query chunks (as
        ``average_precisions``).

    Returns:
      A dict of Python floats keyed ``'map@all'``, ``'map@<k>'``,
      ``'precision@<k>'``, ``'recall@<k>'`` (``'@all'`` for None),
      ``'precision@r<r>'``, ``'recall@r<r>'``, one per requested value as
      given, plus ``'pr_curve'``: ([K + 1] precision, [K + 1] recall)
      float64 arrays when ``pr_curve`` is set.

    Raises:
      ValueError: for malformed inputs or options, before any work.
    """
    options = dict(map_at=map_at, precision_at=precision_at,
                   recall_at=recall_at, radius=radius)
    for name, values in options.items():
        _check_cutoffs(values, name, minimum=0 if name == 'radius' else 1)
    _check_policies(ties, seed, zero_relevant, pr_curve, backend)
    _inputs.check_run_options(chunk_size, num_threads, devices)
    inputs = _inputs.check_inputs(q_codes, q_labels, db_codes, db_labels)
    num_items = len(inputs.db_codes)
    count_k = (*precision_at, *recall_at)
    radii = pr_curve or bool(radius)
    plan = _inputs.Plan(
        map_k=tuple(_clip(k, num_items) for k in map_at),
        count_k=tuple(_clip(k, num_items) for k in count_k), radii=radii,
        relevant=radii or bool(count_k))
    stats = ranking.query_stats(inputs, plan, ties=ties, seed=seed,
                                backend=backend, chunk_size=chunk_size,
                                num_threads=num_threads, devices=devices)
    return _summarise(stats, options, pr_curve, zero_relevant,
                      num_items=num_items)


@_inputs.host_only
def precision_recall_curve(q_codes, q_labels, db_codes, db_labels, *,
                           zero_relevant='zero', backend='auto',
                           chunk_size=None, num_threads=None,
                           devices=None):
    """Mean precision and recall within Hamming radius r, for r = 0..K.

    Within radius r means distance <= r; a query that retrieves nothing
    has precision 0, one with no relevant item recall 0 (module
    docstring). Ties do not matter: no ranking is computed.

    Args:
      q_codes: [Q, K] ±1 query codes.
      q_labels: [Q, C] 0/1 multi-hot query labels.
      db_codes: [N, K] ±1 database codes.
      db_labels: [N, C] 0/1 multi-hot database labels.
      zero_relevant: 'zero' counts queries with no relevant item as 0;
        'skip' leaves them out.
      backend: 'numpy', 'jax' or 'auto' (as ``retrieval_metrics``).
      chunk_size: queries processed at once (as ``retrieval_metrics``).
      num_threads: threads over query chunks; None uses every CPU.
      devices: JAX devices that split the query chunks (as
        ``average_precisions``).

    Returns:
      ([K + 1] precision, [K + 1] recall) float64 arrays; entry r is the
      mean over queries within radius r (recall[K] is 1 under 'skip').
    """
    return retrieval_metrics(
        q_codes, q_labels, db_codes, db_labels, map_at=(), pr_curve=True,
        zero_relevant=zero_relevant, backend=backend, chunk_size=chunk_size,
        num_threads=num_threads, devices=devices)['pr_curve']


def _summarise(stats, options, pr_curve, zero_relevant, *, num_items):
    """Means over the queries each policy counts (module docstring)."""
    skip = zero_relevant == 'skip'
    relevant = stats.get('relevant')  # [Q] R, unless only mAP is asked
    has_relevant = None if relevant is None else relevant > 0
    results = {}
    for i, k in enumerate(options['map_at']):
        results[f'map@{_name(k)}'] = _mean(stats['aps'][i],
                                           stats['ap_counted'][i], skip)
    for i, k in enumerate(options['precision_at']):
        precision = stats['hits'][i] / _clip(k, num_items)
        results[f'precision@{_name(k)}'] = _mean(precision, has_relevant,
                                                 skip)
    offset = len(options['precision_at'])
    for i, k in enumerate(options['recall_at']):
        recall = stats['hits'][offset + i] / np.maximum(relevant, 1)
        results[f'recall@{_name(k)}'] = _mean(recall, has_relevant, skip)
    if options['radius'] or pr_curve:
        precision, recall = _radius_curves(stats, relevant)
        for r in options['radius']:
            row = min(r, len(precision) - 1)
            results[f'precision@r{r}'] = _mean(precision[row],
                                               has_relevant, skip)
            results[f'recall@r{r}'] = _mean(recall[row], has_relevant, skip)
        if pr_curve:
            results['pr_curve'] = tuple(
                np.array([_mean(row, has_relevant, skip) for row in curve])
                for curve in (precision, recall))
    return results


def _radius_curves(stats, relevant):
    """([K + 1, Q] precision, [K + 1, Q] recall) within each radius."""
    retrieved, hits = stats['retrieved'], stats['retrieved_hits']
    return (hits / np.maximum(retrieved, 1),
            hits / np.maximum(relevant, 1))


def _mean(values, counted, skip):
    """Mean of [Q] values over every query, or only ``counted`` ones."""
    if skip:
        values = values[counted]
    return float(np.mean(values)) if values.size else float('nan')


def _clip(k, num_items):
    return num_items if k is None else min(k, num_items)


def _name(k):
    return 'all' if k is None else str(k)


def _check_cutoffs(values, name, minimum):
    """Checks a sequence of ints >= minimum (None allowed for cutoffs)."""
    allowed = ('non-negative ints' if minimum == 0
               else 'positive ints or None (all N items)')
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f'{name} must be a tuple of {allowed}, got '
                         f'{values!r}; for one value write ({values!r},)')
    for value in values:
        if value is None and minimum > 0:
            continue
        if not (is_int(value) and value >= minimum):
            raise ValueError(f'{name} must hold {allowed}, got {value!r} '
                             f'in {values!r}')


def _check_policies(ties, seed, zero_relevant, pr_curve, backend):
    _inputs.check_ties(ties, seed)
    _inputs.check_backend(backend)
    _inputs.check_zero_relevant(zero_relevant)
    if not isinstance(pr_curve, (bool, np.bool_)):
        raise ValueError(f'pr_curve must be a bool, got {pr_curve!r}')
