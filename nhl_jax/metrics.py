"""Retrieval metrics of Hamming ranking, all from one pass over the ranking.

``retrieval_metrics`` computes, for ±1 codes and 0/1 multi-hot labels:
mAP@k for several k, precision@k, recall@k, precision and recall within
Hamming radius r, and the precision-recall curve over every radius.
Relevance and AP are those of ``nhl_jax.evaluate``, the
ranking that of ``nhl_jax.hamming``: rel(q, b) = 1[y_q . y_b > 0]; the
database is ranked by ascending Hamming distance;
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
``evaluate.mean_average_precision`` and thulab/DeepHash do) and, for every
other metric, the queries with R = 0, whose recall is undefined. A mean over
no query is NaN. DeepHash-pytorch's ``pr_curve`` instead averages over the
queries with a nonzero precision at each radius, which inflates precision
at small radii; that rule is not offered.

Ties (items at the same distance) move mAP@k, precision@k and recall@k, never
the radius metrics. ``ties='stable'`` orders them by database index (the
lower index first), as ``evaluate`` does. ``ties='random'`` orders them by
one permutation of the database, ``np.random.default_rng(seed).permutation
(N)``: item ``perm[0]`` first, then ``perm[1]``, and so on, the same for
every query. So each query sees a uniformly random tie order, the result is
a deterministic function of ``seed``, and chunking cannot change it.

Memory: queries go in chunks of ``chunk_size`` over ``num_threads`` threads;
each chunk holds about 25 bytes per (query, item) pair (distances, relevance,
the int64 sort order, the XOR words or the int64 histogram bins), so the
peak is about 25 * chunk_size * N * threads bytes above float32 copies of the
inputs: 160 MB for 10,000 x 200,000 at the default 16 queries on 2 threads
(measured with tracemalloc at N = 200,000: 22 bytes per pair).
"""

from collections.abc import Sequence

import numpy as np

from nhl_jax import evaluate, hamming

ZERO_RELEVANT_POLICIES = evaluate.ZERO_RELEVANT_POLICIES
DEFAULT_CHUNK_SIZE = evaluate.DEFAULT_CHUNK_SIZE


def _stable_order(num_items, seed):
    """Ties by database index: rank the database as it is."""
    del num_items, seed
    return slice(None)


def _random_order(num_items, seed):
    """Ties by a seeded permutation: rank the permuted database."""
    return np.random.default_rng(seed).permutation(num_items)


# ties -> order(num_items, seed): the database order (an index) whose
# positions break ties.
TIE_POLICIES = {'stable': _stable_order, 'random': _random_order}


def retrieval_metrics(q_codes, q_labels, db_codes, db_labels, *,
                      map_at=(None,), precision_at=(), recall_at=(),
                      radius=(), pr_curve=False, ties='stable', seed=0,
                      zero_relevant='zero', chunk_size=DEFAULT_CHUNK_SIZE,
                      num_threads=None) -> dict:
    """Retrieval metrics of Hamming ranking (definitions: module docstring).

    Args:
      q_codes: [Q, K] ±1 query codes (e.g. from ``evaluate.sign_codes``).
      q_labels: [Q, C] 0/1 multi-hot query labels (bool or numeric).
      db_codes: [N, K] ±1 database codes.
      db_labels: [N, C] 0/1 multi-hot database labels.
      map_at: cutoffs k of mAP@k, all from one ranking; None is all N.
      precision_at: cutoffs k of precision@k; None is all N.
      recall_at: cutoffs k of recall@k; None is all N.
      radius: Hamming radii r (>= 0; above K means K) of precision and
        recall within distance <= r; 2 is the DCH protocol.
      pr_curve: also return the precision-recall curve over r = 0..K.
      ties: 'stable' (database index) or 'random' (a permutation drawn
        from ``seed``).
      seed: seed of the 'random' tie order (a non-negative int).
      zero_relevant: 'zero' or 'skip' (module docstring).
      chunk_size: queries ranked at once (memory: module docstring).
      num_threads: threads over query chunks; None uses every CPU.

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
    _check_policies(ties, seed, zero_relevant, pr_curve)
    evaluate._check_run_options(chunk_size, num_threads)
    inputs = evaluate._check_inputs(q_codes, q_labels, db_codes, db_labels)

    order = TIE_POLICIES[ties](len(inputs.db_codes), seed)
    inputs = inputs._replace(db_codes=inputs.db_codes[order],
                             db_side=inputs.db_side[..., order])
    stats = _per_query_stats(inputs, options, pr_curve, chunk_size,
                             num_threads)
    return _summarise(stats, options, pr_curve, zero_relevant,
                      num_items=len(inputs.db_codes))


def precision_recall_curve(q_codes, q_labels, db_codes, db_labels, *,
                           zero_relevant='zero',
                           chunk_size=DEFAULT_CHUNK_SIZE, num_threads=None):
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
      chunk_size: queries processed at once.
      num_threads: threads over query chunks; None uses every CPU.

    Returns:
      ([K + 1] precision, [K + 1] recall) float64 arrays; entry r is the
      mean over queries within radius r (recall[K] is 1 under 'skip').
    """
    return retrieval_metrics(
        q_codes, q_labels, db_codes, db_labels, map_at=(), pr_curve=True,
        zero_relevant=zero_relevant, chunk_size=chunk_size,
        num_threads=num_threads)['pr_curve']


def _per_query_stats(inputs, options, pr_curve, chunk_size, num_threads):
    """Hit counts, AP sums and radius counts of every query.

    Returns:
      A dict of arrays whose last axis is the Q queries: ``'ap_sums'``,
      ``'ap_hits'`` [len(map_at), Q]; ``'hits'`` [len(precision_at) +
      len(recall_at), Q]; ``'relevant'`` [Q] (R) unless only mAP is
      asked; ``'retrieved'``, ``'retrieved_hits'`` [K + 1, Q] (n_r, m_r)
      when radii are asked.
    """
    inputs, inverse = evaluate._unique_queries(inputs)
    num_items, num_bits = inputs.db_codes.shape
    map_k = [_clip(k, num_items) for k in options['map_at']]
    count_k = [_clip(k, num_items)
               for k in (*options['precision_at'], *options['recall_at'])]
    cutoffs = map_k + count_k
    width = max(cutoffs) if cutoffs else None
    needs_radii = pr_curve or bool(options['radius'])
    needs_relevant = needs_radii or bool(count_k)
    ranker = evaluate._Ranker(inputs.db_codes, inputs.db_side, width)

    def run(start, stop):
        q_side = inputs.q_side[start:stop]
        dist, rel = ranker.distances_and_relevance(
            inputs.q_codes[start:stop], q_side)
        stats = {}
        if needs_relevant:  # R, for recall and the 'skip' rule
            stats['relevant'] = np.count_nonzero(rel, axis=1)
        if cutoffs:
            sums, hits = evaluate._hit_sums(
                ranker.ranked(dist, rel, q_side), cutoffs)
            stats.update(ap_sums=sums[:len(map_k)], ap_hits=hits[:len(map_k)],
                         hits=hits[len(map_k):])
        if needs_radii:
            stats.update(zip(('retrieved', 'retrieved_hits'),
                             _radius_counts(dist, rel, num_bits)))
        return stats

    chunks = hamming.map_chunks(run, len(inputs.q_codes), chunk_size,
                                num_threads)
    return {name: np.concatenate([c[name] for c in chunks], axis=-1)[
        ..., inverse] for name in chunks[0]}


def _radius_counts(dist, rel, num_bits):
    """Items and relevant items within each radius, by histograms.

    Args:
      dist: [B, N] distances in 0..K.
      rel: [B, N] bool relevance.
      num_bits: K.

    Returns:
      ([K + 1, B] n_r, [K + 1, B] m_r) int64: items, and relevant items,
      at distance <= r.
    """
    num_rows, bins = len(dist), num_bits + 1
    flat = (dist + np.arange(num_rows)[:, None] * bins).ravel()  # int64
    length = num_rows * bins
    retrieved = np.bincount(flat, minlength=length).reshape(num_rows, bins)
    hits = np.bincount(flat[rel.ravel()], minlength=length)
    hits = hits.reshape(num_rows, bins)
    return np.cumsum(retrieved, axis=1).T, np.cumsum(hits, axis=1).T


def _summarise(stats, options, pr_curve, zero_relevant, *, num_items):
    """Means over the queries each policy counts (module docstring)."""
    skip = zero_relevant == 'skip'
    relevant = stats.get('relevant')  # [Q] R, unless only mAP is asked
    has_relevant = None if relevant is None else relevant > 0
    results = {}
    for i, k in enumerate(options['map_at']):
        hits = stats['ap_hits'][i]
        aps = stats['ap_sums'][i] / np.maximum(hits, 1)
        results[f'map@{_name(k)}'] = _mean(aps, hits > 0, skip)
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
        if not (evaluate._is_int(value) and value >= minimum):
            raise ValueError(f'{name} must hold {allowed}, got {value!r} '
                             f'in {values!r}')


def _check_policies(ties, seed, zero_relevant, pr_curve):
    if ties not in TIE_POLICIES:
        raise ValueError(f'ties must be one of {tuple(TIE_POLICIES)}, got '
                         f'{ties!r}')
    if not (evaluate._is_int(seed) and seed >= 0):
        raise ValueError(f'seed must be a non-negative int, got {seed!r}')
    evaluate._check_zero_relevant(zero_relevant)
    if not isinstance(pr_curve, (bool, np.bool_)):
        raise ValueError(f'pr_curve must be a bool, got {pr_curve!r}')
