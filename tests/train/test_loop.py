"""The round loop: resume decisions, and no host sync in the step loop."""

import io
import types
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax import parallel, runlog
from nhl_jax.train import loop, profile
from nhl_jax.train import step as step_lib
from nhl_jax.train import writer as writer_lib


def _meta(**fields):
    return dict(loop.new_meta((8,), ('symmetric',)), **fields)


def test_a_larger_patience_continues_a_run_that_stopped_early(capsys):
    spec = types.SimpleNamespace(patience=3)
    meta = loop._continued(_meta(epoch=5, counter=2, stopped_early=True),
                           spec, 10, 'runs/x')
    assert not meta['stopped_early'] and capsys.readouterr().out == ''
    spec.patience = 2
    meta = loop._continued(_meta(epoch=5, counter=2, stopped_early=True),
                           spec, 10, 'runs/x')
    assert meta['stopped_early']
    assert ('runs/x stopped early after 5 rounds (2 evaluations without '
            'improvement, patience 2); nothing to train: pass a larger '
            '--config.patience') in capsys.readouterr().out


def test_a_finished_run_says_how_to_train_on(capsys):
    spec = types.SimpleNamespace(patience=5)
    loop._continued(_meta(epoch=10), spec, 10, 'runs/x')
    assert 'pass a larger --config.epochs' in capsys.readouterr().out
    loop._continued(_meta(epoch=4), spec, 10, 'runs/x')  # goes on: silent
    loop._continued(_meta(), spec, 10, 'runs/x')  # a new run: silent
    assert capsys.readouterr().out == ''


@pytest.fixture
def cpu_transfer_guard(monkeypatch):
    """The CPU honours the device-to-host transfer guard, as GPUs do.

    XLA's CPU client skips the guard (its arrays are host memory), so every
    read of an array's value (np.asarray, float, int, tolist,
    jax.device_get) is made to raise where the guard disallows it.
    """
    from jax._src import array, config
    value = array.ArrayImpl._value

    def guarded(self):
        level = config.transfer_guard_device_to_host.value
        if level in ('disallow', 'disallow_explicit'):
            raise RuntimeError('Disallowed device-to-host transfer')
        return value.fget(self)

    monkeypatch.setattr(array.ArrayImpl, '_value', property(guarded))


class _Terminal(io.StringIO):
    def isatty(self):
        return True


class _State(NamedTuple):
    step: jax.Array  # [] int32
    total: jax.Array  # []


def _toy_step(state, batch, consts):
    """Loss = the global step number, so every mean is known exactly."""
    del consts
    step = state.step + 1
    loss = step.astype(jnp.float32) + 0 * jnp.sum(batch['x'])
    return _State(step, state.total + loss), {
        'loss': loss, 'losses': jnp.stack([loss, 2 * loss]),
        'nonfinite': jnp.zeros(2, jnp.int32),
        'nonfinite_params': jnp.zeros((), jnp.int32)}


def _toy_loop(workdir, steps=25):
    """``fit``'s step loop around ``_toy_step``: scalars every 2 steps, a
    terminal's bar."""
    self = object.__new__(loop._Loop)
    self.spec = types.SimpleNamespace(batch_size=4)
    self.mesh, self.consts = parallel.make_mesh(1), None
    self.steps = {'train': step_lib.compile_step(_toy_step, self.mesh)}
    self.writer = writer_lib.MetricWriter(str(workdir), writers=())
    self.scalars = writer_lib.StepLogger(self.writer, (8, 16), 2)
    self.profiler = profile.Profiler(None, str(workdir))
    terminal = _Terminal()
    self.progress = runlog.RunProgress(steps, stream=terminal)
    plan = types.SimpleNamespace(stage='train', batches=lambda state, start: (
        {'x': np.full((4, 2), i, np.float32)} for i in range(start, steps)))
    state = _State(jnp.zeros((), jnp.int32), jnp.zeros(()))
    stop = types.SimpleNamespace(should_stop=lambda step: False)
    state, progress = self._batches(state, plan, 1, None, stop)
    self.scalars.flush()
    self.progress.close()
    return state, progress, terminal.getvalue()


def test_the_step_loop_reads_only_finished_values(tmp_path,
                                                  cpu_transfer_guard):
    # Issue 32: the bar's loss and the step scalars are read an interval
    # late, through writer.read_finished; nothing else leaves the device.
    state, progress, terminal = _toy_loop(tmp_path)
    assert int(state.step) == progress['batches'] == 25
    assert progress['sums']['loss'] == sum(range(1, 26))
    steps = runlog.read_jsonl(str(tmp_path / 'metrics.jsonl'), kind='step')
    assert [r['step'] for r in steps] == list(range(2, 25, 2))
    # The same numbers as when read at once: the means of steps t-1, t.
    assert [r['loss'] for r in steps] == [t - 0.5 for t in range(2, 25, 2)]
    assert [r['losses']['16'] for r in steps] == [
        2 * t - 1 for t in range(2, 25, 2)]
    # At step 20 the bar shows step 10's loss, already finished.
    assert 'loss=10.0000' in terminal and 'loss=20.0000' not in terminal


def test_a_sync_added_to_the_step_loop_fails(tmp_path, cpu_transfer_guard,
                                             monkeypatch):
    # What the test above guards against: a read of the step just run.
    monkeypatch.setattr(profile.Profiler, 'after',
                        lambda self, step, state: float(state.total))
    with pytest.raises(RuntimeError, match='Disallowed device-to-host'):
        _toy_loop(tmp_path, steps=2)
