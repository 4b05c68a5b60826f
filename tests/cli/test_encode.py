"""From a trained run to codes, metrics, plots and search (the commands)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from nhl_jax import cli, retrieval
from nhl_jax.cli import inference
from nhl_jax.cli.configs import default
from nhl_jax.errors import UsageError
from tests.support import ROOT


def _command(script, *args):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'experiments', script), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """A one-epoch MLP run on digits, 8 and 16 bits."""
    config = default.get_config()
    config.update({'dataset': 'digits', 'backbone': 'mlp', 'bits': (8, 16),
                   'epochs': 1, 'eval_every': 1, 'batch_size': 32})
    path = str(tmp_path_factory.mktemp('encode') / 'run')
    cli.train_and_evaluate(config, path)
    return path


@pytest.fixture(scope='module')
def encoded(workdir):
    """encode.py on the run; returns its stdout."""
    return _command('encode.py', f'--workdir={workdir}')


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _brute_distances(q_codes, db_codes):
    return (q_codes[:, None, :] != db_codes[None, :, :]).sum(-1)


def test_encode_writes_codes_metrics_and_plots(workdir, encoded):
    assert 'mAP@all' in encoded
    results = _read_json(os.path.join(workdir, 'results.json'))
    summary = _read_json(os.path.join(workdir, 'codes', 'metrics.json'))
    assert summary['params'] == 'last' and summary['top_k'] is None
    # The same codes and ranking as the training-time evaluation.
    for bits in ('8', '16'):
        assert summary['lengths'][bits]['map'] == pytest.approx(
            results['map_last'][bits], abs=1e-9)
    query = retrieval.load_codes(os.path.join(workdir, 'codes', 'query.npz'))
    assert query.nested and list(query.packed) == [16]
    assert query.lengths == (8, 16) and query.packed[16].shape == (300, 2)
    entry = summary['lengths']['16']
    assert len(entry['pr_curve']['precision']) == 17
    assert {'precision@10', 'precision@r2', 'recall@r2', 'map@100'} <= set(
        entry)
    for name in ('map_vs_length.png', 'training_curves.png', 'weighting.png',
                 'pr_curves.png'):
        path = os.path.join(workdir, 'plots', name)
        assert os.path.getsize(path) > 1000, name


def test_search_codes_matches_brute_force(workdir, encoded, tmp_path):
    del encoded
    codes = os.path.join(workdir, 'codes')
    out = str(tmp_path / 'hits.json')
    _command('search.py', f'--workdir={workdir}', '--bits=8', '--k=6',
             f'--query_codes={codes}/query.npz', '--query_index=0,3,7',
             f'--output={out}')
    hits = _read_json(out)['hits']
    query = retrieval.load_codes(os.path.join(codes, 'query.npz'))
    database = retrieval.load_codes(os.path.join(codes, 'database.npz'))
    q = retrieval.unpack_codes(retrieval.codes_of_length(query, 8),
                               8)[[0, 3, 7]]
    db = retrieval.unpack_codes(retrieval.codes_of_length(database, 8), 8)
    dist = _brute_distances(q, db)
    order = np.argsort(dist, axis=1, kind='stable')[:, :6]
    for row, hit in enumerate(hits):
        np.testing.assert_array_equal(hit['rows'], order[row])
        np.testing.assert_array_equal(hit['distances'], dist[row][order[row]])
        np.testing.assert_array_equal(hit['ids'], database.ids[order[row]])


def test_search_images_by_radius(workdir, encoded, tmp_path):
    """Query images are encoded by the model to the exported codes."""
    del encoded
    codes = os.path.join(workdir, 'codes')
    out = str(tmp_path / 'hits.json')
    _command('search.py', f'--workdir={workdir}', '--query_split=query',
             '--query_index=1,4', '--bits=16', '--radius=3',
             f'--output={out}')
    hits = _read_json(out)['hits']
    query = retrieval.load_codes(os.path.join(codes, 'query.npz'))
    database = retrieval.load_codes(os.path.join(codes, 'database.npz'))
    q = retrieval.unpack_codes(query.packed[16], 16)[[1, 4]]
    dist = _brute_distances(q, retrieval.unpack_codes(database.packed[16], 16))
    for row, hit in enumerate(hits):
        within = np.flatnonzero(dist[row] <= 3)
        within = within[np.lexsort((within, dist[row][within]))]
        np.testing.assert_array_equal(hit['rows'], within)
        np.testing.assert_array_equal(hit['distances'], dist[row][within])


def test_best_params_reproduce_results_map(workdir, tmp_path):
    copy = str(tmp_path / 'run')
    shutil.copytree(workdir, copy,
                    ignore=shutil.ignore_patterns('codes', 'plots'))
    out = inference.export_codes(copy, params='best')
    results = _read_json(os.path.join(copy, 'results.json'))
    for bits in ('8', '16'):
        assert out['metrics'][bits]['map'] == pytest.approx(
            results['map'][bits], abs=1e-9)
    database = retrieval.load_codes(out['paths']['database'])
    assert not database.nested and sorted(database.packed) == [8, 16]


def test_bad_workdirs_fail_with_one_line(workdir, tmp_path):
    with pytest.raises(UsageError, match='holds no run'):
        inference.read_config(str(tmp_path))
    config = _read_json(os.path.join(workdir, 'config.json'))
    (tmp_path / 'config.json').write_text(json.dumps(dict(config,
                                                          method='nope')))
    with pytest.raises(UsageError, match="names method 'nope'"):
        inference.read_config(str(tmp_path))
    with pytest.raises(UsageError, match="Unknown params 'worst'"):
        inference.load_run(workdir, params='worst', input_shape=(8, 8, 1))
    with pytest.raises(UsageError, match="Unknown split\\(s\\) \\['tests'\\]"):
        inference.export_codes(workdir, splits=('tests',))
    with pytest.raises(UsageError, match='does not fit the model'):
        inference.load_run(workdir, input_shape=(28, 28, 1))
