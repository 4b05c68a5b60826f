"""Plots: every figure is a non-empty PNG; records are read as logged."""

import json

import numpy as np
import pytest

pytest.importorskip('matplotlib')
from nhl_jax.train import plots

PNG = b'\x89PNG\r\n\x1a\n'
BITS = (8, 16, 32)


def _is_png(path):
    with open(path, 'rb') as f:
        head = f.read(8)
    return head == PNG


def _records(anti_domination=True):
    """Three epochs of metrics.jsonl, evaluated at epochs 2 and 3."""
    records = []
    for epoch in (1, 2, 3):
        per = lambda v: {str(b): v * b for b in BITS}
        record = {'epoch': epoch, 'loss': 1.0 / epoch,
                  'losses': per(1.0 / epoch), 'weights': per(0.05),
                  'distill': per(0.0)}
        if anti_domination:
            record['anti_domination_rate'] = per(0.01 * epoch)
        if epoch >= 2:
            record['map'] = per(0.02 * epoch)
        records.append(record)
    return records


def _results(method, scale):
    return {'method': method, 'mode': 'nested', 'weighting': 'paper',
            'distill_weight': 0.1, 'dataset': 'digits', 'bits': list(BITS),
            'map': {str(b): scale * b / 32 for b in BITS},
            'map_last': {str(b): scale * b / 40 for b in BITS}}


def test_map_vs_length_one_line_per_run(tmp_path):
    path = plots.plot_map_vs_length(
        [_results('dpn', 0.9), dict(_results('csq', 0.8), label='CSQ')],
        str(tmp_path / 'map.png'))
    assert _is_png(path)
    assert plots.run_label(_results('dpn', 1)) == (
        'dpn, nested, weighting=paper, λ=0.1')
    with pytest.raises(ValueError, match='at least one run'):
        plots.plot_map_vs_length([], str(tmp_path / 'none.png'))


def test_per_length_series_skip_records_without_the_field():
    series = plots.per_length(_records(), 'map')
    assert sorted(series) == list(BITS)
    epochs, values = series[16]
    np.testing.assert_array_equal(epochs, [2, 3])
    np.testing.assert_allclose(values, [0.64, 0.96])


@pytest.mark.parametrize('anti_domination', [True, False])
def test_training_and_weighting_figures(tmp_path, anti_domination):
    records = _records(anti_domination)
    assert _is_png(plots.plot_training_curves(records,
                                              str(tmp_path / 't.png')))
    assert _is_png(plots.plot_weighting_trace(records,
                                              str(tmp_path / 'w.png')))


def test_pr_curves(tmp_path):
    curves = {str(b): {'precision': np.linspace(1, 0.1, b + 1).tolist(),
                       'recall': np.linspace(0, 1, b + 1).tolist()}
              for b in BITS}
    assert _is_png(plots.plot_pr_curves(curves, str(tmp_path / 'pr.png')))


def test_plot_workdir_merges_single_length_runs(tmp_path):
    workdir = tmp_path / 'run'
    for b in BITS:  # the single-length layout: one metrics.jsonl per length
        (workdir / f'len_{b}').mkdir(parents=True)
        lines = [json.dumps({k: ({str(b): v[str(b)]} if isinstance(v, dict)
                                 else v) for k, v in r.items()})
                 for r in _records()]
        (workdir / f'len_{b}' / 'metrics.jsonl').write_text(
            '\n'.join(lines) + '\n')
    (workdir / 'results.json').write_text(json.dumps(_results('dpn', 1)))
    records = plots.read_records(str(workdir))
    assert len(records) == 3 * len(BITS)
    assert sorted(plots.per_length(records, 'losses')) == list(BITS)
    written = plots.plot_workdir(str(workdir))
    assert sorted(p.rsplit('/', 1)[1] for p in written) == [
        'map_vs_length.png', 'training_curves.png', 'weighting.png']
    assert all(_is_png(p) for p in written)


def test_missing_results_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r'has no results\.json'):
        plots.load_results(str(tmp_path))


def test_the_warm_up_thread_ends_with_its_context(tmp_path):
    with plots.warmed_up() as warm:
        warm.start()
        warm.start()  # once
        thread = warm._thread
    assert not thread.is_alive()
    path = plots.plot_training_curves(_records(), str(tmp_path / 't.png'))
    assert _is_png(path)
