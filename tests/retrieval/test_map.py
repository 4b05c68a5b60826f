"""Tests for nhl_jax.retrieval against a slow, obviously correct reference."""

import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax import retrieval
from nhl_jax.retrieval import hamming

# 8-bit codes have only 9 distances, so almost every rank is a tie.
NUM_QUERIES, NUM_ITEMS, NUM_BITS, NUM_CLASSES = 200, 500, 8, 5


def reference_average_precisions(q_codes, q_labels, db_codes, db_labels,
                                 top_k):
    """Per-query loop: stable argsort, then an explicit walk over ranks."""
    num_items, num_bits = db_codes.shape
    width = num_items if top_k is None else min(top_k, num_items)
    aps = []
    for code, label in zip(q_codes, q_labels):
        dist = 0.5 * (num_bits - db_codes @ code)
        order = np.argsort(dist, kind='stable')
        relevant = (db_labels @ label > 0)[order]
        hits, total = 0, 0.0
        for position in range(width):
            if relevant[position]:
                hits += 1
                total += hits / (position + 1)
        aps.append(total / hits if hits else 0.0)
    return np.array(aps)


def random_codes(rng, count, num_bits):
    return rng.choice(np.array([-1, 1], np.int8), size=(count, num_bits))


@pytest.fixture(scope='module')
def tied_data():
    """Multi-label data with many distance ties and some label-less rows."""
    rng = np.random.default_rng(0)
    q_codes = random_codes(rng, NUM_QUERIES, NUM_BITS)
    db_codes = random_codes(rng, NUM_ITEMS, NUM_BITS)
    q_labels = rng.random((NUM_QUERIES, NUM_CLASSES)) < 0.15
    db_labels = rng.random((NUM_ITEMS, NUM_CLASSES)) < 0.15
    return q_codes, q_labels, db_codes, db_labels


@pytest.mark.parametrize('top_k', [None, 1, 10, 100, 400, 500, 1000])
def test_matches_reference(tied_data, top_k):
    expected = reference_average_precisions(*tied_data, top_k)
    # The data must exercise both kinds of query.
    assert np.any(expected == 0) and np.any(expected > 0)

    aps = retrieval.average_precisions(*tied_data, top_k=top_k)
    np.testing.assert_allclose(aps, expected, rtol=0, atol=1e-10)

    zero = retrieval.mean_average_precision(*tied_data, top_k=top_k)
    skip = retrieval.mean_average_precision(*tied_data, top_k=top_k,
                                            zero_relevant='skip')
    assert zero == pytest.approx(expected.mean(), abs=1e-10)
    assert skip == pytest.approx(expected[expected > 0].mean(), abs=1e-10)


@pytest.mark.parametrize('top_k', [None, 10])
def test_single_label_matches_reference(top_k):
    # One-hot labels take the class-id path instead of the label matmul.
    rng = np.random.default_rng(2)
    q_codes = random_codes(rng, 50, NUM_BITS)
    db_codes = random_codes(rng, NUM_ITEMS, NUM_BITS)
    classes = np.eye(NUM_CLASSES)
    q_labels = classes[rng.integers(0, NUM_CLASSES, 50)]
    db_labels = classes[rng.integers(0, NUM_CLASSES, NUM_ITEMS)]
    data = (q_codes, q_labels, db_codes, db_labels)
    expected = reference_average_precisions(*data, top_k)
    np.testing.assert_allclose(
        retrieval.average_precisions(*data, top_k=top_k), expected,
        rtol=0, atol=1e-10)


def test_hand_computed_example():
    # K = 4; query 0 is all +1, so dist = number of -1 bits.
    # item: 0    1    2    3    4
    # dist: 2    0    1    1    3
    # rel:  yes  no   yes  no   yes
    # Ranking (ties by index): 1, 2, 3, 0, 4 -> rel 0 1 0 1 1, so hits at
    # ranks 2, 4, 5 and AP@all = (1/2 + 2/4 + 3/5) / 3 = 1.6 / 3.
    # AP@3 sees one hit at rank 2: 1/2. AP@1 sees none: 0.
    # Query 1 has class 2, which no item has: AP 0 at every k.
    q_codes = np.array([[1, 1, 1, 1], [1, -1, 1, -1]])
    db_codes = np.array([[-1, -1, 1, 1],
                         [1, 1, 1, 1],
                         [1, 1, 1, -1],
                         [1, -1, 1, 1],
                         [-1, -1, -1, 1]])
    q_labels = np.array([[1, 0, 0], [0, 0, 1]])
    db_labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 0],
                          [1, 0, 0]])
    data = (q_codes, q_labels, db_codes, db_labels)

    for top_k, expected in [(None, 1.6 / 3), (3, 0.5), (1, 0.0)]:
        aps = retrieval.average_precisions(*data, top_k=top_k)
        np.testing.assert_allclose(aps, [expected, 0.0], atol=1e-15)
    assert retrieval.mean_average_precision(*data) == pytest.approx(0.8 / 3)
    assert retrieval.mean_average_precision(
        *data, zero_relevant='skip') == pytest.approx(1.6 / 3)


def test_ties_are_broken_by_database_index():
    # Both items are at distance 1; the lower index ranks first.
    q_codes = np.array([[1, 1]])
    q_labels = np.array([[1, 0]])
    db_codes = np.array([[1, -1], [-1, 1]])
    relevant_first = np.array([[1, 0], [0, 1]])
    relevant_second = relevant_first[::-1]  # the same items, swapped
    for db_labels, ap_all, ap_top1 in [(relevant_first, 1.0, 1.0),
                                       (relevant_second, 0.5, 0.0)]:
        data = (q_codes, q_labels, db_codes, db_labels)
        assert retrieval.average_precisions(*data)[0] == ap_all
        assert retrieval.average_precisions(*data, top_k=1)[0] == ap_top1


def test_top_k_none_scores_the_last_item():
    # Only the last item is relevant and it is ranked last, at rank N: the
    # reference's topK=-1 ([0:-1]) would drop it and report 0.
    num_items = 7
    q_codes = np.ones((1, 4))
    db_codes = np.ones((num_items, 4))
    db_codes[-1] = -1
    db_labels = np.zeros((num_items, 1))
    db_labels[-1] = 1
    aps = retrieval.average_precisions(q_codes, np.ones((1, 1)), db_codes,
                                       db_labels)
    assert aps[0] == pytest.approx(1 / num_items)


def test_sign_codes_maps_zero_to_plus_one():
    h = np.array([[0.0, -0.0, 1e-9, -1e-9, 3.0, -2.0]], np.float32)
    expected = np.array([[1, 1, 1, -1, 1, -1]], np.int8)
    for value in (h, jnp.asarray(h)):
        codes = retrieval.sign_codes(value)
        assert codes.dtype == np.int8
        np.testing.assert_array_equal(codes, expected)


def test_sign_codes_rejects_nan():
    h = np.array([[0.5, np.nan]])
    for value in (h, jnp.asarray(h, jnp.bfloat16)):
        with pytest.raises(ValueError, match='NaN'):
            retrieval.sign_codes(value)


@pytest.mark.parametrize('num_bits, dtype', [(70, np.uint8),
                                             (255, np.uint8),
                                             (300, np.uint16)])
def test_hamming_distances_count_differing_bits(num_bits, dtype):
    rng = np.random.default_rng(1)
    q_codes = random_codes(rng, 6, num_bits)
    db_codes = random_codes(rng, 9, num_bits)
    differ = (q_codes[:, None, :] > 0) != (db_codes[None, :, :] > 0)
    dist = retrieval.hamming_distances(jnp.asarray(q_codes), db_codes)
    assert dist.dtype == dtype
    np.testing.assert_array_equal(dist, differ.sum(axis=-1))


def test_chunking_and_threads_do_not_change_the_result(tied_data):
    expected = retrieval.average_precisions(*tied_data, chunk_size=1000,
                                            num_threads=1)
    for chunk_size in (1, 7, 64):
        for num_threads in (1, 3):
            aps = retrieval.average_precisions(
                *tied_data, chunk_size=chunk_size, num_threads=num_threads)
            np.testing.assert_array_equal(aps, expected)


def test_repeated_queries_keep_their_order(tied_data):
    # Repeated (code, labels) rows are ranked once and copied back.
    q_codes, q_labels, db_codes, db_labels = tied_data
    rows = np.random.default_rng(3).integers(0, 20, NUM_QUERIES)
    data = (q_codes[rows], q_labels[rows], db_codes, db_labels)
    for top_k in (None, 10):
        expected = reference_average_precisions(*data, top_k)
        np.testing.assert_allclose(
            retrieval.average_precisions(*data, top_k=top_k), expected,
            rtol=0, atol=1e-10)


def test_jax_inputs_are_accepted(tied_data):
    expected = retrieval.average_precisions(*tied_data, top_k=10)
    aps = retrieval.average_precisions(*map(jnp.asarray, tied_data), top_k=10)
    np.testing.assert_array_equal(aps, expected)
    q_codes, q_labels, db_codes, db_labels = tied_data
    aps = retrieval.average_precisions(
        jnp.asarray(q_codes, jnp.bfloat16), q_labels,
        jnp.asarray(db_codes, jnp.bfloat16), db_labels, top_k=10)
    np.testing.assert_array_equal(aps, expected)


def test_skip_with_no_hits_is_nan():
    ones = np.ones((2, 3))
    labels = np.array([[1, 0], [1, 0]])
    no_match = np.array([[0, 1], [0, 1]])
    assert np.isnan(retrieval.mean_average_precision(
        ones, labels, ones, no_match, zero_relevant='skip'))
    assert retrieval.mean_average_precision(ones, labels, ones, no_match) == 0


def _good_inputs():
    codes = np.ones((3, 4))
    labels = np.eye(3)
    return dict(q_codes=codes, q_labels=labels, db_codes=codes,
                db_labels=labels)


@pytest.mark.parametrize('change, match', [
    (dict(q_codes=np.ones(4)), r'q_codes must be a 2-D .* q_codes\[None\]'),
    (dict(db_codes=np.zeros((3, 4))), r'only -1 and \+1.*sign_codes'),
    (dict(db_codes=np.ones((3, 0))), 'db_codes is empty'),
    (dict(db_codes=np.ones((3, 4), bool)), r'real ±1 codes.*2 \* bits - 1'),
    (dict(db_codes=np.ones((3, 8))), 'K=4 bits but db_codes has K=8'),
    (dict(q_labels=np.arange(3)), r'2-D multi-hot .* np.eye\(C\)\[ids\]'),
    (dict(db_labels=np.eye(4)), 'db_labels has 4 rows but db_codes has 3'),
    (dict(db_labels=np.ones((3, 2))), 'C=3 classes but db_labels has C=2'),
    (dict(db_labels=np.full((3, 3), 0.5)), 'only 0 and 1.*labels > 0'),
    (dict(top_k=-1), 'top_k must be a positive int or None.*not -1'),
    (dict(top_k=0), 'top_k must be a positive int'),
    (dict(top_k=2.0), 'top_k must be a positive int'),
    (dict(top_k=True), 'top_k must be a positive int'),
    (dict(chunk_size=0), 'chunk_size must be a positive int'),
    (dict(num_threads=0), 'num_threads must be a positive int'),
    (dict(zero_relevant='ignore'), r"one of \('zero', 'skip'\)"),
    (dict(ties='mean'), r"ties must be one of \('stable', 'random', 'exp"),
    (dict(ties='random', seed=-1), 'seed must be a non-negative int'),
    (dict(backend='gpu'), r"backend must be one of \('auto', 'numpy', 'j"),
])
def test_bad_inputs_raise_helpful_errors(change, match):
    kwargs = _good_inputs() | change
    with pytest.raises(ValueError, match=match):
        retrieval.mean_average_precision(**kwargs)


def test_hamming_distances_checks_bits():
    with pytest.raises(ValueError, match='same length'):
        retrieval.hamming_distances(np.ones((2, 8)), np.ones((2, 16)))


@pytest.mark.parametrize('size', [1, 4, 40_000, 40_001])
@pytest.mark.parametrize('bins', [9, 65, 130])
def test_hamming_count_equals_bincount(size, bins):
    # Long uint8 rows are counted in pairs; odd lengths and odd offsets
    # (a slice's uint16 view is unaligned) must not matter.
    values = np.random.default_rng(size).integers(0, bins, size)
    for row in (values.astype(np.uint8), values.astype(np.uint8)[1:],
                values):
        np.testing.assert_array_equal(hamming.count(row, bins),
                                      np.bincount(row, minlength=bins))
