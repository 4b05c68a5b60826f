"""A run's train step lowered over a mesh from an abstract state.

For inspecting what a configuration compiles to on a mesh (its
collectives, its memory) without initialising a network: the state is
``jax.eval_shape``'s, the batch the shapes of the run's first batch.
"""

import jax

from nhl_jax import data, parallel, train
from nhl_jax.cli import config as config_lib
from nhl_jax.cli import registry

# XLA options for a quick look: the HLO passes (the collective combiners
# among them) run at every level; the skipped LLVM work is most of the
# compile time.
FAST_COMPILE = {'xla_backend_optimization_level': 0,
                'xla_llvm_disable_expensive_passes': True}


def lower_train_step(config, splits: data.Splits, mesh=None,
                     **compile_kwargs) -> jax.stages.Lowered:
    """``config``'s train step, jitted over ``mesh`` and lowered.

    Args:
      config: a run config (``nhl_jax.cli.configs.default.get_config()``).
      splits: the loaded splits of its dataset (shapes and sizes).
      mesh: a data mesh (None: ``parallel.make_mesh()``, every device).
      **compile_kwargs: ``train.compile_step``'s options, e.g.
        ``sync_batch_stats=False``.

    Returns:
      The lowered step; ``.compile(FAST_COMPILE).as_text()`` is its HLO.
    """
    spec = config_lib.resolve(config)
    system = registry.SYSTEMS[spec.system]
    built = {}

    def build():
        built['setup'], state = system.create(
            spec, train.DataInfo.of(splits), spec.bits)
        return state

    state = jax.eval_shape(build)
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
        next(iter(system.plan(spec, splits, 1).batches(None, 0))))
    step = train.compile_step(built['setup'].steps['train'],
                              mesh if mesh is not None else
                              parallel.make_mesh(), **compile_kwargs)
    return step.lower(state, batch, system.consts(spec, splits))
