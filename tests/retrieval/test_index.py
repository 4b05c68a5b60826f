"""Packed codes, the codes file and Hamming search against brute force."""

import os

import numpy as np
import pytest

from nhl_jax import retrieval
from nhl_jax.errors import UsageError
from nhl_jax.retrieval import index


def random_codes(rng, count, num_bits):
    return rng.choice(np.array([-1, 1], np.int8), size=(count, num_bits))


def brute_distances(q_codes, db_codes):
    """[Q, N] Hamming distances of ±1 codes, one bit at a time."""
    return (q_codes[:, None, :] != db_codes[None, :, :]).sum(-1)


def brute_top_k(dist, k):
    """Stable ranking: ascending distance, ties by ascending row."""
    order = np.argsort(dist, axis=1, kind='stable')[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


def brute_within(dist_row, radius):
    rows = np.flatnonzero(dist_row <= radius)
    rows = rows[np.lexsort((rows, dist_row[rows]))]
    return rows, dist_row[rows]


@pytest.fixture(scope='module')
def tied():
    """12-bit codes (not a byte multiple): only 13 distances, many ties."""
    rng = np.random.default_rng(0)
    return random_codes(rng, 40, 12), random_codes(rng, 300, 12)


class TestPack:
    @pytest.mark.parametrize('num_bits', [1, 5, 8, 13, 64, 70])
    def test_roundtrip(self, num_bits):
        codes = random_codes(np.random.default_rng(num_bits), 9, num_bits)
        packed = retrieval.pack_codes(codes)
        assert packed.dtype == np.uint8
        assert packed.shape == (9, -(-num_bits // 8))
        np.testing.assert_array_equal(retrieval.unpack_codes(packed, num_bits),
                                      codes)

    def test_plus_one_is_the_high_bit_of_the_first_byte(self):
        codes = np.array([[1, -1, -1, -1, -1, -1, -1, -1, -1, 1]])
        np.testing.assert_array_equal(retrieval.pack_codes(codes),
                                      [[0b10000000, 0b01000000]])

    def test_prefix_equals_packing_the_prefix(self):
        codes = random_codes(np.random.default_rng(1), 7, 70)
        packed = retrieval.pack_codes(codes)
        for bits in range(1, 71):
            np.testing.assert_array_equal(
                retrieval.prefix_codes(packed, bits),
                retrieval.pack_codes(codes[:, :bits]))

    def test_byte_multiple_prefix_is_a_view(self):
        packed = retrieval.pack_codes(random_codes(np.random.default_rng(2), 5,
                                                   64))
        assert np.shares_memory(retrieval.prefix_codes(packed, 32), packed)
        assert not np.shares_memory(retrieval.prefix_codes(packed, 12), packed)

    def test_bad_input(self):
        with pytest.raises(ValueError, match='only -1 and \\+1'):
            retrieval.pack_codes(np.array([[0, 1]]))
        packed = retrieval.pack_codes(np.ones((2, 12), np.int8))
        with pytest.raises(ValueError, match='bits set past bit 10'):
            retrieval.check_packed(packed[:, :2] | 0xFF, 10)
        with pytest.raises(ValueError, match='cut them with prefix_codes'):
            retrieval.check_packed(packed, 8)
        with pytest.raises(ValueError, match='cannot cut a 17-bit prefix'):
            retrieval.prefix_codes(packed, 17)


class TestNumpySearch:
    @pytest.mark.parametrize('k', [1, 7, 300, 1000])
    @pytest.mark.parametrize('chunk_size', [None, 3])
    def test_top_k_matches_brute_force_with_ties(self, tied, k, chunk_size):
        q, db = tied
        found = index.numpy_index(retrieval.pack_codes(db), 12,
                                  chunk_size=chunk_size).search(
            retrieval.pack_codes(q), k)
        rows, dist = brute_top_k(brute_distances(q, db), min(k, len(db)))
        np.testing.assert_array_equal(found.indices, rows)
        np.testing.assert_array_equal(found.distances, dist)

    @pytest.mark.parametrize('radius', [0, 2, 3, 12])
    def test_radius_is_inclusive(self, tied, radius):
        q, db = tied
        dist = brute_distances(q, db)
        found = index.numpy_index(retrieval.pack_codes(db), 12,
                                  chunk_size=7).range_search(
            retrieval.pack_codes(q), radius)
        assert found.lims[-1] == np.count_nonzero(dist <= radius)
        for row in range(len(q)):
            rows, d = found.of(row)
            expected_rows, expected_d = brute_within(dist[row], radius)
            np.testing.assert_array_equal(rows, expected_rows)
            np.testing.assert_array_equal(d, expected_d)
        if radius == 3:  # the boundary distance itself is included
            assert np.any(found.distances == radius)

    def test_bad_arguments(self, tied):
        searcher = index.build_index(retrieval.pack_codes(tied[1]), 12)
        with pytest.raises(ValueError, match='k must be an int >= 1'):
            searcher.search(retrieval.pack_codes(tied[0]), 0)
        with pytest.raises(ValueError, match='radius must be an int >= 0'):
            searcher.range_search(retrieval.pack_codes(tied[0]), -1)
        with pytest.raises(ValueError, match='q_packed has 1 bytes'):
            searcher.search(retrieval.pack_codes(tied[0][:, :8]), 3)
        with pytest.raises(ValueError, match="choose one of \\['faiss', "
                                             "'numpy'\\]"):
            index.build_index(retrieval.pack_codes(tied[1]), 12,
                              backend='annoy')


class TestFaiss:
    @pytest.fixture(autouse=True)
    def _one_faiss_thread(self):
        faiss = pytest.importorskip('faiss')
        # OpenMP threads spin on a busy 2-core CI machine (4 s vs 0.1 s).
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        yield
        faiss.omp_set_num_threads(threads)

    def test_flat_matches_numpy(self, tied):
        q, db = (retrieval.pack_codes(c) for c in tied)
        exact = index.build_index(db, 12)
        flat = index.build_index(db, 12, backend='faiss')
        k = 10
        a, b = exact.search(q, k), flat.search(q, k)
        np.testing.assert_array_equal(a.distances, b.distances)
        # faiss may keep another item tied at the k-th distance; where the
        # k-th and (k+1)-th distances differ, the sets (and rows) agree.
        dist = np.sort(brute_distances(*tied), axis=1)
        clear = dist[:, k - 1] < dist[:, k]
        assert clear.any()
        np.testing.assert_array_equal(a.indices[clear], b.indices[clear])
        for radius in (0, 2, 5):
            np.testing.assert_equal(tuple(exact.range_search(q, radius)),
                                    tuple(flat.range_search(q, radius)))

    def test_multihash_range_is_exact_below_the_table_count(self, tied):
        q, db = (retrieval.pack_codes(c) for c in tied)
        hashed = index.build_index(db, 12, backend='faiss',
                                   kind='multihash', tables=3)
        # Pigeonhole: within distance 2, one of 3 substrings matches.
        np.testing.assert_equal(
            tuple(hashed.range_search(q, 2)),
            tuple(index.build_index(db, 12).range_search(q, 2)))

    def test_hnsw_reports_true_distances(self):
        rng = np.random.default_rng(4)
        codes = random_codes(rng, 20, 64), random_codes(rng, 200, 64)
        q, db = (retrieval.pack_codes(c) for c in codes)
        found = index.build_index(db, 64, backend='faiss',
                                  kind='hnsw').search(q, 5)
        dist = brute_distances(*codes)
        assert np.all(found.indices >= 0)
        np.testing.assert_array_equal(
            found.distances, np.take_along_axis(dist, found.indices, axis=1))
        with pytest.raises(ValueError, match='no range search'):
            index.build_index(db, 64, backend='faiss',
                              kind='hnsw').range_search(q, 1)


def _code_set(nested):
    rng = np.random.default_rng(3)
    codes = random_codes(rng, 6, 16)
    packed = ({16: retrieval.pack_codes(codes)} if nested else
              {b: retrieval.pack_codes(codes[:, :b]) for b in (8, 16)})
    return retrieval.CodeSet(
        packed=packed, lengths=(8, 16),
        labels=np.eye(3, dtype=np.float32)[rng.integers(0, 3, 6)],
        ids=np.arange(10, 16, dtype=np.int64),
        params='last' if nested else 'best', nested=nested), codes


def _bare_array(path):
    with open(path, 'wb') as f:  # np.save: one array, under any name
        np.save(f, np.ones(3))


class TestCodesFile:
    @pytest.mark.parametrize('nested', [True, False])
    def test_save_load_roundtrip(self, tmp_path, nested):
        code_set, codes = _code_set(nested)
        path = str(tmp_path / 'codes.npz')
        retrieval.save_codes(path, code_set)
        loaded = retrieval.load_codes(path)
        assert (loaded.lengths, loaded.params, loaded.nested) == (
            (8, 16), code_set.params, nested)
        np.testing.assert_array_equal(loaded.labels, code_set.labels)
        np.testing.assert_array_equal(loaded.ids, code_set.ids)
        for bits in (8, 16):
            np.testing.assert_array_equal(
                retrieval.unpack_codes(retrieval.codes_of_length(loaded, bits),
                                       bits), codes[:, :bits])

    def test_lengths_a_set_can_give(self):
        nested, codes = _code_set(True)
        np.testing.assert_array_equal(retrieval.codes_of_length(nested, 11),
                                      retrieval.pack_codes(codes[:, :11]))
        separate, _ = _code_set(False)
        with pytest.raises(ValueError, match='choose bits in \\[8, 16\\]'):
            retrieval.codes_of_length(separate, 11)

    def test_failed_write_leaves_the_old_file_and_no_temporary(
            self, tmp_path, monkeypatch):
        path = str(tmp_path / 'codes.npz')
        retrieval.save_codes(path, _code_set(True)[0])
        before = (tmp_path / 'codes.npz').read_bytes()

        def broken_savez(f, **arrays):
            f.write(b'PK partial')
            raise OSError('disk full')

        monkeypatch.setattr(index.np, 'savez', broken_savez)
        with pytest.raises(OSError, match='disk full'):
            retrieval.save_codes(path, _code_set(False)[0])
        assert os.listdir(tmp_path) == ['codes.npz']
        assert (tmp_path / 'codes.npz').read_bytes() == before

    def test_query_codes_from_files(self, tmp_path):
        code_set, codes = _code_set(True)
        retrieval.save_codes(str(tmp_path / 'q.npz'), code_set)
        np.save(tmp_path / 'signs.npy', codes)
        np.save(tmp_path / 'packed.npy', retrieval.pack_codes(codes))
        expected = retrieval.pack_codes(codes[:, :12])
        for name in ('q.npz', 'signs.npy', 'packed.npy'):
            packed, ids = retrieval.read_query_codes(str(tmp_path / name), 12)
            np.testing.assert_array_equal(packed, expected)
            assert (ids is not None) == name.endswith('.npz')
        with pytest.raises(ValueError, match='not \\[Q, >= 32-bit\\]'):
            retrieval.read_query_codes(str(tmp_path / 'signs.npy'), 32)

    def test_source_is_kept_and_files_without_one_still_load(self, tmp_path):
        code_set, _ = _code_set(True)
        source = retrieval.code_source({'method': 'dpn', 'bits': [8, 16]},
                                       'digits')
        for name, given in (('new.npz', source), ('old.npz', None)):
            retrieval.save_codes(str(tmp_path / name),
                                 code_set._replace(source=given))
            assert retrieval.load_codes(str(tmp_path / name)).source == given
        assert source == retrieval.code_source(
            {'bits': [8, 16], 'method': 'dpn'}, 'digits')  # order-free

    def test_save_into_a_missing_folder_names_the_folder(self, tmp_path):
        path = tmp_path / 'missing' / 'codes.npz'
        with pytest.raises(UsageError, match=(
                f"folder '{tmp_path}/missing' does not exist")):
            retrieval.save_codes(str(path), _code_set(True)[0])
        assert os.listdir(tmp_path) == []

    @pytest.mark.parametrize('make,problem', [
        (lambda p: p.write_text('# a README\n'), 'NumPy cannot read it'),
        (_bare_array, 'one bare array'),
        (lambda p: np.savez(p, labels=np.ones(3)), "no 'bits' array"),
        (lambda p: p.mkdir(), 'does not exist (or is a folder)'),
        (lambda p: None, 'does not exist'),
    ])
    def test_what_is_not_a_codes_file_is_one_line(self, tmp_path, make,
                                                  problem):
        path = tmp_path / 'x.npz'
        make(path)
        with pytest.raises(UsageError) as error:
            retrieval.load_codes(str(path))
        message = str(error.value)
        assert message.startswith(f"'{path}'") and problem in message
        assert 'a codes file (an .npz written by nhl-jax encode)' in message

    def _query_file(self, tmp_path, **change):
        query, _ = _code_set(True)
        query = query._replace(source={'run': 'a1', 'dataset': 'digits'})
        path = str(tmp_path / 'q.npz')
        retrieval.save_codes(path, query._replace(**change))
        return path, query

    @pytest.mark.parametrize('change,problem', [
        ({}, None),
        ({'source': None}, None),  # an older file: lengths and classes
        ({'source': {'run': 'b2', 'dataset': 'digits'}},
         (r'come from another run than the database \(run b2, dataset '
          r'digits; database: run a1, dataset digits\)')),
        ({'source': {'run': 'a1', 'dataset': 'mnist5k'}},
         'come from another dataset than the database'),
        ({'lengths': (8, 16, 32)},
         r'are codes of lengths \[8, 16, 32\], the database of \[8, 16\]'),
        ({'labels': np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]},
         'have 4 classes, the database 3: another dataset'),
    ])
    def test_query_codes_of_another_run_or_dataset_are_refused(
            self, tmp_path, change, problem):
        path, database = self._query_file(tmp_path, **change)
        if problem is None:
            retrieval.read_query_codes(path, 8, database=database)
            return
        with pytest.raises(UsageError, match=f"query codes '{path}' "
                           + problem):
            retrieval.read_query_codes(path, 8, database=database)

    def test_npy_codes_must_have_a_width_of_the_database(self, tmp_path):
        nested, codes = _code_set(True)
        separate, _ = _code_set(False)
        np.save(tmp_path / 'wide.npy', np.concatenate([codes, codes], 1))
        np.save(tmp_path / 'signs.npy', codes)
        np.save(tmp_path / 'packed.npy', retrieval.pack_codes(codes))
        for name in ('signs.npy', 'packed.npy'):  # the nested 16 bits
            retrieval.read_query_codes(str(tmp_path / name), 8,
                                       database=nested)
            with pytest.raises(UsageError, match='takes codes of 8 bits'):
                retrieval.read_query_codes(str(tmp_path / name), 8,
                                           database=separate)
        with pytest.raises(UsageError, match=(
                'holds 32-bit codes, but 8-bit search of this database takes '
                'codes of 8 or 16 bits')):
            retrieval.read_query_codes(str(tmp_path / 'wide.npy'), 8,
                                       database=nested)
