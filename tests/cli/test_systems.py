"""Every system (NHL, MAH, ODH) through the one trainer, with every capability.

Per system: one results.json schema and the plots of a finished run; the
exported codes (MAH: its learned database codes) reproduce the training
evaluation and can be searched; only process 0 writes files; the
non-finite guard; SIGTERM mid-round then a kill, and resume ends
bit-identical; 4 fake devices equal 1 (a subprocess,
tests/support/systems_worker.py).
"""

import json
import os
import signal
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax import cli, parallel, retrieval, runlog, train
from nhl_jax.cli import inference
from nhl_jax.retrieval import index
from nhl_jax.train import plots
from nhl_jax.train import step as step_lib
from tests.support import ROOT, systems

SYSTEMS = tuple(systems.TINY)
WORKER = os.path.join(ROOT, 'tests', 'support', 'systems_worker.py')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """One uninterrupted tiny run of every system: {system: (dir, results)}."""
    out = {}
    for name in SYSTEMS:
        workdir = str(tmp_path_factory.mktemp(name) / 'run')
        out[name] = workdir, cli.train_and_evaluate(
            systems.tiny_config(name), workdir)
    return out


@pytest.mark.parametrize('name', SYSTEMS)
def test_one_results_schema_and_plots(runs, name):
    workdir, results = runs[name]
    with open(os.path.join(workdir, 'results.json')) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(results))
    assert saved['system'] == name
    for key in ('map', 'map_last', 'params_sha256', 'epochs'):
        assert set(saved[key]) == {'8', '16'}, key
    assert all(0.0 < v <= 1.0 for v in saved['map'].values())
    assert saved['train_seconds'] == pytest.approx(
        sum(saved['stage_seconds'].values()))
    phases = saved['phase_seconds']  # measured, disjoint: they add up
    assert {'data', 'setup', 'trace', 'compile', 'train', 'evaluate',
            'checkpoint', 'results', 'plots', 'total'} == set(phases)
    assert phases['total'] == pytest.approx(
        sum(v for k, v in phases.items() if k != 'total'), abs=1e-2)
    assert all(v >= 0 for v in phases.values())
    # The train phase is the training loops (train_seconds) less the
    # tracing and compilation inside them (NHL compiles its first step
    # before them), plus each round's record, progress line and
    # metrics.jsonl line: far less than its evaluation, which a
    # misbooking would add.
    assert phases['train'] - saved['train_seconds'] < phases['evaluate']
    for extra in saved['evaluators'][1:]:  # MAH: symmetric beside asymmetric
        assert set(saved[f'map_{extra}']) == set(saved[f'map_{extra}_last'])
    assert saved['evaluators'][0] == ('asymmetric' if name == 'mah'
                                      else 'symmetric')
    if name != 'mah':  # the tie-aware mAP beside the stable one
        assert set(saved['map_symmetric_expected']) == {'8', '16'}
    drawn = set(os.listdir(os.path.join(workdir, 'plots')))
    assert {'map_vs_length.png', 'training_curves.png'} <= drawn
    assert ('weighting.png' in drawn) == (name == 'nhl')


@pytest.mark.parametrize('name', SYSTEMS)
def test_exported_codes_reproduce_the_evaluation_and_search(runs, name,
                                                            tmp_path):
    workdir, results = runs[name]
    out = inference.export_codes(workdir)
    for b in ('8', '16'):  # the final model's codes give the last mAP
        assert out['metrics'][b]['map'] == pytest.approx(
            results['map_last'][b], abs=1e-9)
    database = retrieval.load_codes(out['paths']['database'])
    query = retrieval.load_codes(out['paths']['query'])
    # MAH searches its learned V of the 1,497 database rows (v_split).
    assert len(database.ids) == 1497
    assert database.nested == (name != 'mah')
    best = inference.export_codes(workdir, params='best')
    for b in ('8', '16'):  # each length's best model (and MAH's V with it)
        assert best['metrics'][b]['map'] == pytest.approx(
            results['map'][b], abs=1e-9)
    codes = retrieval.codes_of_length(database, 16)
    found = index.build_index(codes, 16).search(
        retrieval.codes_of_length(query, 16)[:5], k=3)
    unpacked = retrieval.unpack_codes(codes, 16)
    q = retrieval.unpack_codes(retrieval.codes_of_length(query, 16)[:5], 16)
    dist = (q[:, None, :] != unpacked[None, :, :]).sum(-1)
    np.testing.assert_array_equal(found.indices,
                                  np.argsort(dist, 1, kind='stable')[:, :3])
    assert 'pr_curves.png' in {os.path.basename(p)
                               for p in plots.plot_workdir(workdir)}


# NHL: tests/cli/test_encode.py
@pytest.mark.parametrize('name', ('mah', 'odh'))
def test_search_command_encodes_image_queries(runs, name):
    """search.py restores the run and encodes query images with it."""
    workdir, _ = runs[name]
    inference.export_codes(workdir)
    root = ROOT
    result = subprocess.run(
        [sys.executable, os.path.join(root, 'experiments', 'search.py'),
         f'--workdir={workdir}', '--query_split=query', '--query_index=0,1',
         '--bits=8', '--k=3'],
        cwd=root, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '8-bit codes, 1497 database items' in result.stdout
    assert result.stdout.count('query id') == 6


@pytest.mark.parametrize('name', SYSTEMS)
def test_only_process_zero_writes_files(name, tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, 'is_main_process', lambda: False)
    workdir = tmp_path / 'run'
    cli.train_and_evaluate(systems.tiny_config(name, epochs=1), str(workdir))
    assert os.listdir(workdir) == ['checkpoints']


def _poisoned_steps(monkeypatch, after: int):
    """Every system's loss becomes NaN from step ``after`` on."""
    real = step_lib.make_train_step

    def make(loss_fn, **kwargs):
        def poisoned(model, state, batch, consts):
            total, aux = loss_fn(model, state, batch, consts)
            return jnp.where(state.step >= after, jnp.nan, total), aux
        return real(poisoned, **kwargs)

    monkeypatch.setattr(step_lib, 'make_train_step', make)


@pytest.mark.parametrize('name', SYSTEMS)
def test_non_finite_loss_stops_before_saving(name, tmp_path, monkeypatch):
    _poisoned_steps(monkeypatch, after=5)
    workdir = tmp_path / 'run'
    with pytest.raises(FloatingPointError,
                       match=r'non-finite at step 6 .*(--resume|another '
                             r'--workdir)'):
        cli.train_and_evaluate(systems.tiny_config(name), str(workdir))
    assert not (workdir / 'results.json').exists()


class _Killed(Exception):
    """Stands for SIGKILL: the run dies between steps, saving nothing."""


def _interrupt_steps(monkeypatch, at: int, action):
    """Calls ``action()`` before the ``at``-th step of the next run."""
    real = step_lib.compile_step
    calls = [0]

    def compile_step(fn, mesh=None, **kwargs):
        compiled = real(fn, mesh, **kwargs)

        def step(*args):
            calls[0] += 1
            if calls[0] == at:
                action()
            return compiled(*args)
        return step

    monkeypatch.setattr(step_lib, 'compile_step', compile_step)


def _sigterm():
    os.kill(os.getpid(), signal.SIGTERM)  # the trainer's handler sets a flag


def _kill():
    raise _Killed


# system -> (step of the SIGTERM, step of the kill after resuming): both
# fall in the middle of a round.
_CUTS = {'nhl': (40, 30), 'mah': (6, 3), 'odh': (15, 6)}


@pytest.mark.parametrize('name', SYSTEMS)
def test_sigterm_then_kill_then_resume_is_bit_identical(runs, name, tmp_path,
                                                        monkeypatch):
    _, reference = runs[name]
    workdir, config = str(tmp_path / 'run'), systems.tiny_config(name)
    term_at, kill_at = _CUTS[name]
    with monkeypatch.context() as patch:
        _interrupt_steps(patch, term_at, _sigterm)
        with pytest.raises(train.Preempted, match='continue with --resume'):
            cli.train_and_evaluate(config, workdir)
    assert not os.path.exists(os.path.join(workdir, 'results.json'))
    with monkeypatch.context() as patch:
        _interrupt_steps(patch, kill_at, _kill)
        with pytest.raises(_Killed):
            cli.train_and_evaluate(config, workdir, resume=True)
    resumed = cli.train_and_evaluate(config, workdir, resume=True)
    assert resumed['params_sha256'] == reference['params_sha256']
    assert resumed['map'] == reference['map']
    assert resumed['map_last'] == reference['map_last']
    rounds = [r['epoch'] for r in
              runlog.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))]
    assert rounds == list(range(1, len(rounds) + 1))


# Whole-run tolerances, 4 devices vs 1. NHL and MAH stay within float32
# rounding. ODH's classifier has a bias before a BatchNorm, whose gradient
# is zero up to rounding; Adam scales that noise to +-lr, and a sum over a
# batch split across devices rounds differently, so its runs drift apart
# (measured: losses within 2e-6 relative, mAP within 0.006 after 3 epochs)
# though each step agrees to 1e-6 (the first check).
_RUN_TOLERANCE = {'nhl': (1e-6, 1e-9), 'mah': (1e-6, 1e-9),
                  'odh': (1e-5, 1e-2)}


def _four_device_worker(tmp_path, runs) -> dict:
    out = tmp_path / 'result.json'
    subprocess.run([sys.executable, WORKER, '4', str(tmp_path), str(out),
                    ','.join(runs)], check=True, timeout=600,
                   capture_output=True)
    return json.loads(out.read_text())


@pytest.fixture(scope='module')
def four_devices(tmp_path_factory):
    """The worker's result with NHL's whole run (the others: slow)."""
    return _four_device_worker(tmp_path_factory.mktemp('four'), ['nhl'])


def _four_devices_equal_one(result, runs):
    for name in SYSTEMS:
        assert result[f'{name}_step'] <= 1e-6, name
    for name in runs:
        one, four = result[f'{name}_1'], result[f'{name}_4']
        loss_tol, map_tol = _RUN_TOLERANCE[name]
        np.testing.assert_allclose(four['losses'], one['losses'],
                                   rtol=loss_tol, atol=loss_tol,
                                   err_msg=name)
        for key in ('map', 'map_last'):
            assert four[key] == pytest.approx(one[key], abs=map_tol), name


def test_four_devices_equal_one_for_every_system(four_devices):
    """Every system's first steps; NHL's whole run."""
    _four_devices_equal_one(four_devices, ['nhl'])


@pytest.mark.parametrize('name', SYSTEMS)
def test_train_steps_lower_for_tpu_without_64_bit_arrays(four_devices,
                                                          name):
    # A TPU has no float64 and emulates int64 (issue 32); every step and
    # hook is lowered with jax.export in the worker.
    wide = four_devices[f'{name}_tpu_wide']
    assert wide and wide == {program: [] for program in wide}


@pytest.mark.slow
def test_four_devices_equal_one_for_whole_mah_and_odh_runs(tmp_path):
    _four_devices_equal_one(_four_device_worker(tmp_path, ['mah', 'odh']),
                            ['mah', 'odh'])
