"""MAH: multi-head asymmetric hashing with learned database codes V.

``--method=mah --head=cascade --bits=4,8,16``. A round is one outer
iteration: draw Omega (the ``begin`` hook), train ``mah.epochs`` epochs on
it in Omega's order with V fixed, then update every head's V by one DCC
sweep (the ``end`` hook).

**Protocol** (ADSH's, AAAI 2018). The items that own a code V are the rows
of one split, ``mah.v_split``: ``'database'`` (default, the ADSH/MAH
protocol: V covers the database split and Omega is drawn from it; the
``train`` split is not used; cifar10-1 gives exactly the MAH CIFAR-10 setup)
or ``'train'`` (V over the training split only).

Evaluators: ``asymmetric`` (MAH's: sign(network(query)) against the learned
V, which is what results.json's ``map`` reports and what encode.py exports
as the database) and ``symmetric`` (sign(network(query)) against
sign(network(database)), comparable with NHL; ``map_symmetric``).

References:
  MAH, arXiv 1809.09329; ADSH, Jiang and Li, AAAI 2018.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nhl_jax import data, models, parallel
from nhl_jax.mah import config as mah_config
from nhl_jax.mah import step as mah_step
from nhl_jax.models import heads
from nhl_jax.models.nested import check_bits
from nhl_jax.train import evaluation
from nhl_jax.train import step as step_lib
from nhl_jax.train.system import (
    DataInfo,
    Round,
    RunSpec,
    Schedule,
    System,
    per_length,
)


class MAHOptions(NamedTuple):
    """MAH's own fields of a run config (``nhl_jax.mah.config``)."""

    head: str
    outer_iterations: int
    epochs: int
    num_samples: int
    gamma: float
    weights: tuple[float, ...]  # resolved: one per length, shortest first
    optimizer: str
    learning_rate: float
    weight_decay: float
    lr_decay_after: tuple[int, ...]
    lr_decay_factor: float
    eval_every: int
    v_split: str


def _vsplit(spec, splits):
    return getattr(splits, spec.options.v_split)


def _steps_per_outer(spec) -> int:
    opts = spec.options
    return opts.epochs * data.steps_per_epoch(
        opts.num_samples, spec.batch_size, drop_remainder=False)


def _encode(graphdef):
    def encode(params, rest, images):
        model = nnx.merge(graphdef, params, rest)
        model.eval()
        return mah_step.encode_codes(model, images)
    return encode


def create_train_state(spec: RunSpec, info: DataInfo, bits=None):
    """Builds the HashNet with MAH heads, its steps and the initial state.

    V starts at zero (``adsh.init_codes``); N is the size of the V split.
    """
    bits = check_bits(tuple(spec.bits if bits is None else bits))
    opts = spec.options
    seed = spec.key()
    dtype = jnp.dtype(spec.compute_dtype)  # of every layer; weights float32
    backbone = models.get_backbone(
        spec.backbone, info.image_shape,
        # The heads draw from their own key (below).
        rngs=nnx.Rngs(params=jax.random.fold_in(seed, 1)), dtype=dtype,
        **dict(spec.backbone_kwargs))
    if spec.pretrained:
        models.load_pretrained(spec.backbone, backbone, spec.pretrained)
    tx = mah_step.make_optimizer(
        opts.optimizer, learning_rate=opts.learning_rate,
        weight_decay=opts.weight_decay,
        steps_per_outer=_steps_per_outer(spec),
        decay_after=opts.lr_decay_after, decay_factor=opts.lr_decay_factor,
        backbone_learning_rate=spec.backbone_learning_rate,
        freeze_backbone=spec.freeze_backbone)
    head_key, rng = jax.random.split(seed)
    model = models.HashNet(backbone, bits, head=opts.head,
                           rngs=nnx.Rngs(params=head_key), dtype=dtype)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    static = mah_step.MAHStatic(opts.weights, opts.gamma, opts.num_samples)
    state = step_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, rest=rest,
        opt_state=tx.init(params), rng=jax.random.key_data(rng),
        extra=mah_step.init_extra(
            bits, num_database=info.sizes[opts.v_split],
            num_samples=opts.num_samples))
    train_step = step_lib.make_train_step(
        mah_step.loss_fn(static, freeze_backbone=spec.freeze_backbone),
        graphdef=graphdef, tx=tx, update_extra=mah_step.store_queries)
    hooks = {
        'begin': lambda s, y: mah_step.start_outer(
            s, y, num_samples=opts.num_samples),
        'end': lambda s, y: mah_step.finish_outer(s, y, gamma=opts.gamma),
    }
    setup = step_lib.Setup(graphdef, tx, bits, {'outer': train_step}, hooks,
                           _encode(graphdef), static=static)
    return setup, state


class MAH(System):
    """The MAH system (module docstring)."""

    name = 'mah'
    evaluators = ('asymmetric', 'symmetric')
    heads = tuple(heads.HEADS)
    single_length = False  # its heads are trained jointly
    round_name = 'outer iteration'

    def check(self, config):
        """Raises ``UsageError`` for a bad ``config.mah`` field."""
        mah_config.check(config)

    def options(self, config) -> MAHOptions:
        """The run's ``MAHOptions``, read from ``config``."""
        mah = config.mah
        return MAHOptions(
            head=config.head, outer_iterations=mah.outer_iterations,
            epochs=mah.epochs, num_samples=mah.num_samples,
            gamma=float(mah.gamma),
            weights=mah_config.head_weights(mah, tuple(config.bits)),
            optimizer=mah.optimizer, learning_rate=float(mah.learning_rate),
            weight_decay=float(mah.weight_decay),
            lr_decay_after=tuple(int(d) for d in mah.lr_decay_after),
            lr_decay_factor=float(mah.lr_decay_factor),
            eval_every=mah.eval_every, v_split=mah.v_split)

    def check_data(self, spec, splits):
        """Raises ``UsageError`` if Omega exceeds V's split."""
        mah_config.check_splits(spec, splits)

    def schedule(self, spec):
        """Outer iterations as rounds, checkpointed after each."""
        opts = spec.options
        return Schedule(opts.outer_iterations, opts.eval_every,
                        checkpoint_every=1)

    def create(self, spec, info, bits):
        """``(Setup, TrainState)``: the heads, their steps and V."""
        return create_train_state(spec, info, bits)

    def layout(self, bits):
        """One head per length: the codes are not nested."""
        return evaluation.CodeLayout(tuple(bits), nested=False)

    def consts(self, spec, splits):
        """The labels of V's split, replicated for every step."""
        return jnp.asarray(_vsplit(spec, splits).labels)

    def plan(self, spec, splits, r):
        """Outer iteration ``r``: ``mah.epochs`` epochs over Omega."""
        del r
        vsplit, opts = _vsplit(spec, splits), spec.options
        rows = parallel.process_slice(spec.batch_size)

        def batches(state, start):
            omega = np.asarray(parallel.to_host(state.extra.omega))
            per_epoch = _steps_per_outer(spec) // opts.epochs
            for epoch in range(opts.epochs):
                # A resumed iteration decodes none of its finished batches.
                yield from mah_step.omega_batches(
                    vsplit, omega, spec.batch_size,
                    workers=spec.data_workers, rows=rows,
                    start=max(start - epoch * per_epoch, 0))

        return Round('outer', _steps_per_outer(spec), batches,
                     begin='begin', end='end')

    def record(self, spec, bits, r, result):
        """Per-length losses and objective of outer iteration ``r``."""
        return {'outer_iteration': r,
                'losses': per_length(bits, result.means['losses']),
                'objective': per_length(bits,
                                        result.hooks['objective'])}

    def learned_codes(self, state, spec, splits):
        """The learned database codes V per head and their labels."""
        codes = parallel.to_host(state.extra.codes)
        return tuple(codes), _vsplit(spec, splits).labels

    def learned_split(self, spec):
        """The split whose rows own V (``mah.v_split``)."""
        return spec.options.v_split

    def snapshot(self, params, rest, extra, k):
        """Length ``k``'s best model, with its V."""
        return {'params': params, 'rest': rest, 'codes': extra.codes[k]}

    def results(self, spec, info):
        """MAH's own fields of results.json."""
        return {'head': spec.options.head, 'v_split': spec.options.v_split,
                'num_database_codes': info.sizes[spec.options.v_split],
                'mah': spec.options._asdict()}

    def title(self, spec):
        """The final table's title: heads, dataset and V's split."""
        return (f'mah ({spec.options.head} heads) on {spec.dataset}, V over '
                f'the {spec.options.v_split} split')


SYSTEM = MAH()
