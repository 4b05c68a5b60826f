"""MAH's Omega batches: each process decodes only its rows."""

import numpy as np
import pytest

from nhl_jax import data
from nhl_jax.data import pipeline
from nhl_jax.mah import step as mah_step

N, S = 20, 10  # rows of the V split, |Omega|


def _split():
    rng = np.random.default_rng(0)
    return data.ArrayDataset(
        rng.integers(0, 256, (N, 3, 3, 1), dtype=np.uint8),
        np.eye(4, dtype=np.float32)[rng.integers(0, 4, N)],
        np.arange(N, dtype=np.int64))


def _process_rows(batch_size, index, count):
    """``parallel.process_slice`` of process ``index`` of ``count``."""
    share = batch_size // count
    return slice(index * share, (index + 1) * share)


def _reference(ds, omega, batch_size):
    """Omega in batches, the last padded with Omega's last row, in NumPy."""
    for start in range(0, S, batch_size):
        positions = start + np.arange(batch_size)
        index = np.minimum(positions, S - 1)
        yield {'image': ds.images[omega[index]],
               'label': ds.labels[omega[index]],
               'index': index.astype(np.int32),
               'mask': (positions < S).astype(np.float32)}


@pytest.mark.parametrize('batch_size, processes', [(4, 1), (4, 2), (6, 3)])
def test_process_slices_make_the_global_batches(batch_size, processes):
    ds = _split()
    omega = np.random.default_rng(1).permutation(N)[:S]
    shares = [list(mah_step.omega_batches(
        ds, omega, batch_size, rows=_process_rows(batch_size, p, processes)))
        for p in range(processes)]
    want = list(_reference(ds, omega, batch_size))
    assert all(len(share) == len(want) for share in shares)
    for j, batch in enumerate(want):
        for key, value in batch.items():
            got = np.concatenate([share[j][key] for share in shares])
            np.testing.assert_array_equal(got, value, err_msg=key)
            assert got.dtype == value.dtype, key


@pytest.fixture
def gathered(monkeypatch):
    """The rows of every ``gather_batch`` call (the decoded images)."""
    calls = []
    gather = pipeline.gather_batch

    def counting(ds, index, augment_seed=None):
        calls.append(index.tolist())
        return gather(ds, index, augment_seed)

    monkeypatch.setattr(pipeline, 'gather_batch', counting)
    return calls


def test_only_the_process_rows_are_decoded(gathered):
    batches = list(mah_step.omega_batches(_split(), np.arange(S), 4,
                                          rows=_process_rows(4, 1, 2)))
    # Positions 2-3 of each batch of 4; the last batch's are padding.
    assert gathered == [[2, 3], [6, 7], [9, 9]] and len(batches) == 3


def test_start_skips_batches_without_decoding_them(gathered):
    omega = np.arange(S)
    batches = list(mah_step.omega_batches(_split(), omega, 4, start=2))
    # Batch 2 of 3: positions 8, 9 and two pads of the last row.
    assert gathered == [[8, 9, 9, 9]] and len(batches) == 1
    assert list(mah_step.omega_batches(_split(), omega, 4, start=3)) == []
