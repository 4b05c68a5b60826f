"""Wall seconds by phase, with tracing and compilation split out."""

import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax.train import phases as phases_lib
from tests.support import ROOT


def test_overlapping_spans_count_once_and_are_clipped(monkeypatch):
    spans = {'trace': [(1.0, 3.0), (2.0, 4.0), (10.0, 11.0)], 'compile': []}
    monkeypatch.setattr(phases_lib, '_spans', spans)
    assert phases_lib.spent('trace', 0.0, 20.0) == pytest.approx(4.0)
    assert phases_lib.spent('trace', 2.5, 10.5) == pytest.approx(2.0)
    assert phases_lib.spent('trace', 5.0, 9.0) == 0.0
    assert phases_lib.spent('compile', 0.0, 20.0) == 0.0


def test_a_compilation_inside_a_phase_is_booked_apart():
    phases = phases_lib.Phases()
    start = time.time()

    @jax.jit
    def fresh(x):  # a new function: traced and compiled (or cache-loaded)
        return jnp.tanh(x) * 3.0 + start

    with phases('train'):
        jax.block_until_ready(fresh(jnp.ones(3)))
        time.sleep(0.05)
    wall = time.time() - start
    seconds = phases.rounded()
    assert seconds['trace'] > 0 and seconds['compile'] > 0
    assert seconds['train'] >= 0.05
    assert list(seconds) == ['trace', 'compile', 'train', 'total']
    assert seconds['total'] == pytest.approx(
        sum(v for k, v in seconds.items() if k != 'total'), abs=2e-3)
    assert seconds['total'] <= wall + 1e-3


def test_programs_count_compilations_apart_from_cache_loads():
    # The session's persistent cache (conftest) keeps every program.
    phases = phases_lib.Phases()
    salt = time.time()

    def fresh():  # a new program: its constant is this test's own
        return jax.jit(lambda x: jnp.cos(x) * 2.0 + salt)(
            np.ones(3, np.float32))

    jax.block_until_ready(fresh())  # outside the phases: not counted
    jax.clear_caches()
    with phases('train'):
        jax.block_until_ready(fresh())  # read back from the cache
    assert phases.programs() == {'compiled': 0, 'loaded': 1}
    other = phases_lib.Phases()
    with other('setup'):
        jax.block_until_ready(
            jax.jit(lambda x: x * salt - 1.0)(np.ones(2, np.float32)))
    assert other.programs() == {'compiled': 1, 'loaded': 0}
    line = phases_lib.format_phases({'train': 1.0, 'total': 1.0},
                                    other.programs())
    assert line.endswith('; XLA programs: 1 compiled, 0 loaded from the '
                         'compilation cache')


def test_the_process_start_is_in_the_past():
    started = phases_lib.process_start()
    assert 0 < time.time() - started < 86400
    line = phases_lib.format_phases({'data': 1.25, 'train': 3.0,
                                     'total': 4.25})
    assert line == 'wall seconds: data 1.2, train 3.0 (total 4.2)'


def test_a_shell_that_execs_the_command_late_does_not_count_before_it(
        tmp_path):
    # `cmd && python ...` in a subshell: bash execs python in the process it
    # forked before the sleep; the start-up begins at the exec, not there.
    mark = tmp_path / 'exec_at'
    child = ('import time; from nhl_jax.train import phases; '
             'print(phases.process_start(), phases._forked(), time.time())')
    script = (f'sleep 1; date +%s.%N > {mark}; '
              f'exec {sys.executable} -c "{child}"')
    done = subprocess.run(
        ['bash', '-c', script],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=120)
    started, forked, now = map(float, done.stdout.split())
    exec_at = float(mark.read_text())
    assert forked < exec_at - 0.9  # the process: before the sleep
    assert exec_at - 0.05 <= started <= now  # the interpreter: after it
