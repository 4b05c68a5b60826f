"""retrieval.metrics against a slow, obviously correct query loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax import retrieval
from nhl_jax.errors import UsageError
from nhl_jax.retrieval import metrics

# 6-bit codes have 7 distances, so most ranks are ties; N is small enough
# for a per-query Python loop and odd, so no chunk size divides Q.
NUM_QUERIES, NUM_ITEMS, NUM_BITS, NUM_CLASSES = 37, 150, 6, 4

FULL = dict(map_at=(None, 1, 10, 149, 150, 1000),
            precision_at=(1, 7, None, 500), recall_at=(3, None, 200),
            radius=(0, 1, 2, NUM_BITS, NUM_BITS + 3), pr_curve=True)
# Cutoffs at most N / 2 take the partition path instead of the full sort
# (on the 701-item database: NumPy's partition leaves short prefixes
# sorted anyway, so only a long top k shows a missing sort).
TOP = dict(map_at=(5, 300), precision_at=(5, 300), recall_at=(300,))


def tie_priority(num_items, ties, seed):
    """Rank of each item among ties, as the module docstring defines it."""
    if ties == 'stable':
        return np.arange(num_items)
    perm = np.random.default_rng(seed).permutation(num_items)
    return np.argsort(perm)  # perm[0] first, then perm[1], ...


def reference_metrics(q_codes, q_labels, db_codes, db_labels, *, map_at=(),
                      precision_at=(), recall_at=(), radius=(),
                      pr_curve=False, ties='stable', seed=0,
                      zero_relevant='zero'):
    """Per-query loop: count differing bits, lexsort, walk the ranking."""
    num_items, num_bits = db_codes.shape
    priority = tie_priority(num_items, ties, seed)
    per_query = {}  # name -> list of (value, counted under 'skip')

    def add(name, value, counted):
        per_query.setdefault(name, []).append((value, counted))

    for code, label in zip(q_codes, q_labels):
        dist = np.sum(db_codes != code, axis=1)
        rel = np.any((db_labels > 0) & (label > 0), axis=1)
        total = rel.sum()
        ranked = rel[np.lexsort((priority, dist))]
        for k in map_at:
            top = ranked[:num_items if k is None else k]
            # Precision at each hit's rank, averaged over the hits.
            precisions = np.cumsum(top)[top] / (np.flatnonzero(top) + 1)
            add(f'map@{k or "all"}', precisions.mean() if top.any() else 0.0,
                top.any())
        for k in precision_at:
            width = num_items if k is None else min(k, num_items)
            add(f'precision@{k or "all"}', ranked[:width].sum() / width,
                total > 0)
        for k in recall_at:
            width = num_items if k is None else min(k, num_items)
            add(f'recall@{k or "all"}',
                ranked[:width].sum() / total if total else 0.0, total > 0)
        for r in radius:
            precision, recall = within_radius(dist, rel, r)
            add(f'precision@r{r}', precision, total > 0)
            add(f'recall@r{r}', recall, total > 0)
        for r in range(num_bits + 1) if pr_curve else ():
            precision, recall = within_radius(dist, rel, r)
            add(f'curve_precision{r}', precision, total > 0)
            add(f'curve_recall{r}', recall, total > 0)

    def mean(pairs):
        values = [v for v, counted in pairs
                  if counted or zero_relevant == 'zero']
        return float(np.mean(values)) if values else float('nan')

    results = {name: mean(pairs) for name, pairs in per_query.items()
               if not name.startswith('curve')}
    if pr_curve:
        results['pr_curve'] = tuple(
            np.array([mean(per_query[f'curve_{kind}{r}'])
                      for r in range(num_bits + 1)])
            for kind in ('precision', 'recall'))
    return results


def within_radius(dist, rel, r):
    """(precision, recall) of the items at distance <= r; 0 when empty."""
    within = dist <= r
    found = np.sum(within & rel)
    precision = found / within.sum() if within.any() else 0.0
    recall = found / rel.sum() if rel.any() else 0.0
    return precision, recall


def assert_metrics_equal(actual, expected):
    assert set(actual) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=0, atol=1e-12,
                                   err_msg=name)


def random_codes(rng, count, num_bits):
    return rng.choice(np.array([-1, 1], np.int8), size=(count, num_bits))


@pytest.fixture(scope='module')
def tied_data():
    """Multi-label data with many ties, label-less rows, repeated queries."""
    rng = np.random.default_rng(0)
    q_codes = random_codes(rng, NUM_QUERIES, NUM_BITS)
    q_labels = rng.random((NUM_QUERIES, NUM_CLASSES)) < 0.3
    q_codes[-5:], q_labels[-5:] = q_codes[:5], q_labels[:5]
    db_codes = random_codes(rng, NUM_ITEMS, NUM_BITS)
    db_labels = rng.random((NUM_ITEMS, NUM_CLASSES)) < 0.2
    return q_codes, q_labels, db_codes, db_labels


@pytest.fixture(scope='module')
def large_data():
    """Multi-label data with a database of 701 items."""
    rng = np.random.default_rng(2)
    return (random_codes(rng, NUM_QUERIES, NUM_BITS),
            rng.random((NUM_QUERIES, NUM_CLASSES)) < 0.3,
            random_codes(rng, 701, NUM_BITS),
            rng.random((701, NUM_CLASSES)) < 0.2)


@pytest.fixture(scope='module')
def single_label_data():
    """One-hot labels, which take the class-id path."""
    rng = np.random.default_rng(1)
    classes = np.eye(NUM_CLASSES)
    return (random_codes(rng, NUM_QUERIES, NUM_BITS),
            classes[rng.integers(0, NUM_CLASSES, NUM_QUERIES)],
            random_codes(rng, NUM_ITEMS, NUM_BITS),
            classes[rng.integers(0, NUM_CLASSES, NUM_ITEMS)])


@pytest.mark.parametrize('data', ['tied_data', 'single_label_data',
                                  'large_data'])
@pytest.mark.parametrize('options', [FULL, TOP], ids=['full', 'top'])
@pytest.mark.parametrize('ties', ['stable', 'random'])
@pytest.mark.parametrize('zero_relevant', ['zero', 'skip'])
def test_matches_reference(request, data, options, ties, zero_relevant):
    data = request.getfixturevalue(data)
    policy = dict(ties=ties, seed=3, zero_relevant=zero_relevant)
    expected = reference_metrics(*data, **options, **policy)
    for chunk_size in (5, 16, 64):
        actual = metrics.retrieval_metrics(*data, **options, **policy,
                                           chunk_size=chunk_size)
        assert_metrics_equal(actual, expected)


def test_query_classes_missing_from_the_database():
    # One-hot labels count R per class id; classes 2 and 3 have no item.
    rng = np.random.default_rng(5)
    data = (random_codes(rng, 20, NUM_BITS),
            np.eye(4)[rng.integers(0, 4, 20)],
            random_codes(rng, 50, NUM_BITS),
            np.eye(4)[rng.integers(0, 2, 50)])
    for zero_relevant in ('zero', 'skip'):
        options = dict(map_at=(5,), precision_at=(5,), recall_at=(7,),
                       zero_relevant=zero_relevant)
        assert_metrics_equal(metrics.retrieval_metrics(*data, **options),
                             reference_metrics(*data, **options))


def test_data_exercise_every_case(tied_data):
    q_codes, q_labels, db_codes, db_labels = tied_data
    rel = (q_labels.astype(int) @ db_labels.T.astype(int)) > 0
    dist = np.sum(q_codes[:, None] != db_codes[None], axis=2)
    assert np.any(~rel.any(axis=1))  # queries with no relevant item
    assert np.any(~(dist <= 0).any(axis=1))  # nothing within radius 0
    # A query with relevant items but none in its top 1 (skip differs).
    expected = reference_metrics(*tied_data, map_at=(1,))
    skipped = reference_metrics(*tied_data, map_at=(1,),
                                zero_relevant='skip')
    assert expected['map@1'] != skipped['map@1']
    # Repeated query rows take the de-duplicated path.
    assert len(np.unique(np.hstack([q_codes, q_labels]), axis=0)) < len(
        q_codes)


def test_random_ties_differ_from_stable_and_follow_the_seed(tied_data):
    stable = metrics.retrieval_metrics(*tied_data, **TOP)
    random = [metrics.retrieval_metrics(*tied_data, **TOP, ties='random',
                                        seed=seed) for seed in (0, 0, 1)]
    assert random[0] == random[1]
    assert random[0] != random[2] and random[0] != stable


def test_map_agrees_with_evaluate(tied_data):
    for top_k in (None, 10):
        for policy in ('zero', 'skip'):
            got = metrics.retrieval_metrics(
                *tied_data, map_at=(top_k,), zero_relevant=policy)
            want = retrieval.mean_average_precision(
                *tied_data, top_k=top_k, zero_relevant=policy)
            assert got[f'map@{top_k or "all"}'] == want


def test_radius_hand_example():
    # K = 4, query all +1: distances are the -1 counts: 0, 2, 3, 2.
    # Within radius 2 (distance <= 2): items 0, 1, 3; relevant: 0 and 2.
    # P@r2 = 1/3, R@r2 = 1/2. Query 2 (all -1) is at distances 4, 2, 1, 2
    # with items 1, 2, 3 within radius 2 and no relevant item at all.
    q_codes = np.array([[1, 1, 1, 1], [-1, -1, -1, -1]])
    db_codes = np.array([[1, 1, 1, 1], [1, 1, -1, -1], [1, -1, -1, -1],
                         [-1, 1, 1, -1]])
    q_labels = np.array([[1, 0], [0, 1]])
    db_labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    data = (q_codes, q_labels, db_codes, db_labels)
    zero = metrics.retrieval_metrics(*data, map_at=(), radius=(0, 2))
    assert zero == {'precision@r0': (1 + 0) / 2, 'recall@r0': (0.5 + 0) / 2,
                    'precision@r2': (1 / 3 + 0) / 2,
                    'recall@r2': (0.5 + 0) / 2}
    skip = metrics.retrieval_metrics(*data, map_at=(), radius=(2,),
                                     zero_relevant='skip')
    assert skip == {'precision@r2': 1 / 3, 'recall@r2': 0.5}


def test_nothing_retrieved_counts_as_zero_precision():
    q_codes = np.ones((1, 4))
    db_codes = -np.ones((3, 4))  # every item at distance 4
    labels = np.ones((1, 1))
    result = metrics.retrieval_metrics(q_codes, labels, db_codes,
                                       np.ones((3, 1)), map_at=(),
                                       radius=(2,), zero_relevant='skip')
    assert result == {'precision@r2': 0.0, 'recall@r2': 0.0}


def test_precision_recall_curve(tied_data):
    for policy in ('zero', 'skip'):
        precision, recall = metrics.precision_recall_curve(
            *tied_data, zero_relevant=policy)
        assert precision.shape == recall.shape == (NUM_BITS + 1,)
        expected = reference_metrics(*tied_data, pr_curve=True,
                                     zero_relevant=policy)['pr_curve']
        np.testing.assert_allclose(precision, expected[0], atol=1e-12)
        np.testing.assert_allclose(recall, expected[1], atol=1e-12)
        assert np.all(np.diff(recall) >= 0)
    # At radius K everything is retrieved: recall 1 for counted queries.
    assert recall[-1] == 1.0


@pytest.mark.parametrize('num_bits', [70, 300])
def test_wide_codes_match_reference(num_bits):
    # 70 bits span two 64-bit words; 300 bits need uint16 distances.
    rng = np.random.default_rng(num_bits)
    data = (random_codes(rng, 9, num_bits), rng.random((9, 3)) < 0.5,
            random_codes(rng, 40, num_bits), rng.random((40, 3)) < 0.5)
    options = dict(map_at=(None, 7), precision_at=(7,), radius=(150,))
    assert_metrics_equal(metrics.retrieval_metrics(*data, **options),
                         reference_metrics(*data, **options))


def test_jax_inputs_are_accepted(tied_data):
    expected = metrics.retrieval_metrics(*tied_data, **TOP)
    actual = metrics.retrieval_metrics(*map(jnp.asarray, tied_data), **TOP)
    assert actual == expected


def _good_inputs():
    codes = np.ones((3, 4))
    labels = np.eye(3)
    return dict(q_codes=codes, q_labels=labels, db_codes=codes,
                db_labels=labels)


@pytest.mark.parametrize('change, match', [
    (dict(map_at=1000), r'map_at must be a tuple .* \(1000,\)'),
    (dict(map_at=(0,)), 'map_at must hold positive ints or None'),
    (dict(precision_at=(2.0,)), 'precision_at must hold positive ints'),
    (dict(recall_at=(True,)), 'recall_at must hold positive ints'),
    (dict(radius=(-1,)), 'radius must hold non-negative ints'),
    (dict(radius=(None,)), 'radius must hold non-negative ints'),
    (dict(radius='2'), 'radius must be a tuple'),
    (dict(ties='shuffle'),
     r"ties must be one of \('stable', 'random', 'expected'\)"),
    (dict(backend='cuda'), r"backend must be one of \('auto', 'numpy'"),
    (dict(seed=-1), 'seed must be a non-negative int'),
    (dict(zero_relevant='ignore'), r"one of \('zero', 'skip'\)"),
    (dict(pr_curve='yes'), 'pr_curve must be a bool'),
    (dict(chunk_size=0), 'chunk_size must be a positive int'),
    (dict(num_threads=0), 'num_threads must be a positive int'),
    (dict(db_codes=np.zeros((3, 4))), r'only -1 and \+1'),
    (dict(db_codes=np.ones((3, 8))), 'K=4 bits but db_codes has K=8'),
    (dict(db_labels=np.eye(4)), 'db_labels has 4 rows but db_codes has 3'),
])
def test_bad_inputs_raise_helpful_errors(change, match):
    with pytest.raises(ValueError, match=match):
        metrics.retrieval_metrics(**(_good_inputs() | change))


@pytest.mark.parametrize('name', ['hamming_distances', 'average_precisions',
                                  'mean_average_precision',
                                  'retrieval_metrics',
                                  'precision_recall_curve'])
def test_traced_inputs_say_the_function_is_host_only(name):
    """Under jit NumPy met a tracer: a TracerArrayConversionError before."""
    inputs = _good_inputs()
    if name == 'hamming_distances':
        inputs = {k: inputs[k] for k in ('q_codes', 'db_codes')}
    traced = jax.jit(lambda kw: getattr(metrics, name)(**kw))
    with pytest.raises(UsageError, match=(
            f'{name} is host-only .* call it outside jax.jit')):
        traced(inputs)
