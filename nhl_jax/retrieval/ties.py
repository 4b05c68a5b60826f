"""Exact expectations over random orders of tied items (the 'expected' ties).

The tie maths shared by the NumPy and JAX ranking backends: from the
histograms of items and relevant items over the distances 0..K of each
query, ``expected_stats`` gives E[AP@k] and E[h_k] over uniformly random
orders within every group of equal distance (McSherry and Najork, ECIR
2008). In NumPy float64 on the host for both backends: the JAX one
computes the histograms on its device (``ranking_jax``).
"""

import math
from typing import NamedTuple

import numpy as np

# Below this n, H_n is the exactly rounded sum of its terms (fsum); from
# it, the asymptotic series, whose first omitted term is under 1e-20.
_SERIES_FROM = 64


def harmonic_numbers(num_items: int) -> np.ndarray:
    """[N + 1] float64 harmonic numbers H_0 = 0, H_n = 1 + 1/2 + ... + 1/n.

    Each within two ulps of the exact value (a running sum would
    accumulate rounding): ``math.fsum`` of the terms for small n, else
    H_n = ln n + gamma + 1/(2n) - 1/(12n^2) + 1/(120n^4) - 1/(252n^6)
    + 1/(240n^8) (Euler-Maclaurin). NumPy only: SciPy's digamma gives the
    same values, but importing ``scipy.special`` on the way to the first
    tie-aware evaluation costs more than the whole table.
    """
    harmonic = np.empty(num_items + 1)
    small = min(num_items + 1, _SERIES_FROM)
    harmonic[:small] = [math.fsum(1.0 / i for i in range(1, n + 1))
                        for n in range(small)]
    n = np.arange(small, num_items + 1, dtype=np.float64)
    inv = 1.0 / n
    inv2 = inv * inv
    tail = inv / 2 - inv2 * (1 / 12 - inv2 * (1 / 120 - inv2 * (
        1 / 252 - inv2 / 240)))
    harmonic[small:] = np.log(n) + (np.euler_gamma + tail)
    return harmonic


def expected_stats(counts, relevant, plan, harmonic) -> dict:
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
      harmonic: [N + 1] float64 ``harmonic_numbers(N)``.

    Returns:
      {'aps': [len(map_k), B] float64, 'ap_counted': [len(map_k), B]
      bool (a hit in the top k is possible), 'hits': [len(count_k), B]
      float64 E[h_k]}.
    """
    num_items = len(harmonic) - 1
    above = np.cumsum(counts, axis=1) - counts
    groups = _Groups(counts, relevant, above,
                     np.cumsum(relevant, axis=1) - relevant)
    sums = _tie_group_sums(groups.counts, groups.relevant, groups.above,
                           groups.relevant_above, harmonic)
    total = np.sum(relevant, axis=1)
    aps, counted = [], []
    for k in plan.map_k:
        if k >= num_items:  # h = R: no cut inside a group
            aps.append(np.sum(sums, axis=1) / np.maximum(total, 1))
            counted.append(total > 0)
            continue
        ap, possible = _expected_ap_at_cut(k, groups, sums, harmonic)
        aps.append(ap)
        counted.append(possible)
    hits = [total.astype(np.float64) if k >= num_items else
            _expected_hits_at_cut(k, groups) for k in plan.count_k]
    num_rows = counts.shape[0]
    return {'aps': _stack(aps, (0, num_rows), np.float64),
            'ap_counted': _stack(counted, (0, num_rows), bool),
            'hits': _stack(hits, (0, num_rows), np.float64)}


class _Groups(NamedTuple):
    """Tie groups of query rows: [B, K + 1] arrays over distances d."""
    counts: object  # n_d
    relevant: object  # m_d
    above: object  # a_d = n_0 + ... + n_{d-1}
    relevant_above: object  # M_d = m_0 + ... + m_{d-1}


def _tie_group_sums(n, m, above, relevant_above, harmonic):
    """C(n, m) of ``expected_stats``, elementwise (ints in, float64 out)."""
    width = harmonic[above + n] - harmonic[above]  # D = sum_j 1 / (a + j)
    n, m, above, relevant_above = (
        v.astype(np.float64) for v in (n, m, above, relevant_above))
    # sum_j (j - 1) / (a + j), as (j - 1) = (a + j) - (a + 1).
    later = n - (above + 1) * width
    pairs = np.where(n > 1, (m - 1) / np.maximum(n - 1, 1), 0.0)
    return np.where(n > 0, m / np.maximum(n, 1)
                    * ((relevant_above + 1) * width + pairs * later), 0.0)


def _cut(k, groups):
    """The tie group that holds rank k, per row.

    Returns:
      ([B, 1] int index g of the group, the ``_Groups`` fields at g, each
      [B, 1]).
    """
    index = np.argmax(groups.above + groups.counts >= k, axis=1)[:, None]
    return index, _Groups(*(np.take_along_axis(v, index, axis=1)
                            for v in groups))


def _expected_hits_at_cut(k, groups):
    _, g = _cut(k, groups)
    kept = (k - g.above).astype(np.float64)
    return (g.relevant_above + kept * g.relevant / g.counts)[:, 0]


def _expected_ap_at_cut(k, groups, sums, harmonic):
    """([B] E[AP@k], [B] bool: a hit possible) for a cut k < N."""
    index, g = _cut(k, groups)
    before = np.take_along_axis(np.cumsum(sums, axis=1) - sums, index,
                                axis=1)  # S
    kept = k - g.above  # c
    low = np.maximum(0, kept - (g.counts - g.relevant))
    high = np.minimum(kept, g.relevant)
    support = int(np.max(high - low)) + 1
    x = low + np.arange(support)[None, :]  # [B, L]
    valid = x <= high
    log_p = _hypergeometric_log_pmf(x, x < high, g.counts, g.relevant, kept)
    log_p = np.where(valid, log_p, -np.inf)
    p = np.exp(log_p - np.max(log_p, axis=1, keepdims=True))
    p = p / np.sum(p, axis=1, keepdims=True)
    cut_sums = _tie_group_sums(kept, x, g.above, g.relevant_above,
                               harmonic)  # C(c, x), [B, L]
    hits = (g.relevant_above + x).astype(np.float64)
    ap = np.where(hits > 0, (before + cut_sums) / np.maximum(hits, 1), 0.0)
    return (np.sum(np.where(valid, p * ap, 0.0), axis=1),
            (g.relevant_above + high)[:, 0] > 0)


def _hypergeometric_log_pmf(x, steps, n, m, c):
    """log P(X = x) - log P(X = x_0) along rows of x = x_0, x_0 + 1, ...

    ``steps`` marks the x whose ratio P(x + 1) / P(x) is needed; the
    other entries are left to the caller's mask.
    """
    def log(v):
        return np.log(np.where(steps, v, 1).astype(np.float64))

    ratio = log(m - x) + log(c - x) - log(x + 1) - log(n - m - c + x + 1)
    zero = np.zeros_like(ratio[:, :1])
    return np.concatenate([zero, np.cumsum(ratio[:, :-1], axis=1)], axis=1)


def _stack(rows, empty_shape, dtype):
    if not rows:
        return np.zeros(empty_shape, dtype)
    return np.stack(rows)
