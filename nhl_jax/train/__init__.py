"""The one trainer of every system (NHL, MAH, ODH).

``train_and_evaluate(config, workdir)`` is the entry point (flax examples'
layout); ``resolve`` turns a config into the explicit ``RunSpec`` that
everything below it takes. The pieces:

- ``nhl_jax.train.trainer``: resolution, workdir policy, results, plots;
- ``nhl_jax.train.loop``: the round loop (``fit``), SIGTERM checkpoints,
  non-finite guard, evaluation schedule, best parameters and patience;
- ``nhl_jax.train.step``: the train state, the optimizer factory, the step
  skeleton and its one compile path.

A system (``nhl_jax.systems``) supplies only what is its own.
"""

from nhl_jax.systems.base import DataInfo, RunSpec
from nhl_jax.train.loop import Preempted, fit, new_meta, params_digest
from nhl_jax.train.loop import update_best
from nhl_jax.train.step import Setup, TrainState, compile_encode, compile_hook
from nhl_jax.train.step import compile_step, make_optimizer, make_train_step
from nhl_jax.train.step import part_labels
from nhl_jax.train.trainer import check_same_config, format_results
from nhl_jax.train.trainer import make_results, resolve, train_and_evaluate
from nhl_jax.train.trainer import training_runs


def create_train_state(spec: RunSpec, info: DataInfo, bits=None):
    """``(Setup, TrainState)`` of ``spec``'s system for lengths ``bits``.

    Args:
      spec: from ``resolve(config)``.
      info: image shape, classes and split sizes (``DataInfo.of(splits)``).
      bits: lengths (default: ``spec.bits``).
    """
    from nhl_jax import systems
    return systems.SYSTEMS[spec.system].create(spec, info, bits)


__all__ = [
    'DataInfo',
    'Preempted',
    'RunSpec',
    'Setup',
    'TrainState',
    'check_same_config',
    'compile_encode',
    'compile_hook',
    'compile_step',
    'create_train_state',
    'fit',
    'format_results',
    'make_optimizer',
    'make_results',
    'make_train_step',
    'new_meta',
    'params_digest',
    'part_labels',
    'resolve',
    'train_and_evaluate',
    'training_runs',
    'update_best',
]
