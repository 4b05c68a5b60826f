"""The one trainer of every system; it knows no system by name.

A system (NHL, MAH, ODH) implements the ``System`` protocol
(``nhl_jax.train.system``); ``run_training(system, spec, workdir)`` runs
any of them the same way, for a resolved ``RunSpec``. The pieces:

- ``nhl_jax.train.system``: the plug-in contract (``System``, ``RunSpec``,
  ``Round``, ``Schedule``, ``DataInfo``, ``Drawn``);
- ``nhl_jax.train.trainer``: data, runs, results.json, final table, plots;
- ``nhl_jax.train.workdir``: the run directory's policy (no overwrite,
  resume only the same config);
- ``nhl_jax.train.loop``: the round loop (``fit``), SIGTERM checkpoints,
  non-finite guard, evaluation schedule, best parameters and patience;
- ``nhl_jax.train.programs``: a run's jitted steps and hooks, the first
  step compiled beside the initial state's programs;
- ``nhl_jax.train.step``: the train state, the optimizer factory, the step
  skeleton and its one compile path;
- ``nhl_jax.train.evaluation``: encoding splits and scoring them by name;
- ``nhl_jax.train.checkpoint``, ``writer``, ``plots``, ``profile``.

Resolving a config into a system and a spec is the command line's
(``nhl_jax.cli``: ``train_and_evaluate(config, workdir)``).
"""

from nhl_jax.train.loop import Preempted, fit, new_meta, params_digest
from nhl_jax.train.loop import update_best
from nhl_jax.train.step import Setup, TrainState, compile_encode, compile_hook
from nhl_jax.train.step import compile_step, make_optimizer, make_train_step
from nhl_jax.train.step import part_labels
from nhl_jax.train.system import DataInfo, Drawn, Round, RoundResult, RunSpec
from nhl_jax.train.system import Schedule, System
from nhl_jax.train.trainer import check_batches, format_results, make_results
from nhl_jax.train.trainer import run_training, training_runs
from nhl_jax.train.workdir import check_same_config, check_workdir
from nhl_jax.train.workdir import check_workdir_policy

__all__ = [
    'DataInfo',
    'Drawn',
    'Preempted',
    'Round',
    'RoundResult',
    'RunSpec',
    'Schedule',
    'Setup',
    'System',
    'TrainState',
    'check_batches',
    'check_same_config',
    'check_workdir',
    'check_workdir_policy',
    'compile_encode',
    'compile_hook',
    'compile_step',
    'fit',
    'format_results',
    'make_optimizer',
    'make_results',
    'make_train_step',
    'new_meta',
    'params_digest',
    'part_labels',
    'run_training',
    'training_runs',
    'update_best',
]
