"""Worker processes for a whole run: the same batches, one start."""

import numpy as np
import pytest
from PIL import Image

from nhl_jax import data
from nhl_jax.data import files, pipeline, workers
from tests.support import assert_same_batches


@pytest.fixture()
def jpegs(tmp_path):
    """A ``FileDataset`` of 10 small JPEGs of assorted sizes."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(10):
        path = tmp_path / f'{i}.jpg'
        Image.fromarray(rng.integers(0, 256, (40 - i, 30 + 2 * i, 3),
                                     np.uint8)).save(path, quality=90)
        paths.append(str(path))
    labels = data.one_hot(np.arange(10) % 3, 3)
    return files.FileDataset(np.array(paths, dtype=object), labels,
                             np.arange(10), resize=32, crop=28)


def _epochs(ds, workers):
    return [list(data.train_batches(ds, 3, seed=1, epoch=e, workers=workers))
            for e in range(2)]


def test_one_pool_gives_the_batches_of_per_epoch_iterators(jpegs):
    inline = _epochs(jpegs, 0)
    with pipeline.run_workers(1, jpegs) as pool:
        assert isinstance(pool, workers.WorkerPool)
        assert pipeline.resolve_workers(jpegs, pool) == (1, 0)
        for expected, got in zip(inline, _epochs(jpegs, pool)):
            assert_same_batches(expected, got)
        # An iterator left early cancels its work; the next is unaffected.
        early = data.eval_batches(jpegs, 4, workers=pool)
        next(early)
        early.close()
        evals = list(data.eval_batches(jpegs, 4, workers=0))
        assert_same_batches(
            evals, list(data.eval_batches(jpegs, 4, workers=pool)))
        # Two open iterators, read in turns.
        pairs = zip(data.eval_batches(jpegs, 4, workers=pool),
                    data.train_batches(jpegs, 3, seed=1, epoch=0,
                                       workers=pool))
        for (x, y), e, t in zip(pairs, evals, inline[0]):
            assert_same_batches([e, t], [x, y])
        # A file that cannot be decoded fails as it does inline.
        bad = jpegs._replace(paths=np.where(np.arange(10) == 5,
                                            jpegs.paths[0] + '.gone',
                                            jpegs.paths))
        with pytest.raises(files.ImageError, match=r'0\.jpg\.gone'):
            list(data.eval_batches(bad, 4, workers=pool))
        assert_same_batches(
            evals, list(data.eval_batches(jpegs, 4, workers=pool)))
    with pytest.raises(ValueError, match='WorkerPool is closed'):
        data.eval_batches(jpegs, 4, workers=pool)


@pytest.mark.parametrize('plan', [None, 0, pipeline.Workers(0, 2),
                                  pipeline.Workers(2, 1)])
def test_run_workers_starts_no_pool_without_plain_processes(
        jpegs, plan, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('a WorkerPool was started')

    monkeypatch.setattr(workers.WorkerPool, '__init__', refuse)
    with pipeline.run_workers(plan, jpegs) as got:
        assert got is plan


@pytest.mark.parametrize('bad', [0, -1, True, 1.5])
def test_bad_pool_sizes_fail_before_starting(bad):
    with pytest.raises(ValueError, match='processes must be an int >= 1'):
        workers.WorkerPool(bad)
