"""Tests for ties='expected': the exact expectation over random tie orders.

Checked against brute-force enumeration of every order within each group
of equal distance on tiny cases, and against the mean of many 'random'
draws on data with many ties.
"""

import itertools

import numpy as np
import pytest

from nhl_jax import retrieval
from nhl_jax.retrieval import metrics


def codes_at(distances, num_bits):
    """±1 database codes at the given distances from the all-+1 query."""
    codes = np.ones((len(distances), num_bits), np.int8)
    for row, dist in enumerate(distances):
        codes[row, :dist] = -1
    return codes


def tiny_case(distances, relevant, num_bits=4):
    """(q_codes, q_labels, db_codes, db_labels) of one query."""
    relevant = np.asarray(relevant, bool)
    return (np.ones((1, num_bits), np.int8), np.array([[1, 0]]),
            codes_at(distances, num_bits),
            np.stack([relevant, ~relevant], axis=1).astype(int))


def every_tie_order(distances):
    """Every ranking that sorts by distance, each order of ties once."""
    groups = [np.flatnonzero(np.asarray(distances) == d)
              for d in sorted(set(distances))]
    for orders in itertools.product(*map(itertools.permutations, groups)):
        yield np.concatenate(orders)


def brute_force(distances, relevant, k):
    """Mean over every tie order of (AP@k, hits in the top k)."""
    aps, hits = [], []
    for order in every_tie_order(distances):
        top = np.asarray(relevant, bool)[order][:k]
        hits.append(top.sum())
        aps.append(np.mean(np.cumsum(top)[top] / (np.flatnonzero(top) + 1))
                   if top.any() else 0.0)
    return np.mean(aps), np.mean(hits)


def tiny_cases(count, sizes, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        size = int(rng.choice(sizes))
        yield (rng.integers(0, 5, size).tolist(),
               (rng.random(size) < 0.5).tolist())


@pytest.mark.parametrize('backend', ['numpy', 'jax'])
def test_matches_every_tie_order_enumerated(backend):
    # JAX compiles one program per database size and cutoffs: keep both.
    cases = (tiny_cases(150, range(1, 8)) if backend == 'numpy'
             else tiny_cases(30, [6]))
    for distances, relevant in cases:
        cutoffs = tuple(range(1, len(distances) + 2))
        got = metrics.retrieval_metrics(
            *tiny_case(distances, relevant), map_at=cutoffs,
            precision_at=cutoffs, recall_at=cutoffs, ties='expected',
            backend=backend)
        for k in cutoffs:
            want_ap, want_hits = brute_force(distances, relevant, k)
            assert got[f'map@{k}'] == pytest.approx(want_ap, abs=1e-12), (
                distances, relevant, k)
            width = min(k, len(distances))
            assert got[f'precision@{k}'] == pytest.approx(
                want_hits / width, abs=1e-12)
            assert got[f'recall@{k}'] == pytest.approx(
                want_hits / max(sum(relevant), 1), abs=1e-12)


def test_mean_average_precision_offers_it_at_all_and_at_k():
    distances, relevant = [1, 1, 2, 2, 2, 0, 3], [0, 1, 1, 0, 1, 0, 1]
    data = tiny_case(distances, relevant)
    for top_k in (None, 1, 3, 4, 6):
        want, _ = brute_force(distances, relevant, top_k or len(distances))
        got = retrieval.mean_average_precision(*data, top_k=top_k,
                                               ties='expected')
        assert got == pytest.approx(want, abs=1e-12)


def random_codes(rng, count, num_bits):
    return rng.choice(np.array([-1, 1], np.int8), size=(count, num_bits))


@pytest.fixture(scope='module')
def tied_data():
    """8-bit codes (9 distances) with multi-labels: nearly all ties."""
    rng = np.random.default_rng(4)
    return (random_codes(rng, 30, 8), rng.random((30, 4)) < 0.3,
            random_codes(rng, 300, 8), rng.random((300, 4)) < 0.25)


def test_mean_of_random_draws_converges_to_it(tied_data):
    options = dict(map_at=(None, 10, 57), precision_at=(57,))
    expected = metrics.retrieval_metrics(*tied_data, **options,
                                         ties='expected')
    draws = [metrics.retrieval_metrics(*tied_data, **options, ties='random',
                                       seed=seed) for seed in range(300)]
    for name, value in expected.items():
        values = np.array([d[name] for d in draws])
        error = values.std() / np.sqrt(len(values))
        assert values.std() > 0, name  # the ties do move it
        assert abs(values.mean() - value) < 4 * error, (name, value, error)


def test_does_not_depend_on_database_order(tied_data):
    q_codes, q_labels, db_codes, db_labels = tied_data
    order = np.random.default_rng(1).permutation(len(db_codes))
    for top_k in (None, 10):
        want = retrieval.average_precisions(*tied_data, top_k=top_k,
                                            ties='expected')
        got = retrieval.average_precisions(
            q_codes, q_labels, db_codes[order], db_labels[order],
            top_k=top_k, ties='expected')
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)


def test_skip_leaves_out_queries_without_a_possible_hit():
    # Query 0: its only relevant item (distance 2) is out of the top 1
    # in every order; query 1: in the top 1 half the time.
    q_codes = np.ones((2, 4), np.int8)
    q_labels = np.array([[1, 0], [0, 1]])
    db_codes = codes_at([0, 0, 2], 4)
    db_labels = np.array([[0, 1], [0, 0], [1, 0]])
    data = (q_codes, q_labels, db_codes, db_labels)
    aps = retrieval.average_precisions(*data, top_k=1, ties='expected')
    np.testing.assert_allclose(aps, [0.0, 0.5])
    assert retrieval.mean_average_precision(
        *data, top_k=1, ties='expected', zero_relevant='skip') == 0.5
    assert retrieval.mean_average_precision(
        *data, top_k=1, ties='expected') == 0.25


def test_readme_worked_example():
    # docs/retrieval.md, "Ties": query 00000000 against five 8-bit codes at
    # distances 1, 1, 2, 2, 2; items 1, 2 and 4 are relevant.
    bits = ['10000000', '01000000', '11000000', '00110000', '00001100']
    db_codes = np.array([[1 if b == '1' else -1 for b in code]
                         for code in bits])
    data = (-np.ones((1, 8)), np.array([[1, 0]]), db_codes,
            np.array([[0, 1], [1, 0], [1, 0], [0, 1], [1, 0]]))
    np.testing.assert_array_equal(retrieval.hamming_distances(
        data[0], db_codes), [[1, 1, 2, 2, 2]])
    results = {ties: [retrieval.mean_average_precision(
        *data, top_k=k, ties=ties) for k in (None, 3)]
        for ties in ('stable', 'random', 'expected')}
    # stable: ranked relevance 0 1 1 0 1; random (seed 0): 0 1 1 1 0.
    np.testing.assert_allclose(results['stable'], [
        (1 / 2 + 2 / 3 + 3 / 5) / 3, (1 / 2 + 2 / 3) / 2])
    np.testing.assert_allclose(results['random'], [
        (1 / 2 + 2 / 3 + 3 / 4) / 3, (1 / 2 + 2 / 3) / 2])
    np.testing.assert_allclose(results['expected'], [
        (0.75 + (1.1 + 19 / 15 + 17 / 12) / 3) / 3,
        brute_force([1, 1, 2, 2, 2], [0, 1, 1, 0, 1], 3)[0]])


def test_harmonic_numbers_are_within_two_ulps_of_the_exact_values():
    """Exact rationals for small n, SciPy's digamma (H_n = psi(n + 1) +
    gamma) up to a million: the series takes over at n = 64."""
    import fractions
    import math

    from scipy import special

    from nhl_jax.retrieval.ties import harmonic_numbers

    h = harmonic_numbers(200)
    exact, total = [0.0], fractions.Fraction(0)
    for n in range(1, 201):
        total += fractions.Fraction(1, n)
        exact.append(float(total))
    np.testing.assert_array_less(np.abs(h - exact),
                                 2 * np.spacing(np.array(exact)) + 1e-300)
    big = harmonic_numbers(10**6)
    n = np.array([64, 65, 1000, 4000, 123457, 10**6])
    reference = special.digamma(n + 1.0) + np.euler_gamma
    assert np.all(np.abs(big[n] - reference) <= 2 * np.spacing(reference))
    assert harmonic_numbers(0).tolist() == [0.0]
    assert math.isclose(harmonic_numbers(3)[3], 11 / 6, rel_tol=1e-15)
