"""The Hamming engine (retrieval.hamming) against plain NumPy references."""

import numpy as np
import pytest

from nhl_jax.retrieval import hamming
from nhl_jax.retrieval.codes import pack


def random_codes(rng, count, num_bits):
    return rng.choice(np.array([-1, 1], np.int8), size=(count, num_bits))


def reference_distances(q_codes, db_codes):
    """[Q, N] numbers of differing bits, one bit at a time."""
    return (q_codes[:, None, :] != db_codes[None, :, :]).sum(axis=-1)


def reference_order(dist):
    """The stable ranking: ascending distance, ties by ascending row."""
    return np.argsort(dist, axis=1, kind='stable')


@pytest.fixture(scope='module')
def tied():
    """10-bit codes (not a byte multiple): 11 distances, many ties."""
    rng = np.random.default_rng(0)
    q, db = random_codes(rng, 23, 10), random_codes(rng, 101, 10)
    return q, db, hamming.distances(pack(q), pack(db), 10)


def test_pack_puts_code_bit_zero_in_the_high_bit():
    codes = np.array([[1, -1, -1, -1, -1, -1, -1, -1, -1, 1]])
    np.testing.assert_array_equal(pack(codes),
                                  [[0b10000000, 0b01000000]])


@pytest.mark.parametrize('num_bits, dtype', [(1, np.uint8), (12, np.uint8),
                                             (64, np.uint8), (65, np.uint8),
                                             (255, np.uint8),
                                             (300, np.uint16)])
def test_distances_count_differing_bits(num_bits, dtype):
    rng = np.random.default_rng(num_bits)
    q, db = random_codes(rng, 7, num_bits), random_codes(rng, 30, num_bits)
    dist = hamming.distances(pack(q), pack(db), num_bits)
    assert dist.dtype == dtype
    np.testing.assert_array_equal(dist, reference_distances(q, db))


def test_query_chunks_and_byte_slices_agree(tied):
    q, db, dist = tied
    engine = hamming.Hamming(pack(db), 10)
    packed = pack(q)
    for start in range(0, len(q), 5):
        np.testing.assert_array_equal(engine(packed[start:start + 5]),
                                      dist[start:start + 5])
    # A non-contiguous view (a prefix's byte slice) reads the same.
    wide = np.hstack([packed, packed])
    np.testing.assert_array_equal(engine(wide[:, :2]), dist)


@pytest.mark.parametrize('k', [1, 7, 50, 51, 100, 101])
def test_ranking_is_the_stable_argsort(tied, k):
    _, _, dist = tied
    ranking = hamming.Ranking(10, dist.shape[1], k)
    assert ranking.by_keys == (2 * k <= dist.shape[1])  # both paths run
    order = reference_order(dist)[:, :k]
    rows, top = ranking.top_k(dist)
    assert rows.dtype == np.int64 and top.dtype == dist.dtype
    np.testing.assert_array_equal(rows, order)
    np.testing.assert_array_equal(top, np.take_along_axis(dist, order, 1))
    np.testing.assert_array_equal(ranking.order(dist), order)
    flags = np.random.default_rng(k).random(dist.shape) < 0.3
    np.testing.assert_array_equal(ranking.top_flags(dist, flags),
                                  np.take_along_axis(flags, order, 1))


@pytest.mark.parametrize('row_bits, dtype', [(27, np.uint32),
                                             (59, np.uint64)])
def test_wide_key_layouts_rank_alike(tied, monkeypatch, row_bits, dtype):
    # Real data needs a huge N for these layouts; force them, with the
    # top distance bit set in the widest key.
    _, _, dist = tied
    monkeypatch.setattr(hamming, 'key_layout',
                        lambda *_: (row_bits + 1, np.dtype(dtype)))
    rows, top = hamming.Ranking(10, dist.shape[1], 9).top_k(dist)
    order = reference_order(dist)[:, :9]
    np.testing.assert_array_equal(rows, order)
    np.testing.assert_array_equal(top, np.take_along_axis(dist, order, 1))


def test_key_layout():
    assert hamming.key_layout(64, 2**20) == (21, np.dtype(np.uint32))
    assert hamming.key_layout(64, 2**30) == (31, np.dtype(np.uint64))
    with pytest.raises(ValueError, match='split the database'):
        hamming.key_layout(2**40, 2**30)


@pytest.mark.parametrize('radius', [0, 3, 10, 1000])
def test_within_lists_the_ball_in_ranked_order(tied, radius):
    _, _, dist = tied
    counts, rows, found = hamming.within(dist, radius)
    np.testing.assert_array_equal(counts, (dist <= radius).sum(axis=1))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for query, order in enumerate(reference_order(dist)):
        expected = order[dist[query, order] <= radius]
        span = slice(bounds[query], bounds[query + 1])
        np.testing.assert_array_equal(rows[span], expected)
        np.testing.assert_array_equal(found[span], dist[query, expected])


@pytest.mark.parametrize('chunk_size, num_threads', [(1, 1), (4, 3),
                                                     (100, None)])
def test_map_chunks_keeps_query_order(chunk_size, num_threads):
    ranges = hamming.map_chunks(lambda start, stop: (start, stop), 10,
                                chunk_size, num_threads)
    assert ranges[0][0] == 0 and ranges[-1][1] == 10
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(stop - start <= chunk_size for start, stop in ranges)
