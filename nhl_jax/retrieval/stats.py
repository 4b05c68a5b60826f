"""Per-query statistics from ranked relevance or tie-group histograms.

Both ranking backends finish with these, on the host in float64: the
NumPy one (``ranking``) and the JAX one (``ranking_jax``), whose device
programs return integers only, so their AP is the same sums.
"""

import numpy as np

from nhl_jax.retrieval._inputs import Plan
from nhl_jax.retrieval.ties import expected_stats


def ranked_stats(relevant, plan: Plan) -> dict:
    """AP@k and hits h_k of ranked rows (both backends finish with it).

    Args:
      relevant: [B, k] bool relevance in ranked order, k = the largest
        cutoff of ``plan``.
      plan: the cutoffs ``map_k`` and ``count_k``.

    Returns:
      {'aps': [len(map_k), B] float64, 'ap_counted': [len(map_k), B]
      bool, 'hits': [len(count_k), B] int64}.
    """
    count = len(plan.map_k)
    sums, found = hit_sums(relevant, (*plan.map_k, *plan.count_k))
    return {'aps': sums[:count] / np.maximum(found[:count], 1),
            'ap_counted': found[:count] > 0, 'hits': found[count:]}


def group_stats(counts, hits, plan: Plan, harmonic) -> dict:
    """R, the radius counts and 'expected' ties from tie-group histograms.

    Args:
      counts: [B, K + 1] ints, the items n_d at each distance d.
      hits: [B, K + 1] ints, the relevant items m_d at each distance d.
      plan: what to compute.
      harmonic: ``harmonic_numbers(N)`` for 'expected' ties, else None.

    Returns:
      {'relevant': [B]} and, as the plan and ``harmonic`` ask, the
      ``expected_stats`` and [K + 1, B] 'retrieved', 'retrieved_hits'.
    """
    counts, hits = counts.astype(np.int64), hits.astype(np.int64)
    stats = {'relevant': hits.sum(axis=1)}
    if harmonic is not None:
        stats.update(expected_stats(counts, hits, plan, harmonic))
    if plan.radii:
        stats['retrieved'] = np.cumsum(counts, axis=1).T
        stats['retrieved_hits'] = np.cumsum(hits, axis=1).T
    return stats


def hit_sums(relevant, cutoffs):
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
