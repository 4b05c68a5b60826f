"""The ``System`` interface: what a training system owns, and nothing else.

The trainer (``nhl_jax.train``) owns the run: the workdir policy, the
round loop with its data parallelism, SIGTERM checkpoints and resume, the
non-finite guard, the evaluation schedule with best parameters
per length and patience, orbax checkpoints, metrics.jsonl, results.json,
the final table and the plots. A system supplies its own parts:

- ``check`` / ``options``: validate and resolve its own config fields;
- ``create``: its model, optimizer, state and pure steps (``Setup``);
  ``draw``: the same, with the state's programs left for the trainer to
  compile beside the train step's;
- ``plan``: what round ``r`` trains (stage, batches, hooks): NHL an epoch,
  ODH an epoch of its warm-up / exploration / aggregation stage, MAH one
  outer iteration (draw Omega, train on it, update V);
- ``schedule``: how many rounds, when to evaluate and checkpoint;
- ``evaluators`` and ``learned_codes``: how it is scored;
- ``record`` / ``results``: the fields it logs and reports.

The contract a system keeps, which the trainer relies on:

1. ``create(spec, info, bits)`` returns ``(Setup, TrainState)``.
   ``Setup.steps`` maps every stage name that ``plan`` can return
   (``Round.stage``: free strings, e.g. 'train', 'warmup', 'outer') to a
   pure ``step(state, batch, consts) -> (state, metrics)``;
   ``Setup.hooks`` maps every name a ``Round`` gives as ``begin`` or
   ``end`` to a pure ``hook(state, consts) -> (state, metrics)``.
2. Every step's ``metrics`` hold ``'loss'`` (a scalar: the progress line
   and metrics.jsonl's ``loss``) and ``'nonfinite'`` (int32 counts, one
   per length or a scalar: a non-zero count stops the run with a
   resumable checkpoint). The trainer adds ``'nonfinite_params'``. Every
   other entry is averaged over the round and handed to ``record``
   (``RoundResult.means``); the default ``record`` reads ``'losses'``
   ([M], one per length). A hook may return ``'nonfinite'`` too.
3. ``Setup.encode(params, rest, images)`` maps uint8 images [B, H, W, C]
   to the continuous outputs [B, W] before the sign; ``layout(bits)``
   says which columns hold each length's code.
4. ``evaluators`` are names of ``nhl_jax.train.evaluation.EVALUATORS``;
   the first is the run's ``map`` (best parameters, patience).
5. ``check`` and ``options`` are the only methods that read the
   ConfigDict; everything else takes the resolved ``RunSpec``.

A system is registered by name in ``nhl_jax.cli.registry.SYSTEMS``; the
trainer never names one.
"""

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from nhl_jax import data, parallel
from nhl_jax.train import evaluation


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A validated config, resolved once; nothing below reads a ConfigDict.

    Defaults that depend on the dataset (backbone, top_k) are resolved here
    and nowhere else.
    """

    system: str  # a key of nhl_jax.cli.registry.SYSTEMS
    method: str  # what the user asked for: a base loss, 'mah' or 'odh'
    dataset: str
    data_dir: str | None
    backbone: str
    backbone_kwargs: Mapping[str, Any]
    pretrained: str | None
    bits: tuple[int, ...]
    single_length: bool
    seed: int
    batch_size: int
    eval_batch_size: int
    # None: automatic (nhl_jax.data.pipeline); in ``fit``, its WorkerPool
    data_workers: Any
    devices: int | None
    sync_batch_stats: bool  # False: BatchNorm statistics per device
    epochs: int
    eval_every: int
    patience: int
    top_k: int | None
    learning_rate: float
    weight_decay: float
    backbone_learning_rate: float | None
    optimizer: str  # a name of nhl_jax.train.optim.OPTIMIZERS (NHL only)
    momentum: float  # of 'sgd'
    # Epochs after which the rate is multiplied by lr_decay_factor (NHL).
    lr_decay_epochs: tuple[int, ...]
    lr_decay_factor: float
    # The resolved training recipe: its name and the fields it sets
    # (nhl_jax.cli.recipes), as results.json records it.
    recipe: Mapping[str, Any]
    freeze_backbone: bool
    compute_dtype: str
    log_every: int | None  # steps between step-scalar records (None: off)
    writers: tuple[str, ...]  # besides metrics.jsonl ('tensorboard', ...)
    plots: bool  # draw workdir/plots at the end
    profile_steps: tuple[int, int] | None  # (start, stop) global steps
    options: Any  # the system's own resolved options (a NamedTuple)
    config: Mapping[str, Any]  # the config as JSON (config.json)

    def key(self) -> jax.Array:
        """The run's PRNG key, from all 64 bits of ``seed``.

        ``jax.random.key(seed)`` keeps only the low 32 bits of a seed
        unless x64 is on, so seeds 5 and 2**32 + 5 drew the same network
        and states. This is the key it gives with x64 on (high word, low
        word), the same key for every seed below 2**32, made on the host
        (no program to compile or load).
        """
        if jax.config.jax_default_prng_impl != 'threefry2x32':
            return jax.random.key(self.seed)  # that generator's own seeding
        words = np.array([self.seed >> 32, self.seed & 0xFFFFFFFF], np.uint32)
        return jax.random.wrap_key_data(words)


class DataInfo(NamedTuple):
    """The shapes a system needs to build its state."""

    image_shape: tuple[int, ...]  # (H, W, C)
    num_classes: int  # C
    sizes: Mapping[str, int]  # rows of each split: train, query, database

    @classmethod
    def of(cls, splits: data.Splits) -> 'DataInfo':
        """The info of loaded splits."""
        return cls(tuple(data.image_shape(splits.train)),
                   int(splits.train.labels.shape[1]),
                   {name: len(getattr(splits, name).labels)
                    for name in data.Splits._fields})


class Schedule(NamedTuple):
    """Rounds of a run and when they are evaluated and checkpointed.

    Round r (1-based) is evaluated when r > ``offset`` and ``r - offset``
    is a multiple of ``eval_every``, and at the last round; it is
    checkpointed after every evaluation, after round ``offset`` (the end of
    a warm-up) and every ``checkpoint_every`` rounds.
    """

    rounds: int
    eval_every: int
    offset: int = 0
    checkpoint_every: int | None = None

    def evaluates(self, r: int) -> bool:
        """Whether round ``r`` ends with an evaluation."""
        main = r - self.offset
        return main > 0 and (main % self.eval_every == 0 or r == self.rounds)

    def checkpoints(self, r: int) -> bool:
        """Whether round ``r`` ends with a checkpoint."""
        every = self.checkpoint_every
        return (self.evaluates(r) or (self.offset > 0 and r == self.offset)
                or bool(every and r % every == 0))


class Round(NamedTuple):
    """What one round trains.

    Attributes:
      stage: the name logged, and the key of ``Setup.steps``.
      num_batches: batches in the round.
      batches: ``(state, start) -> iterator`` of this process's rows of
        each global batch from batch ``start`` on (resuming mid-round);
        ``state`` is the state after ``begin``.
      begin: key of ``Setup.hooks`` run before the first batch, or None.
      end: key of ``Setup.hooks`` run after the last batch, or None.
    """

    stage: str
    num_batches: int
    batches: Callable[[Any, int], Iterator[dict[str, np.ndarray]]]
    begin: str | None = None
    end: str | None = None


class Drawn(NamedTuple):
    """An initial state as the programs that draw it, not yet run.

    ``System.draw`` returns it so that the trainer can compile these
    programs together with the train step's (``compiler.compile_all``):
    at a start, nothing else can overlap their compilation or their load
    from the persistent cache.

    Attributes:
      programs: jitted functions of ``key``, each drawing part of the state.
      key: their argument (the run's key).
      finish: ``finish(outputs)``: the TrainState from the programs'
        outputs, in order; given their ``jax.ShapeDtypeStruct`` outputs
        (``Lowered.out_info``) it gives the state's.
    """

    programs: tuple[Callable, ...]
    key: Any
    finish: Callable[[Sequence[Any]], Any]

    @classmethod
    def ready(cls, state) -> 'Drawn':
        """A state already drawn: no programs."""
        return cls((), None, lambda outputs: state)

    def run(self):
        """The TrainState: each program called (staged under a trace)."""
        return self.finish([program(self.key) for program in self.programs])


class RoundResult(NamedTuple):
    """What a finished round hands to ``System.record``.

    Attributes:
      means: per-step means of the step metrics (host arrays).
      steps: steps of the round.
      before: ``System.round_info`` at the start of the round.
      after: ``System.round_info`` at its end.
      hooks: the metrics the round's hooks returned (host arrays).
    """

    means: Mapping[str, Any]
    steps: int
    before: Any
    after: Any
    hooks: Mapping[str, Any]


def per_length(bits, values) -> dict[str, float]:
    """{str(b): float} of one value per length."""
    return {str(b): float(v) for b, v in zip(bits, np.asarray(values))}


def epoch_batches(spec: RunSpec, ds, epoch: int):
    """The round's batches of one shuffled epoch of ``ds`` (every system)."""
    def batches(state, start):
        del state
        return data.train_batches(
            ds, spec.batch_size, seed=spec.seed, epoch=epoch,
            rows=parallel.process_slice(spec.batch_size), start=start,
            workers=spec.data_workers)
    return batches


class System:
    """Base class of a training system; the defaults are NHL's.

    Subclasses override what differs. Every method takes explicit arguments
    (a ``RunSpec``, a ``Setup``, states); only ``check`` and ``options``
    read the ConfigDict.
    """

    name = ''
    # Evaluators by name (nhl_jax.train.evaluation.EVALUATORS); the first is the
    # run's ``map``, selects the best parameters and drives patience; the
    # tie-aware mAP (expected over random orders of equal distances) is
    # reported beside it.
    evaluators: tuple[str, ...] = ('symmetric', 'symmetric_expected')
    single_length = True  # whether lengths may be trained one per run
    # Whether its steps' programs depend only on the config (less
    # ``nhl_jax.train.traces.UNTRACED``), the data's shapes and the steps'
    # arguments, so that later runs may call them as saved
    # (``nhl_jax.train.traces``).
    cache_traces = False
    heads: tuple[str, ...] = ('nested',)  # the heads it can train
    round_name = 'epoch'  # what a round is called in progress lines

    def check(self, config) -> None:
        """Raises ``UsageError`` for a bad system field (before any work)."""
        del config

    def options(self, config) -> Any:
        """The system's own fields of ``config`` as explicit options."""
        del config

    def check_data(self, spec: RunSpec, splits: data.Splits) -> None:
        """Raises ``UsageError`` if the loaded data cannot train this run."""
        del spec, splits

    def schedule(self, spec: RunSpec) -> Schedule:
        """Rounds and their evaluation / checkpoint points."""
        return Schedule(spec.epochs, spec.eval_every)

    def create(self, spec: RunSpec, info: DataInfo, bits):
        """``(Setup, TrainState)`` of a run of lengths ``bits``."""
        raise NotImplementedError

    def draw(self, spec: RunSpec, info: DataInfo, bits):
        """``(Setup, Drawn)``: ``create`` with its state still to be drawn
        (by default already drawn, by ``create``)."""
        setup, state = self.create(spec, info, bits)
        return setup, Drawn.ready(state)

    def layout(self, bits) -> evaluation.CodeLayout:
        """Where each length's code is in the encoder output."""
        return evaluation.CodeLayout(tuple(bits))

    def consts(self, spec: RunSpec, splits: data.Splits) -> Any:
        """Replicated arrays every step and hook reads (None: none)."""
        del spec, splits

    def plan(self, spec: RunSpec, splits: data.Splits, r: int) -> Round:
        """What round ``r`` (1-based) trains."""
        return Round('train', data.steps_per_epoch(
            len(splits.train.labels), spec.batch_size),
            epoch_batches(spec, splits.train, r))

    def round_info(self, setup, state) -> Any:
        """JSON-able host value taken at the start of a round (or None)."""
        del setup, state

    def record(self, spec: RunSpec, bits, r: int,
               result: 'RoundResult') -> dict:
        """The system's fields of round ``r``'s metrics.jsonl record."""
        del spec, r
        return {'losses': per_length(bits, result.means['losses'])}

    def learned_codes(self, state, spec: RunSpec, splits: data.Splits):
        """``(codes per length, labels)`` of learned database codes, or None."""
        del state, spec, splits

    def learned_split(self, spec: RunSpec) -> str | None:
        """The split whose rows own learned database codes, or None."""
        del spec

    def snapshot(self, params, rest, extra, k: int) -> dict:
        """What is kept as length ``k``'s best model (host pytrees)."""
        del extra, k
        return {'params': params, 'rest': rest}

    def results(self, spec: RunSpec, info: DataInfo) -> dict:
        """The system's own fields of results.json."""
        del spec, info
        return {}

    def title(self, spec: RunSpec) -> str:
        """The final table's title (before the mAP cut-off)."""
        return f'{spec.method} on {spec.dataset}'
