"""One train state, one optimizer factory, one step skeleton, one compile path.

Every system (NHL, MAH, ODH) trains through the same pure step::

    state, metrics = step(state, batch, consts)

built by ``make_train_step`` from the system's loss function. The skeleton
owns what used to be copied per system: merging the NNX graph with the
float32 parameters, fresh batch-statistic variables for the gradient trace,
``value_and_grad``, the optimizer update and the step counter. Mixed
precision is the modules' own business (each layer casts its float32
weights to its ``dtype`` per op, see ``nhl_jax.models``), so the gradients
and the optimizer see float32 only. ``compile_step`` jits it once with the
batch sharded ``P('data')`` over the mesh, the state and the run's
constants replicated, and the state donated (``nhl_jax.parallel``
explains why this is all data parallelism needs).
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from nhl_jax import compiler, parallel
from nhl_jax.models import batch_norm
from nhl_jax.types import Array


class TrainState(NamedTuple):
    """Everything a train step reads and writes, as one pytree."""

    step: Array  # [] int32 optimizer steps done (every stage)
    params: nnx.State  # trainable parameters (nnx.Param), float32
    rest: nnx.State  # other model variables (batch statistics, tables)
    opt_state: optax.OptState
    rng: Array  # [2] uint32 raw key of the system's random streams
    # The system's own fields (a NamedTuple or None): NHL's loss states and
    # weighting state, MAH's database codes V and Omega, ...
    extra: Any


class Setup(NamedTuple):
    """The static parts of a run that a system builds once."""

    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    bits: tuple[int, ...]
    # stage -> pure ``(state, batch, consts) -> (state, metrics)``.
    steps: dict[str, Callable]
    # name -> pure ``(state, consts) -> (state, metrics)`` (MAH's outer
    # iteration: 'begin' draws Omega, 'end' updates V).
    hooks: dict[str, Callable]
    # pure ``(params, rest, images [B, H, W, C] uint8) -> [B, W]`` codes
    # before the sign, in eval mode.
    encode: Callable
    # the system's own static parts (objective, hyperparameters, ...).
    static: Any = None


# Optimizer name -> optax factory of the learning rate (or schedule).
OPTIMIZERS = {
    'adam': optax.adam,
    'sgd': optax.sgd,  # the MAH code: torch SGD, no momentum
}


def part_labels(params):
    """'backbone' or 'head' for every leaf, from its top-level module.

    Everything outside the backbone (the hash head, a loss's own
    parameters) trains at the head's rate.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: ('backbone' if str(path[0].key) == 'backbone'
                         else 'head'), params)


def make_optimizer(learning_rate, *, weight_decay: float = 0.0,
                   optimizer='adam', backbone_learning_rate=None,
                   freeze_backbone: bool = False, groups: bool = True,
                   decay_mask=None) -> optax.GradientTransformation:
    """The optimizer of every system: torch-style coupled weight decay.

    ``optax.add_decayed_weights`` before the update is torch's
    ``Adam(weight_decay=...)`` / ``SGD(weight_decay=...)`` (L2 added to the
    gradient), which the NHL, MAH and ODH reference codes use.

    Args:
      learning_rate: a float or an optax schedule (the head's, and the
        backbone's unless ``backbone_learning_rate`` is given).
      weight_decay: coupled L2 weight.
      optimizer: a key of ``OPTIMIZERS``, or a factory of the rate.
      backbone_learning_rate: the backbone's own rate or schedule (None:
        ``learning_rate``), e.g. lower when fine-tuning a pretrained one.
      freeze_backbone: leave the backbone untouched (no update, no state).
      groups: split the parameters into 'backbone' and 'head'
        (``part_labels``); False: one optimizer over every parameter.
      decay_mask: optional mask (pytree or callable) of the parameters
        that get weight decay (``groups=False`` only).

    Returns:
      An ``optax.GradientTransformation``.
    """
    if callable(optimizer):  # nhl_jax.train.optim.factory(...)
        factory = optimizer
    elif optimizer not in OPTIMIZERS:
        raise ValueError(f'Unknown optimizer {optimizer!r}; choose one of '
                         f'{sorted(OPTIMIZERS)}.')
    else:
        factory = OPTIMIZERS[optimizer]

    def part(rate, mask=None):
        return optax.chain(optax.add_decayed_weights(weight_decay, mask=mask),
                           factory(rate))

    if not groups:
        return part(learning_rate, decay_mask)
    body = (optax.set_to_zero() if freeze_backbone
            else part(backbone_learning_rate or learning_rate))
    return optax.partition({'backbone': body, 'head': part(learning_rate)},
                           part_labels)


def staged(txs, active: int) -> optax.GradientTransformation:
    """One optimizer state for several stages; this one updates ``active``.

    ODH trains its warm-up and its main stages with separate Adam states and
    schedules: the state is the tuple of every stage's state, and the step
    of a stage updates only its own entry.
    """

    def init_fn(params):
        return tuple(tx.init(params) for tx in txs)

    def update_fn(updates, state, params=None):
        updates, new = txs[active].update(updates, state[active], params)
        return updates, (*state[:active], new, *state[active + 1:])

    return optax.GradientTransformation(init_fn, update_fn)


def distinct_buffers(tree):
    """``tree`` with every leaf that repeats an earlier leaf's buffer copied.

    The step donates its state, and XLA refuses to donate one buffer
    twice: a loss state may well hold the same array in two fields.
    """
    seen = set()

    def copy_repeat(x):
        if not isinstance(x, jax.Array) or id(x) not in seen:
            seen.add(id(x))
            return x
        return jnp.array(x, copy=True)

    return jax.tree.map(copy_repeat, tree)


def hashnet_features(model, images: Array, *, frozen: bool) -> Array:
    """``HashNet`` features [B, D]; a frozen backbone gets no gradient.

    A frozen backbone also runs in eval mode, so its running batch
    statistics stay as they are.
    """
    if frozen:
        model.backbone.eval()
        return jax.lax.stop_gradient(model.features(images))
    return model.features(images)


def make_train_step(loss_fn: Callable, *, graphdef: nnx.GraphDef,
                    tx: optax.GradientTransformation,
                    update_extra: Callable | None = None,
                    transform_grads: Callable | None = None) -> Callable:
    """The step skeleton around a system's loss.

    Args:
      loss_fn: ``(model, state, batch, consts) -> (total, aux)`` on the
        merged NNX model (train mode); ``total`` is the scalar to minimise.
      graphdef: the model's static graph.
      tx: the optimizer.
      update_extra: ``(new_state, old_state, batch, aux, total) -> (state,
        metrics)``, the system's own bookkeeping after the update (memory
        banks, weighting state, stored outputs). Default: metrics
        ``{'loss': total}``.
      transform_grads: optional ``grads -> grads`` before the optimizer
        (ODH's freezing and per-group clipping).

    Returns:
      A pure ``step(state, batch, consts) -> (state, metrics)``.
    """

    def step(state: TrainState, batch, consts):
        def objective(params, rest):
            # Fresh Variables for the batch statistics in this (grad) trace,
            # so that BatchNorm may update them: NNX refuses to mutate a
            # Variable created at another trace level.
            rest = jax.tree.map(lambda v: v, rest)
            model = nnx.merge(graphdef, params, rest)
            total, aux = loss_fn(model, state, batch, consts)
            return total, (aux, nnx.state(model, nnx.Not(nnx.Param)))

        (total, (aux, rest)), grads = jax.value_and_grad(
            objective, has_aux=True)(state.params, state.rest)
        if transform_grads is not None:
            grads = transform_grads(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = state._replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            rest=rest, opt_state=opt_state)
        if update_extra is None:
            return new, {'loss': total}
        return update_extra(new, state, batch, aux, total)

    return step


def compile_step(step: Callable, mesh=None, *,
                 sync_batch_stats: bool = True) -> Callable:
    """A step jitted once: batch ``P('data')``, the rest ``P()``, donated.

    Over several devices the step is traced under the mesh's abstract
    mesh, so that ``parallel.batch_shards()`` is their number there.

    Args:
      step: a pure ``(state, batch, consts) -> (state, metrics)``.
      mesh: optional ``parallel.make_mesh`` mesh (None: default device).
      sync_batch_stats: BatchNorm statistics over the global batch; False:
        over each device's shard (``models.batch_norm``), no all-reduce.

    Returns:
      The compiled ``step(state, batch, consts)``.
    """
    if mesh is None:
        return compiler.jit(step, donate_argnums=0)
    if not sync_batch_stats and mesh.devices.size > 1:
        step = _per_device_statistics(step, mesh.devices.size)
    if mesh.devices.size > 1:
        step = _traced_over(step, mesh)
    repl = parallel.replicated(mesh)
    return compiler.jit(step, mesh=mesh,
                        in_shardings=(repl, parallel.batch_sharding(mesh),
                                      repl),
                        out_shardings=(repl, repl), donate_argnums=0)


def _per_device_statistics(step: Callable, groups: int) -> Callable:
    """``step`` traced with BatchNorm statistics over ``groups`` shards."""
    @functools.wraps(step)
    def local(*args):
        with batch_norm.per_device_statistics(groups):
            return step(*args)

    return local


def _traced_over(step: Callable, mesh) -> Callable:
    """``step`` traced under ``mesh``'s abstract mesh.

    So that ``parallel.batch_shards()`` tells the objective, at trace
    time, that its batch is split: the weighting's products and the
    distillation then sum rows per device and all-reduce [M, D, K] and
    [K, K] partial sums instead of gathering features, output gradients
    and codes (issue 32). One device traces outside it, as before.
    """
    @functools.wraps(step)
    def traced(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return step(*args)

    return traced


def compile_hook(hook: Callable, mesh=None) -> Callable:
    """A hook ``(state, consts) -> (state, metrics)`` jitted, state donated."""
    if mesh is None:
        return compiler.jit(hook, donate_argnums=0)
    repl = parallel.replicated(mesh)
    return compiler.jit(hook, mesh=mesh, in_shardings=(repl, repl),
                        out_shardings=(repl, repl), donate_argnums=0)


def compile_encode(setup: Setup) -> Callable:
    """``setup.encode`` jitted: ``(params, rest, images) -> [B, W]``.

    ``nhl_jax.train.evaluation.encode_outputs(..., mesh=)`` shards its batches
    over the mesh, so this one function serves one device and many.
    """
    # Plain jax.jit: it runs nested in evaluation's jit, which carries the
    # compiler options (JAX takes them on top-level jits only).
    return jax.jit(setup.encode)
