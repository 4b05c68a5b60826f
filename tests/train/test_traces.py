"""Saved traced programs (nhl_jax.train.traces): hits, misses, fallbacks,
and the NHL run that computes the same with or without its entries."""

import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax import cli, train
from nhl_jax.cli import train as cli_train
from nhl_jax.train import traces
from tests.support.systems import tiny_config


class _Pair(NamedTuple):
    a: jax.Array  # [B, K]
    b: dict


def _counting(calls):
    def fun(pair, scale):
        calls.append(1)
        out = jnp.tanh(pair.a * scale) @ pair.b['w']
        return traces.Static(('tag', out.shape[1])), {'out': out,
                                                      'sum': out.sum()}
    return fun


def _args(rows=4):
    rng = np.random.default_rng(0)
    return (_Pair(jnp.asarray(rng.normal(size=(rows, 3)), jnp.float32),
                  {'w': jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}),
            jnp.float32(0.5))


def _entries(directory):
    return sorted(p for p in os.listdir(directory) if p.endswith('.trace'))


def test_no_folder_is_the_function_itself():
    fun = _counting([])
    assert traces.cached(fun, 'f', {}, None) is fun
    assert traces.default_dir() is None  # off unless the command line uses it


def test_the_command_line_keeps_them_beside_its_compilation_cache(
        monkeypatch):
    monkeypatch.setattr(traces, '_folder', [None])
    monkeypatch.setattr(cli_train.compiler, 'use_persistent_cache',
                        lambda folder: folder)
    assert cli_train.use_caches('/tmp/x') == '/tmp/x'
    assert traces.default_dir() == os.path.join('/tmp/x', 'traces')
    cli_train.use_caches('off')
    assert traces.default_dir() is None


def test_a_second_process_calls_the_saved_program_without_tracing(tmp_path):
    calls = []
    first = jax.jit(traces.cached(_counting(calls), 'f', {'k': 1}, tmp_path))
    static, out = first(*_args())
    assert len(calls) == 1 and len(_entries(tmp_path)) == 1
    assert static == traces.Static(('tag', 2))
    expected = jax.jit(_counting([]))(*_args())[1]
    np.testing.assert_array_equal(out['out'], expected['out'])

    jax.clear_caches()  # as a fresh process: nothing traced in memory
    again = []
    second = jax.jit(traces.cached(_counting(again), 'f', {'k': 1}, tmp_path))
    static2, out2 = second(*_args())
    assert again == []  # the saved program, not the Python
    assert static2.value == ('tag', 2)
    np.testing.assert_array_equal(out2['out'], out['out'])
    assert len(_entries(tmp_path)) == 1


@pytest.mark.parametrize('change', ['context', 'name', 'shape'])
def test_anything_in_the_key_that_changes_is_a_miss(tmp_path, change):
    jax.jit(traces.cached(_counting([]), 'f', {'k': 1}, tmp_path))(*_args())
    calls = []
    name = 'g' if change == 'name' else 'f'
    context = {'k': 2} if change == 'context' else {'k': 1}
    args = _args(rows=5) if change == 'shape' else _args()
    jax.jit(traces.cached(_counting(calls), name, context, tmp_path))(*args)
    assert len(calls) == 1 and len(_entries(tmp_path)) == 2


def test_an_unreadable_entry_is_traced_and_written_again(tmp_path):
    jax.jit(traces.cached(_counting([]), 'f', {}, tmp_path))(*_args())
    (entry,) = _entries(tmp_path)
    (tmp_path / entry).write_bytes(b'not a program')
    jax.clear_caches()
    calls = []
    _, out = jax.jit(traces.cached(_counting(calls), 'f', {}, tmp_path))(
        *_args())
    assert len(calls) == 1
    np.testing.assert_array_equal(
        out['out'], jax.jit(_counting([]))(*_args())[1]['out'])
    assert (tmp_path / entry).read_bytes() != b'not a program'
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]


def test_a_program_export_refuses_runs_uncached(tmp_path):
    def with_callback(x):
        return jax.pure_callback(np.sin, jax.ShapeDtypeStruct((3,),
                                                              jnp.float32), x)

    x = jnp.arange(3, dtype=jnp.float32)
    out = jax.jit(traces.cached(with_callback, 'cb', {}, tmp_path))(x)
    np.testing.assert_allclose(out, np.sin(np.arange(3)), rtol=1e-6)
    assert _entries(tmp_path) == []


def test_eviction_keeps_the_newest_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(traces, 'MAX_ENTRIES', 2)
    for k in range(4):
        jax.jit(traces.cached(_counting([]), 'f', {'k': k}, tmp_path))(
            *_args())
    assert len(_entries(tmp_path)) == 2


def test_nhl_programs_do_not_depend_on_the_seed():
    """Why ``UNTRACED`` may leave the seed out: NHL's initial-state
    program and its step lower to the same text for two seeds."""
    info = train.DataInfo((8, 8, 1), 10, {'train': 64, 'query': 8,
                                          'database': 64})
    texts = []
    for seed in (0, 1):
        spec = cli.resolve(tiny_config('nhl', seed=seed))
        setup, state = cli.create_train_state(spec, info)
        batch = {'image': np.zeros((32, 8, 8, 1), np.uint8),
                 'label': np.eye(10, dtype=np.float32)[np.arange(32) % 10],
                 'index': np.arange(32, dtype=np.int32)}
        step = jax.jit(setup.steps['train']).lower(state, batch, None)
        texts.append(step.as_text())
    assert texts[0] == texts[1]
    assert 'seed' in traces.UNTRACED


def test_a_run_with_saved_programs_trains_the_same(tmp_path, monkeypatch):
    """Two NHL runs, the second calling the first one's saved state and
    step programs: same parameters, no new entry, seconds in ``trace``."""
    monkeypatch.setattr(traces, '_folder', [str(tmp_path / 'c')])
    config = tiny_config('nhl', epochs=1, plots=False)
    first = cli_train.train_and_evaluate(config, str(tmp_path / 'a'))
    names = _entries(tmp_path / 'c')
    # The initial state's two programs and the train step.
    assert len(names) == 3
    jax.clear_caches()
    config.seed = 1  # another seed: the same programs
    second = cli_train.train_and_evaluate(config, str(tmp_path / 'b'))
    assert _entries(tmp_path / 'c') == names
    config.seed = 0
    jax.clear_caches()
    third = cli_train.train_and_evaluate(config, str(tmp_path / 'd'))
    assert third['params_sha256'] == first['params_sha256']
    assert second['params_sha256'] != first['params_sha256']
    saved = json.loads((tmp_path / 'd' / 'results.json').read_text())
    assert saved['phase_seconds']['trace'] > 0
    # Another seed or the same run again: every program from the caches.
    for again in (second, saved):
        assert again['programs']['compiled'] == 0
        assert again['programs']['loaded'] >= 3  # the state's and the step
    traces.use(None)
    uncached = cli_train.train_and_evaluate(config, str(tmp_path / 'e'))
    assert uncached['params_sha256'] == first['params_sha256']
