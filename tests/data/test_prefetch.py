"""Prefetching batches: who builds them never changes them; the default."""

import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

from nhl_jax import data
from nhl_jax.data import files, listfile, pipeline
from tests.support import ROOT, assert_same_batches


@pytest.fixture()
def jpegs(tmp_path):
    """A list-file ``FileDataset`` of 12 JPEGs of assorted sizes."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        w, h = 30 + 3 * i, 50 - 2 * i
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(
            tmp_path / f'{i}.jpg', quality=90)
        lines.append(f'{i}.jpg ' + ' '.join('1' if c == i % 3 else '0'
                                            for c in range(3)))
    (tmp_path / 'train.txt').write_text('\n'.join(lines) + '\n')
    split = listfile.read_list_file(str(tmp_path / 'train.txt'),
                                    str(tmp_path))
    return files.from_list_split(split, resize=32, crop=28)


def test_train_batches_are_identical_for_any_workers(jpegs):
    inline = list(data.train_batches(jpegs, 3, seed=1, epoch=2, workers=0))
    assert len(inline) == 4
    for workers in (1, 2, None, pipeline.Workers(0, 3)):
        assert_same_batches(inline, list(data.train_batches(
            jpegs, 3, seed=1, epoch=2, workers=workers)))
    # Resuming mid-epoch with threads skips exactly the first batches.
    assert_same_batches(inline[1:], list(data.train_batches(
        jpegs, 3, seed=1, epoch=2, start=1, workers=None)))


def test_eval_batches_are_identical_for_any_workers(jpegs):
    inline = list(data.eval_batches(jpegs, 5, workers=0))
    assert [b['valid'] for b in inline] == [5, 5, 2]
    for workers in (2, None):
        assert_same_batches(inline, list(data.eval_batches(jpegs, 5,
                                                    workers=workers)))


def test_auto_default_is_inline_for_arrays_threads_for_files(
        jpegs, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = data.ArrayDataset(
        rng.integers(0, 256, (40, 8, 8, 1), np.uint8),
        data.one_hot(np.arange(40) % 4, 4), np.arange(40))
    assert pipeline.resolve_workers(arrays, None) == pipeline.Workers(0, 0)
    assert pipeline.resolve_workers(None, None) == pipeline.Workers(0, 0)
    assert_same_batches(
        list(data.train_batches(arrays, 8, seed=0, epoch=0, workers=0)),
        list(data.train_batches(arrays, 8, seed=0, epoch=0)))
    for cpus, threads in ((1, 1), (3, 3), (64, pipeline.AUTO_THREADS)):
        monkeypatch.setattr(pipeline, 'available_cpus', lambda c=cpus: c)
        assert pipeline.resolve_workers(jpegs, None) == (0, threads)
    assert pipeline.resolve_workers(jpegs, 0) == (0, 0)
    assert pipeline.resolve_workers(jpegs, np.int64(3)) == (3, 0)
    assert pipeline.resolve_workers(jpegs, pipeline.Workers(2, 1)) == (2, 1)


@pytest.mark.parametrize('bad', [-1, True, 1.5, '2', pipeline.Workers(0, -1)])
def test_bad_workers_fail_with_one_line(jpegs, bad):
    with pytest.raises(ValueError, match='must be an int >= 0'):
        data.train_batches(jpegs, 3, seed=0, epoch=0, workers=bad)


def test_a_decoding_thread_reports_the_bad_image(jpegs):
    with open(jpegs.paths[4], 'wb') as f:
        f.write(b'not a jpeg')
    with pytest.raises(ValueError, match=r'cannot read image .*4\.jpg'):
        list(data.eval_batches(jpegs, 2, workers=None))


def test_input_pipeline_benchmark_smoke(capsys):
    path = os.path.join(ROOT, 'benchmarks', 'input_pipeline.py')
    spec = importlib.util.spec_from_file_location('input_pipeline', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = module.main(['--smoke'])
    assert table in capsys.readouterr().out
    first = table.split('\n\n')[1].splitlines()  # the decoding table
    assert first[0].startswith('| workers | variant | images / s | cores busy '
                               '| images / s per core | first batch s |')
    cells = [[c.strip() for c in row.strip('|').split('|')]
             for row in first[2:]]
    names = [row[0] for row in cells]
    assert names[0] == 'inline (0)' and '1 process' in names
    assert sum(name.endswith('auto') or name.startswith('auto')
               for name in names) == 2  # before and after
    assert {row[1] for row in cells} == {'before', 'after'}
    for row in cells:
        assert float(row[2]) > 0 and float(row[4]) > 0
    ratios = table.split('per core, after / before')[1]
    assert '| 1 process | ' in ratios
