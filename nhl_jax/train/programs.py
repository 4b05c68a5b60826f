"""A run's programs: its jitted steps, hooks and encoder, compiled early.

``Programs`` builds what a run calls (each step guarded against
non-finite parameters and, on one device, called as ``nhl_jax.train.traces``
saved it) and ``Programs.start`` draws the initial state: a system that
leaves its state's programs to the trainer (``System.draw``) gets them
compiled, or loaded from the persistent cache, side by side with the
first round's train step (``nhl_jax.compiler.compile_all``), since
nothing else can overlap the first compilations of a run.
"""

import dataclasses

import jax
import jax.numpy as jnp

from nhl_jax import compiler, data, parallel
from nhl_jax.train import step as step_lib
from nhl_jax.train import traces


def guarded(step):
    """``step`` that also counts non-finite parameters after its update.

    The loss alone can miss NaN weights or features: a max or a where that
    maps NaN to 0 (a ReLU, a hinge) leaves the loss finite while the
    weights are not. The check is one reduction fused into the step.
    """
    def step_fn(state, batch, consts):
        state, metrics = step(state, batch, consts)
        flags = [~jnp.isfinite(x).all() for x in jax.tree.leaves(state.params)
                 if jnp.issubdtype(x.dtype, jnp.inexact)]
        bad = jnp.any(jnp.stack(flags)) if flags else jnp.asarray(False)
        return state, {**metrics, 'nonfinite_params': bad.astype(jnp.int32)}
    return step_fn


class Programs:
    """A run's jitted steps, hooks and encoder, and its replicated consts.

    ``start`` draws the initial state with the first round's step compiled
    (or loaded from the persistent cache) beside the state's programs:
    when a system leaves its state's programs to the trainer
    (``System.draw``) and the training split is in memory (its first
    batch's shapes are known without decoding anything), the step is
    lowered from the state's abstract output and compiled with them
    (``compiler.compile_all``); its first call then finds it compiled.
    """

    def __init__(self, system, spec, setup, splits, info, mesh):
        self.system, self.spec, self.splits, self.mesh = (system, spec,
                                                          splits, mesh)
        consts = system.consts(spec, splits)
        self.consts = (None if consts is None
                       else parallel.replicate(consts, mesh))
        context = traces.run_context(spec.config, setup.bits, info)
        directory = (traces.default_dir() if system.cache_traces
                     and mesh.devices.size == 1
                     else None)  # a saved step is for one device
        self.steps = {name: step_lib.compile_step(
            traces.cached(guarded(fn), f'step:{name}', context, directory),
            mesh, sync_batch_stats=spec.sync_batch_stats)
            for name, fn in setup.steps.items()}
        self.hooks = {name: step_lib.compile_hook(fn, mesh)
                      for name, fn in setup.hooks.items()}
        self.encode = step_lib.compile_encode(setup)

    def start(self, drawn):
        """The initial TrainState of ``drawn`` (a ``Drawn``)."""
        if not drawn.programs:
            return drawn.finish([])
        lowered = [program.lower(drawn.key) for program in drawn.programs]
        ahead = self._first_step(drawn.finish([p.out_info for p in lowered]))
        compiled = compiler.compile_all(lowered + ahead)
        return drawn.finish([program(drawn.key)
                             for program in compiled[:len(lowered)]])

    def _first_step(self, state) -> list:
        """[the first round's step lowered for ``state`` (abstract)], or []
        where its first batch would have to be decoded to know its shapes
        (or the step is not a jitted function: a test's wrapper).
        """
        if not isinstance(self.splits.train, data.ArrayDataset):
            return []
        # Its batches built inline: worker processes for one batch's
        # shapes would cost more than the overlap saves.
        inline = dataclasses.replace(self.spec, data_workers=0)
        plan = self.system.plan(inline, self.splits, 1)
        lower = getattr(self.steps[plan.stage], 'lower', None)
        if lower is None:
            return []
        rows = parallel.batch_sharding(self.mesh)
        batch = {k: jax.ShapeDtypeStruct(
            (self.spec.batch_size, *v.shape[1:]),
            jax.dtypes.canonicalize_dtype(v.dtype), sharding=rows)
            for k, v in next(iter(plan.batches(None, 0))).items()}
        # As ``parallel.replicate`` puts it: an array's type holds its mesh.
        whole = parallel.replicated(self.mesh)
        state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, weak_type=x.weak_type, sharding=whole), state)
        return [lower(state, batch, self.consts)]
