"""ODH: one-bit deep hashing with semantic centres and a two-stage schedule.

``--method=odh --backbone=bnn_cnn`` (or ``--config=odh``). Rounds are epochs
counted globally: rounds 1..W train the warm-up classifier
(``odh.warmup_epochs``), then ``epochs`` main epochs follow; main epoch e
(1-based) is stage 1 (exploration) while e <= ``odh.transition_epoch`` and
stage 2 (aggregation) after, i.e. the ODH code's ``epoch <
transition_epoch`` with its 0-based epochs. Evaluation counts main epochs
(every ``eval_every`` and the last); a checkpoint is also written at the end
of the warm-up. Codes come from the (binary) hasher network.

References:
  ODH, ACM MM 2024.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nhl_jax import compiler, data, models, parallel
from nhl_jax.data import augment as augment_lib
from nhl_jax.models.nested import check_bits
from nhl_jax.odh import config as odh_config
from nhl_jax.odh import data as odh_data
from nhl_jax.odh import model as model_lib
from nhl_jax.odh import step as odh_step
from nhl_jax.train import step as step_lib
from nhl_jax.train.system import (
    DataInfo,
    Round,
    RunSpec,
    Schedule,
    System,
    epoch_batches,
    per_length,
)


class ODHOptions(NamedTuple):
    """ODH's own fields of a run config (nhl_jax/cli/configs/default.py)."""

    warmup_epochs: int
    transition_epoch: int
    centers: str
    learn_centers: bool
    center_hidden: int | None
    classifier_backbone: str  # resolved: the dataset's backbone by default
    classifier_kwargs: dict
    classifier_pretrained: str | None
    hash_bn: bool
    temperature: float
    ce_weight_explore: float
    asd_weight: float
    ce_weight_aggregate: float
    n_positive: int
    max_norm: float
    weak_strength: float
    crop_scale: tuple[float, float]
    flip_prob: float


def stage_of(r: int, opts: ODHOptions) -> str:
    """The stage of global epoch ``r`` (1-based)."""
    main = r - opts.warmup_epochs
    if main <= 0:
        return 'warmup'
    return 'exploration' if main <= opts.transition_epoch else 'aggregation'


def _hyper(opts: ODHOptions) -> odh_step.Hyper:
    strong = augment_lib.AugmentParams(crop_scale=opts.crop_scale,
                                       flip_prob=opts.flip_prob)
    return odh_step.Hyper(
        temperature=opts.temperature,
        ce_weight_explore=opts.ce_weight_explore,
        asd_weight=opts.asd_weight,
        ce_weight_aggregate=opts.ce_weight_aggregate,
        n_positive=opts.n_positive, learn_centers=opts.learn_centers,
        strong=strong, weak_strength=opts.weak_strength)


def _steps_in(stage: str, spec, n: int) -> int:
    if stage == 'aggregation':
        return odh_data.num_group_batches(
            n, spec.batch_size // spec.options.n_positive)
    return data.steps_per_epoch(n, spec.batch_size)


def _optimizers(spec, num_train: int):
    opts = spec.options
    counts = dict.fromkeys(odh_step.STAGES, 0)
    for r in range(1, opts.warmup_epochs + spec.epochs + 1):
        stage = stage_of(r, opts)
        counts[stage] += _steps_in(stage, spec, num_train)
    return odh_step.make_optimizers(
        learning_rate=spec.learning_rate, weight_decay=spec.weight_decay,
        warmup_steps=counts['warmup'],
        main_steps=counts['exploration'] + counts['aggregation'],
        learn_centers=opts.learn_centers)


def create_train_state(spec: RunSpec, info: DataInfo, bits=None):
    """Builds ODH's three networks, two optimizers, steps and state."""
    bits = check_bits(tuple(spec.bits if bits is None else bits))
    opts = spec.options
    model_key, rng = jax.random.split(spec.key())
    model = model_lib.build_model(
        backbone=spec.backbone, classifier_backbone=opts.classifier_backbone,
        input_shape=info.image_shape, num_classes=info.num_classes,
        bits=bits, centers=opts.centers, center_hidden=opts.center_hidden,
        hash_bn=opts.hash_bn, backbone_kwargs=spec.backbone_kwargs,
        classifier_kwargs=opts.classifier_kwargs,
        dtype=jnp.dtype(spec.compute_dtype), rngs=nnx.Rngs(params=model_key))
    if opts.classifier_pretrained:  # the ODH code's ImageNet ResNet-50
        models.load_pretrained(opts.classifier_backbone,
                               model.classifier.backbone,
                               opts.classifier_pretrained)
    txs = _optimizers(spec, info.sizes['train'])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    hyper = _hyper(opts)
    steps = {}
    for i, stage in enumerate(odh_step.STAGES):
        tx = step_lib.staged(txs, min(i, 1))  # warm-up: 0, main stages: 1
        steps[stage] = step_lib.make_train_step(
            odh_step.loss_fn(stage, bits, hyper), graphdef=graphdef, tx=tx,
            update_extra=odh_step.step_metrics,
            transform_grads=odh_step.grad_transform(stage, hyper,
                                                    opts.max_norm))
    tx = step_lib.staged(txs, 0)
    state = step_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, rest=rest,
        opt_state=tx.init(params), rng=jax.random.key_data(rng), extra=None)
    tables = compiler.jit(odh_step.center_tables(graphdef))
    setup = step_lib.Setup(graphdef, tx, bits, steps, {},
                           odh_step.encode(graphdef), static=tables)
    return setup, state


class ODH(System):
    """The ODH system (module docstring)."""

    name = 'odh'

    def check(self, config):
        """Raises ``UsageError`` for a bad ``config.odh`` field."""
        odh_config.check(config)

    def options(self, config) -> ODHOptions:
        """The run's ``ODHOptions``, read from ``config``."""
        odh = config.odh
        values = {name: odh[name] for name in ODHOptions._fields}
        values.update(
            classifier_backbone=odh_config.classifier_name(config),
            classifier_kwargs=dict(odh.classifier_kwargs),
            crop_scale=tuple(float(v) for v in odh.crop_scale),
            flip_prob=float(odh.flip_prob))
        return ODHOptions(**values)

    def check_data(self, spec, splits):
        """Raises ``UsageError`` if a class has too few images."""
        odh_config.check_classes(splits, spec.options.n_positive)

    def schedule(self, spec):
        """Warm-up epochs, then the main epochs (numbered after them)."""
        offset = spec.options.warmup_epochs
        return Schedule(offset + spec.epochs, spec.eval_every,
                        offset=offset)

    def create(self, spec, info, bits):
        """``(Setup, TrainState)``: classifier, hasher, centres, steps."""
        return create_train_state(spec, info, bits)

    def plan(self, spec, splits, r):
        """Epoch ``r`` of its stage: warm-up, exploration or aggregation."""
        stage, ds = stage_of(r, spec.options), splits.train
        n_positive = spec.options.n_positive
        if stage != 'aggregation':
            batches = epoch_batches(spec, ds, r)
        else:
            def batches(state, start):
                del state
                return odh_data.group_batches(
                    ds, spec.batch_size // n_positive, n_positive=n_positive,
                    seed=spec.seed, epoch=r,
                    rows=parallel.process_slice(spec.batch_size), start=start,
                    workers=spec.data_workers)
        return Round(stage, _steps_in(stage, spec, len(ds.labels)),
                     batches)

    def round_info(self, setup, state):
        """The hash-centre tables at the start of the epoch."""
        tables = parallel.to_host(setup.static(state.params, state.rest))
        return [np.asarray(t).tolist() for t in tables]

    def record(self, spec, bits, r, result):
        """Per-length loss terms and centre bits flipped in epoch ``r``."""
        means = result.means
        return {
            'main_epoch': max(r - spec.options.warmup_epochs, 0),
            'hash_center': per_length(bits, means['hc']),
            'asd': per_length(bits, means['asd']),
            'ce': float(means['ce']),
            # Centre bits that flipped during the epoch, per length.
            'center_flips': per_length(bits, [
                int((np.asarray(a) != np.asarray(b)).sum())
                for a, b in zip(result.before, result.after)]),
        }

    def results(self, spec, info):
        """ODH's own fields of results.json."""
        del info
        opts = spec.options
        return {'classifier_backbone': opts.classifier_backbone,
                'centers': opts.centers,
                'transition_epoch': opts.transition_epoch,
                'warmup_epochs': opts.warmup_epochs}

    def title(self, spec):
        """The final table's title: centres, dataset and backbone."""
        return (f'odh ({spec.options.centers} centres) on {spec.dataset}, '
                f'backbone {spec.backbone}')


SYSTEM = ODH()
