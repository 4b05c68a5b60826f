"""The train step: state, model, optimizer and one jitted update.

NNX modules are split into a static graphdef and state pytrees and merged
inside the step (``nnx.jit`` adds ~1.3 ms of Python per step on a CPU). The
step is a pure function of ONE global batch; ``nhl_jax.parallel`` explains
how the same step runs data-parallel.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from nhl_jax import data, evaluate, losses, models, parallel
from nhl_jax.nested import check_bits
from nhl_jax.objective import NHLObjective, nhl_objective
from nhl_jax.types import Array


class TrainState(NamedTuple):
    """Everything a train step reads and writes, as one pytree."""

    step: Array  # [] int32
    params: nnx.State  # trainable parameters (nnx.Param)
    rest: nnx.State  # other model variables (e.g. batch statistics)
    opt_state: optax.OptState
    loss_states: tuple[Any, ...]  # one base-loss state per length
    # The weighting rule's state (objective.WEIGHTINGS): counters of the
    # dominance rules, learned weights of uncertainty / GradNorm, ...
    weighting: Any
    rng: Array  # [2] uint32 raw key, folded with the step


class Setup(NamedTuple):
    """The static parts of a run, built once from the config."""

    graphdef: nnx.GraphDef
    objective: NHLObjective
    tx: optax.GradientTransformation
    bits: tuple[int, ...]
    compute_dtype: Any = jnp.float32  # forward-pass dtype (bfloat16: mixed)
    freeze_backbone: bool = False


def _adam(learning_rate: float, weight_decay: float):
    """Adam with coupled L2 weight decay (torch ``Adam(weight_decay=...)``)."""
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.adam(learning_rate))


def make_optimizer(config) -> optax.GradientTransformation:
    """Adam for the hash layer; the backbone gets its own rate or is frozen.

    ``config.backbone_learning_rate`` (None: ``learning_rate``) sets the
    backbone's rate, as when fine-tuning a pretrained network under a
    freshly initialised head; ``config.freeze_backbone`` leaves it
    untouched (no update, no optimizer state).
    """
    head = _adam(config.learning_rate, config.weight_decay)
    if config.freeze_backbone:
        body = optax.set_to_zero()
    else:
        rate = config.backbone_learning_rate or config.learning_rate
        body = _adam(rate, config.weight_decay)
    return optax.partition({'backbone': body, 'head': head}, part_labels)


def part_labels(params):
    """'backbone' or 'head' for every leaf, from its top-level module."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: str(path[0].key), params)


def _compute_params(params, dtype):
    """Mixed precision: float32 master weights, cast for the forward pass."""
    if dtype == jnp.float32:
        return params
    return jax.tree.map(
        lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating)
        else p, params)


def create_train_state(config, *, input_shape, num_train: int,
                       num_classes: int, bits=None) -> tuple[Setup, TrainState]:
    """Builds the model, optimizer, objective and initial state.

    Args:
      config: the run's ConfigDict (validated by ``check_config``).
      input_shape: (H, W, C) of the images.
      num_train: N, rows of the memory banks.
      num_classes: C.
      bits: code lengths; defaults to ``config.bits``.

    Returns:
      ``(setup, state)``.
    """
    bits = check_bits(tuple(config.bits) if bits is None else bits)
    model_key, loss_key, rng = jax.random.split(jax.random.key(config.seed), 3)
    rngs = nnx.Rngs(params=model_key)
    name = (config.backbone
            or data.get_spec(config.dataset, config.get('data_dir')).backbone)
    backbone = models.get_backbone(name, input_shape, rngs=rngs,
                                   **dict(config.get('backbone_kwargs', {})))
    if config.pretrained:
        models.load_pretrained(name, backbone, config.pretrained)
    model = models.HashNet(backbone, bits, rngs=rngs)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss = losses.get(config.method, **dict(config.loss_kwargs))
    objective = nhl_objective(
        loss, bits, distill_weight=config.distill_weight,
        weighting=config.weighting,
        weighting_kwargs=dict(config.get('weighting_kwargs') or {}),
        topology=config.topology)
    tx = make_optimizer(config)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        rest=rest,
        opt_state=tx.init(params),
        loss_states=objective.init(loss_key, num_train=num_train,
                                   num_classes=num_classes),
        # A stream apart from the loss states' split(loss_key, M) keys.
        weighting=objective.init_weighting(
            jax.random.fold_in(loss_key, len(bits))),
        rng=jax.random.key_data(rng),
    )
    setup = Setup(graphdef, objective, tx, bits,
                  compute_dtype=jnp.dtype(config.compute_dtype),
                  freeze_backbone=config.freeze_backbone)
    return setup, state


def train_step(state: TrainState, batch, *, setup: Setup):
    """One optimisation step on a batch ``{image, label, index}``.

    Args:
      state: the current ``TrainState``.
      batch: image [B, H, W, C] uint8, label [B, C] float, index [B] int.
      setup: the static ``Setup``.

    Returns:
      ``(new_state, metrics)``; metrics hold the total and the [M] per-length
      losses, distillation terms and weights.
    """

    def loss_fn(params, rest):
        # Fresh Variables for the batch statistics in this (grad) trace, so
        # that BatchNorm may update them: NNX refuses to mutate a Variable
        # created at another trace level.
        rest = jax.tree.map(lambda v: v, rest)
        model = nnx.merge(setup.graphdef,
                          _compute_params(params, setup.compute_dtype), rest)
        if setup.freeze_backbone:
            model.backbone.eval()  # frozen: running BN statistics too
            features = jax.lax.stop_gradient(model.features(batch['image']))
        else:
            features = model.features(batch['image'])
        h = model.head(features)
        # The losses, weighting and distillation always run in float32.
        features, h = features.astype(jnp.float32), h.astype(jnp.float32)
        total, (loss_states, metrics) = setup.objective.apply(
            state.loss_states, h, batch['label'], batch['index'],
            features=features, weighting_state=state.weighting)
        rest = nnx.state(model, nnx.Not(nnx.Param))
        return total, (loss_states, metrics, rest)

    (total, (loss_states, metrics, rest)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params, state.rest)
    updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
    new_state = state._replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        rest=rest,
        opt_state=opt_state,
        loss_states=loss_states,
        weighting=setup.objective.update_weighting(state.weighting, metrics),
    )
    return new_state, {
        'loss': total,
        'losses': metrics.losses,
        'distill': metrics.distill,
        'weights': metrics.weights,
        # Counts of non-finite losses per length, so the epoch summary can
        # name the first bad step and length without a per-step sync.
        'nonfinite': (~jnp.isfinite(metrics.losses)).astype(jnp.int32),
    }


def compile_train_step(setup: Setup, mesh=None):
    """``train_step`` jitted once for this setup, with the state donated.

    Args:
      setup: the static ``Setup``.
      mesh: optional ``parallel.make_mesh`` mesh: the batch is then sharded
        ``P('data')`` and the state and metrics stay replicated ``P()``.

    Returns:
      ``step(state, batch) -> (state, metrics)``.
    """
    fn = functools.partial(train_step, setup=setup)
    if mesh is None:
        return jax.jit(fn, donate_argnums=0)
    repl = parallel.replicated(mesh)
    return jax.jit(fn, in_shardings=(repl, parallel.batch_sharding(mesh)),
                   out_shardings=(repl, repl), donate_argnums=0)


def compile_encode(setup: Setup):
    """A jitted ``(params, rest, images) -> h [B, K_max]`` in eval mode."""

    @jax.jit
    def encode(params, rest, images):
        model = nnx.merge(setup.graphdef, params, rest)
        model.eval()
        return model(images)[1]

    return encode


def encode_dataset(encode, params, rest, ds, batch_size: int, *,
                   workers: int = 0) -> np.ndarray:
    """Continuous outputs [N, K_max] of a whole dataset, in order."""
    outputs = []
    for batch in data.eval_batches(ds, batch_size, workers=workers):
        h = np.asarray(encode(params, rest, batch['image']))
        outputs.append(h[: batch['valid']])
    return np.concatenate(outputs)


def evaluate_lengths(encode, params, rest, splits, bits, *, batch_size: int,
                     top_k=None, workers: int = 0) -> dict[str, float]:
    """mAP of every code length; each length's codes are prefixes.

    Query and database are only encoded here: evaluation never touches the
    training losses' memory banks.
    """
    q, db = (evaluate.sign_codes(encode_dataset(
        encode, params, rest, ds, batch_size, workers=workers))
        for ds in (splits.query, splits.database))
    return {
        str(b): float(evaluate.mean_average_precision(
            q[:, :b], splits.query.labels, db[:, :b], splits.database.labels,
            top_k=top_k))
        for b in bits
    }
