"""NHL: one nested hash layer, a base loss per length, weighting, distillation.

``--method=<base loss>`` (dpn, csq, ...) trains this system. A round is one
shuffled epoch of the training split; every step applies the NHL objective
(``nhl_jax.nhl.objective``: per-length base losses, the dominance-aware
weighting and the long-to-short distillation) to the nested layer's output.

References:
  NHL, arXiv 2412.08922.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nhl_jax import data, losses, models, parallel
from nhl_jax.hparams import check_hyperparameter
from nhl_jax.models.nested import check_bits
from nhl_jax.nhl.objective import nhl_objective
from nhl_jax.train import optim, traces
from nhl_jax.train import step as step_lib
from nhl_jax.train.system import (
    DataInfo,
    Drawn,
    RunSpec,
    System,
    per_length,
)


class NHLOptions(NamedTuple):
    """NHL's own fields of a run config."""

    loss: str  # a key of nhl_jax.losses.LOSSES
    loss_kwargs: dict
    weighting: str  # a key of nhl_jax.nhl.objective.WEIGHTINGS
    weighting_kwargs: dict
    distill_weight: float
    topology: str  # a key of nhl_jax.nhl.distill.TOPOLOGIES
    head_init: str = 'normal'  # a key of nhl_jax.models.nested.HEAD_INITS
    # Every length in one vmap where the loss allows (nhl_jax.nhl.stacked).
    stack_lengths: bool = False


class NHLExtra(NamedTuple):
    """NHL's fields of the train state."""

    loss_states: tuple[Any, ...]  # one base-loss state per length
    # The weighting rule's state (objective.WEIGHTINGS): counters of the
    # dominance rules, learned weights of uncertainty / GradNorm, ...
    weighting: Any


class LossParams(nnx.Module):
    """The trainable parameters of a base loss, one pytree per length.

    Attached to the ``HashNet`` as ``model.loss`` only for a loss with
    ``init_params`` (GreedyHash's classifier, DSDH's W, ...), so that the
    optimizer, the checkpoints, resume and data parallelism carry them like
    any network weight.
    """

    def __init__(self, per_length):
        self.per_length = nnx.List([nnx.data(jax.tree.map(nnx.Param, p))
                                    for p in per_length])

    def values(self) -> tuple:
        """The per-length parameters as float32 arrays."""
        return tuple(jax.tree.map(
            lambda v: v[...].astype(jnp.float32), p,
            is_leaf=lambda x: isinstance(x, nnx.Variable))
            for p in self.per_length)


def _loss_params(model):
    return model.loss.values() if hasattr(model, 'loss') else None


def _loss_fn(objective, freeze_backbone: bool):
    def loss_fn(model, state, batch, consts):
        del consts
        features = step_lib.hashnet_features(model, batch['image'],
                                             frozen=freeze_backbone)
        h = model.head(features)
        # The losses, weighting and distillation always run in float32.
        features, h = features.astype(jnp.float32), h.astype(jnp.float32)
        return objective.apply(
            state.extra.loss_states, h, batch['label'], batch['index'],
            features=features, weighting_state=state.extra.weighting,
            loss_params=_loss_params(model))
    return loss_fn


def _epoch_hook(objective, graphdef):
    """The loss's closed-form update after an epoch (``Round.end``)."""
    def hook(state, consts):
        del consts
        model = nnx.merge(graphdef, state.params, state.rest)
        states = objective.epoch_update(state.extra.loss_states,
                                        _loss_params(model))
        return state._replace(extra=state.extra._replace(
            loss_states=states)), {}
    return hook


def _update_extra(objective):
    def update(new, old, batch, aux, total):
        del batch
        loss_states, metrics = aux
        new = new._replace(extra=NHLExtra(
            loss_states,
            objective.update_weighting(old.extra.weighting, metrics)))
        extra = {}
        if hasattr(metrics.info, 'anti_domination'):  # the dominance rules
            # [M]: whether some longer length anti-dominated length k.
            extra['anti_domination'] = metrics.info.anti_domination.any(
                0).astype(jnp.float32)
        return new, {
            **extra,
            'loss': total,
            'losses': metrics.losses,
            'distill': metrics.distill,
            'weights': metrics.weights,
            # Counts of non-finite losses per length, so that the round can
            # name the first bad step and length without a per-step sync.
            'nonfinite': (~jnp.isfinite(metrics.losses)).astype(jnp.int32),
        }
    return update


def _encode(graphdef):
    def encode(params, rest, images):
        model = nnx.merge(graphdef, params, rest)
        model.eval()
        return model(images)[1]
    return encode


def _optimizer(spec: RunSpec, info: DataInfo):
    """The run's optimizer, its step decay on the head's and backbone's rate.

    Without decay, Adam gets the float rate: the optimizer every run used
    before the schedules existed, so those runs train bit for bit alike.
    """
    steps = data.steps_per_epoch(info.sizes['train'], spec.batch_size)

    def rate(value):
        return optim.step_decay(
            value, steps_per_epoch=steps, epochs=spec.epochs,
            at=spec.lr_decay_epochs, factor=spec.lr_decay_factor)

    backbone = spec.backbone_learning_rate
    return step_lib.make_optimizer(
        rate(spec.learning_rate), weight_decay=spec.weight_decay,
        optimizer=optim.factory(spec.optimizer, momentum=spec.momentum),
        backbone_learning_rate=None if backbone is None else rate(backbone),
        freeze_backbone=spec.freeze_backbone)


def create_train_state(spec: RunSpec, info: DataInfo, bits=None):
    """Builds NHL's model, optimizer, objective, steps and initial state.

    Args:
      spec: the resolved run.
      info: image shape, classes and split sizes (N = train rows sizes the
        memory banks).
      bits: lengths of this training run (default: ``spec.bits``).

    Returns:
      ``(setup, state)``; under a trace (``jax.eval_shape``) the state's
      programs are staged, not compiled.
    """
    setup, drawn = draw_train_state(spec, info, bits)
    return setup, drawn.run()


def draw_train_state(spec: RunSpec, info: DataInfo, bits=None):
    """``create_train_state`` with the state left as the programs that draw
    it: ``(setup, Drawn)`` (``nhl_jax.train.system.Drawn``).

    Two programs draw it: the network's and the optimizer's arrays, and
    the loss and weighting states. Op by op they would be dozens of small
    programs, each a compilation (or a persistent-cache load) at every
    start; as two, the trainer compiles them side by side with its first
    train step (``System.draw``, ``compiler.compile_all``).
    """
    bits = check_bits(tuple(spec.bits if bits is None else bits))
    opts = spec.options
    objective = nhl_objective(
        losses.get(opts.loss, **opts.loss_kwargs), bits,
        distill_weight=opts.distill_weight, weighting=opts.weighting,
        weighting_kwargs=opts.weighting_kwargs, topology=opts.topology,
        stack_lengths=opts.stack_lengths)
    tx = _optimizer(spec, info)
    if spec.pretrained:  # its weights are read from disk, op by op
        graphdef, state = _initial_state(spec, info, bits, objective, tx,
                                         spec.key())
        drawn = Drawn.ready(step_lib.distinct_buffers(state))
    else:
        graphdef, drawn = _drawn_state(spec, info, bits, objective, tx)
    train_step = step_lib.make_train_step(
        _loss_fn(objective, spec.freeze_backbone), graphdef=graphdef, tx=tx,
        update_extra=_update_extra(objective))
    hooks = ({} if objective.epoch_update is None
             else {'epoch': _epoch_hook(objective, graphdef)})
    setup = step_lib.Setup(graphdef, tx, bits, {'train': train_step}, hooks,
                           _encode(graphdef), static=objective)
    return setup, drawn


def _drawn_state(spec, info, bits, objective, tx):
    """``(graphdef, Drawn)``: the two programs of the state, their arrays
    those of ``_initial_state``."""
    context = traces.run_context(spec.config, bits, info)

    def network(key):
        graphdef, state = _network_state(spec, info, bits, objective, tx,
                                         key)
        return traces.Static(graphdef), state

    def extra(key):
        return _extra_state(info, bits, objective, key)

    extra, network = (
        jax.jit(traces.cached(fn, f'nhl:{name}', context,
                              traces.default_dir()))
        for name, fn in (('extra', extra), ('network', network)))
    key = spec.key()
    # Traced only; the programs' calls reuse the trace.
    static, _ = jax.eval_shape(network, key)

    def finish(outputs):
        loss_states, (_, state) = outputs
        return step_lib.distinct_buffers(state._replace(extra=loss_states))

    return static.value, Drawn((extra, network), key, finish)


def _initial_state(spec, info, bits, objective, tx, key):
    """``(graphdef, TrainState)``: the network and every initial array,
    drawn from the run's seed ``key``."""
    graphdef, state = _network_state(spec, info, bits, objective, tx, key)
    return graphdef, state._replace(extra=_extra_state(info, bits,
                                                       objective, key))


def _keys(key):
    """The run key's streams: (model, loss, step rng)."""
    return jax.random.split(key, 3)


def _network_state(spec, info, bits, objective, tx, key):
    """``(graphdef, TrainState)`` without its ``extra`` (None): the
    network's, the loss parameters' and the optimizer's arrays."""
    opts = spec.options
    model_key, loss_key, rng = _keys(key)
    rngs = nnx.Rngs(params=model_key)
    dtype = jnp.dtype(spec.compute_dtype)  # of every layer; weights float32
    backbone = models.get_backbone(spec.backbone, info.image_shape, rngs=rngs,
                                   dtype=dtype, **dict(spec.backbone_kwargs))
    if spec.pretrained:
        models.load_pretrained(spec.backbone, backbone, spec.pretrained)
    model = models.HashNet(backbone, bits, rngs=rngs, dtype=dtype,
                           head_init=opts.head_init)
    if objective.init_params is not None:
        # A stream apart from the loss states' and the weighting's keys.
        model.loss = LossParams(objective.init_params(
            jax.random.fold_in(loss_key, len(bits) + 1),
            num_classes=info.num_classes))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, step_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, rest=rest,
        opt_state=tx.init(params), rng=jax.random.key_data(rng), extra=None)


def _extra_state(info, bits, objective, key) -> NHLExtra:
    """The loss states and the weighting rule's state."""
    _, loss_key, _ = _keys(key)
    return NHLExtra(
        objective.init(loss_key, num_train=info.sizes['train'],
                       num_classes=info.num_classes),
        # A stream apart from the loss states' split(loss_key, M) keys.
        objective.init_weighting(jax.random.fold_in(loss_key, len(bits))))


class NHL(System):
    """The NHL system (module docstring)."""

    name = 'nhl'
    # The data reach its steps as arguments only (tests/train/test_traces.py
    # checks that the seed changes no program).
    cache_traces = True

    def check(self, config) -> None:
        # The objective is built after the data load: its weight's range
        # is checked now (check_config refused negative and NaN ones).
        """Raises ``UsageError`` for a distillation weight out of range."""
        check_hyperparameter('NHL', nhl_objective, 'distill_weight',
                             config.distill_weight, '--distill_weight')

    def options(self, config) -> NHLOptions:
        """The run's ``NHLOptions``: loss, weighting, distillation."""
        return NHLOptions(
            config.method, dict(config.loss_kwargs), config.weighting,
            dict(config.get('weighting_kwargs') or {}),
            float(config.distill_weight), config.topology,
            config.get('head_init', 'normal'),
            bool(config.get('stack_lengths', False)))

    def create(self, spec, info, bits):
        """``(Setup, TrainState)``: network, objective and steps."""
        return create_train_state(spec, info, bits)

    def draw(self, spec, info, bits):
        """``(Setup, Drawn)``: the state's two programs not yet run."""
        return draw_train_state(spec, info, bits)

    def plan(self, spec, splits, r):
        """Epoch ``r``, with the loss's epoch update as its end hook."""
        plan = super().plan(spec, splits, r)
        if losses.get(spec.options.loss).epoch_update is None:
            return plan
        return plan._replace(end='epoch')

    def round_info(self, setup, state):
        """The weighting's anti-domination counters, or None."""
        counters = getattr(state.extra.weighting, 'anti_domination', None)
        if counters is None:
            return None
        return np.asarray(parallel.to_host(counters)).tolist()

    def record(self, spec, bits, r, result):
        """Per-length losses, distillation, weights and anti-domination."""
        del spec, r
        record = {key: per_length(bits, result.means[key])
                  for key in ('losses', 'distill', 'weights')}
        if result.before is not None:
            record['anti_domination_rate'] = per_length(bits, (
                np.asarray(result.after) - np.asarray(result.before))
                / result.steps)
        return record

    def results(self, spec, info):
        """NHL's own fields of results.json."""
        del info
        opts = spec.options
        return {'loss': opts.loss, 'weighting': opts.weighting,
                'distill_weight': opts.distill_weight,
                'recipe': dict(spec.recipe)}

    def title(self, spec):
        """The final table's title: method, dataset, mode, weighting."""
        mode = 'single_length' if spec.single_length else 'nested'
        return (f'{spec.method} on {spec.dataset} ({mode}, '
                f'weighting={spec.options.weighting})')


SYSTEM = NHL()
