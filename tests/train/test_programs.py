"""The run's programs: the first step compiled beside the initial state."""

import jax
import numpy as np

from nhl_jax import cli, data, parallel
from nhl_jax.cli import registry
from nhl_jax.train import DataInfo, loop
from nhl_jax.train import programs as programs_lib
from tests.support.systems import tiny_config


class _Compiles:
    """The names of the programs compiled (or loaded) while it is open."""

    def __enter__(self):
        self.names = []
        jax.monitoring.register_event_time_span_listener(self._on)
        return self.names

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_time_span_listener(self._on)

    def _on(self, event, start, end, **kwargs):
        del start, end
        if event == '/jax/core/compile/backend_compile_duration':
            self.names.append(kwargs.get('fun_name'))


def _drawn_run(config):
    spec = cli.resolve(config)
    system = registry.SYSTEMS[spec.system]
    splits = data.load_splits(spec.dataset, seed=spec.seed)
    info = DataInfo.of(splits)
    setup, drawn = system.draw(spec, info, spec.bits)
    mesh = parallel.make_mesh(spec.devices)
    return spec, system, splits, setup, drawn, info, mesh


def test_the_first_step_is_compiled_beside_the_initial_state():
    spec, system, splits, setup, drawn, info, mesh = _drawn_run(
        tiny_config('nhl', bits=(8, 16, 32)))
    assert len(drawn.programs) == 2  # NHL leaves its state's to the loop
    programs = programs_lib.Programs(system, spec, setup, splits, info, mesh)
    with _Compiles() as compiled:
        state = programs.start(drawn)
    assert compiled.count('jit(step_fn)') == 1
    plan = system.plan(spec, splits, 1)
    batch = next(loop._ahead(plan.batches(None, 0), mesh, spec.batch_size))
    with _Compiles() as compiled:
        state, metrics = programs.steps['train'](
            parallel.replicate(state, mesh), batch, programs.consts)
        jax.block_until_ready(metrics)
    assert 'jit(step_fn)' not in compiled  # the call found it compiled
    assert np.isfinite(float(metrics['loss']))


def test_a_state_drawn_in_a_trace_compiles_nothing():
    spec, _, _, _, _, info, _ = _drawn_run(tiny_config('nhl'))
    with _Compiles() as compiled:
        shapes = jax.eval_shape(
            lambda: registry.create_train_state(spec, info)[1].params)
    assert compiled == []
    assert all(isinstance(x, jax.ShapeDtypeStruct)
               for x in jax.tree.leaves(shapes))


def test_the_first_batch_is_read_inline_whatever_the_workers(monkeypatch):
    # Its shapes only: worker processes would be started for one batch.
    workers = []
    real = data.train_batches

    def spy(*args, **kwargs):
        workers.append(kwargs.get('workers'))
        return real(*args, **kwargs)

    monkeypatch.setattr(data, 'train_batches', spy)
    spec, system, splits, setup, drawn, info, mesh = _drawn_run(
        tiny_config('nhl', data_workers=2))
    assert spec.data_workers == 2
    programs_lib.Programs(system, spec, setup, splits, info,
                          mesh).start(drawn)
    assert workers == [0]
