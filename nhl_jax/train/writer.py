"""One metric-writer seam: metrics.jsonl and, if installed, TensorBoard.

The loop hands every scalar to ``MetricWriter``: a record per round (as
before), and every ``log_every`` steps the means of the step metrics over
the last interval (``kind: 'step'`` records). With the ``tensorboard``
extra installed the same scalars also go to TensorBoard event files in
``workdir/tensorboard``, written through tensorboard's own TF-free event
writer (``tensorboard --logdir=workdir/tensorboard``). Only process 0
writes; the others get a writer that drops everything.

Step scalars are fetched from the device one interval late
(``StepLogger``), so logging never makes the host wait for the step in
flight; ``read_finished`` is the one read the train loop's transfer guard
lets through.
"""

import importlib.util
import os
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from nhl_jax import parallel, runlog
from nhl_jax.errors import UsageError

# One compiled add of two metric trees: eager adds cost a dispatch a leaf.
_tree_add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))


def read_finished(tree):
    """Host copies of device values whose steps have finished.

    The train loop runs its steps under ``jax.transfer_guard_device_to_host
    ('disallow')``; this is the read it allows, for values one logging
    interval old (a read of the step just dispatched would wait for it).
    """
    with jax.transfer_guard_device_to_host('allow'):
        return parallel.to_host(tree)


def _flat(record: Mapping, prefix: str = '') -> dict[str, float]:
    """Numbers of a record as TensorBoard tags: {'losses/8': 0.3, ...}."""
    out = {}
    for key, value in record.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping):
            out.update(_flat(value, f'{name}/'))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class _TensorBoard:
    """Scalars as TensorBoard events, without TensorFlow."""

    def __init__(self, directory: str):
        # Imported here: tensorboard is an optional extra.
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import (
            EventFileWriter,
        )
        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self._writer = EventFileWriter(directory)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        summary = self._summary(value=[
            self._summary.Value(tag=tag, simple_value=value)
            for tag, value in values.items()])
        self._writer.add_event(self._event(wall_time=time.time(), step=step,
                                           summary=summary))

    def close(self) -> None:
        self._writer.close()


class _Wandb:
    """Scalars as a Weights & Biases run in ``workdir/wandb``.

    The run's id is kept in ``workdir/wandb_id.txt``, so a resumed run goes
    on in the same W&B run. Its mode is W&B's own (``WANDB_MODE``:
    'offline' writes only the local files, for ``wandb sync`` later).
    Scalars are plotted against the global ``step``, which they carry, so
    the step records written one interval late land in their place.
    """

    def __init__(self, workdir: str, config: Mapping | None):
        import wandb  # the wandb extra; checked by parse_writers
        self._wandb = wandb
        self._run = wandb.init(
            dir=workdir, id=_wandb_id(workdir), resume='allow',
            project=os.environ.get('WANDB_PROJECT', 'nhl_jax'),
            name=os.path.basename(os.path.abspath(workdir)),
            config=dict(config or {}))
        self._run.define_metric('*', step_metric='step')

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._run.log({**values, 'step': step})

    def table(self, name: str, columns, rows) -> None:
        """A table of the run (the final per-length results)."""
        self._run.log({name: self._wandb.Table(columns=list(columns),
                                                data=[list(r) for r in rows])})
        self._run.summary.update({f'{name}/{c}/{r[0]}': v for r in rows
                                  for c, v in zip(columns[1:], r[1:])})

    def close(self) -> None:
        self._run.finish()


def _wandb_id(workdir: str) -> str:
    path = os.path.join(workdir, 'wandb_id.txt')
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    import secrets
    run_id = secrets.token_hex(4)
    os.makedirs(workdir, exist_ok=True)
    runlog.write_text_atomic(path, run_id + '\n')
    return run_id


# Where scalars may go besides metrics.jsonl (always written): the name,
# the module it needs and the extra that installs it.
WRITERS = {'jsonl': (None, None), 'tensorboard': ('tensorboard', 'tensorboard'),
           'wandb': ('wandb', 'wandb')}


def parse_writers(value: str | None) -> tuple[str, ...]:
    """The writers of ``--config.writers`` ('jsonl,wandb'), checked.

    None: TensorBoard when it is installed. 'jsonl' is always on, named
    or not.

    Raises:
      UsageError: an unknown writer, or one whose package is missing.
    """
    if value is None:
        found = importlib.util.find_spec('tensorboard') is not None
        return ('tensorboard',) if found else ()
    if not isinstance(value, str):
        raise UsageError(f'writers must be a comma-separated string, got '
                         f'{value!r}; e.g. --config.writers=jsonl,wandb.')
    names = [n.strip() for n in value.split(',') if n.strip()]
    for name in names:
        if name not in WRITERS:
            raise UsageError(f'Unknown writer {name!r}; choose from '
                             f'{sorted(WRITERS)} (--config.writers).')
        module, extra = WRITERS[name]
        if module and importlib.util.find_spec(module) is None:
            raise UsageError(
                f'writer {name!r} needs {module}: pip install '
                f'"nhl_jax[{extra}]", or leave it out of --config.writers.')
    return tuple(dict.fromkeys(n for n in names if n != 'jsonl'))


class MetricWriter:
    """Writes round records and step scalars of one run (process 0)."""

    def __init__(self, workdir: str, *, writers=None,
                 config: Mapping | None = None):
        """Opens the run's writers.

        Args:
          workdir: the run directory (metrics.jsonl, tensorboard/, wandb/).
          writers: besides metrics.jsonl, some of 'tensorboard' and
            'wandb' (``parse_writers``); None: tensorboard when installed.
          config: the run's config, for the writers that record it.
        """
        self.log = os.path.join(workdir, 'metrics.jsonl')
        self.enabled = parallel.is_main_process()
        writers = parse_writers(None) if writers is None else tuple(writers)
        self._tb = (_TensorBoard(os.path.join(workdir, 'tensorboard'))
                    if 'tensorboard' in writers and self.enabled else None)
        self._wandb = (_Wandb(workdir, config)
                       if 'wandb' in writers and self.enabled else None)
        self._sinks = [w for w in (self._tb, self._wandb) if w is not None]

    def truncate(self, *, max_epoch: int, max_step: int) -> None:
        """On resume: drops what was logged after the restored checkpoint."""
        if not self.enabled:
            return
        try:
            torn = runlog.truncate_jsonl(self.log, max_epoch=max_epoch,
                                         max_step=max_step)
        except ValueError as e:
            raise UsageError(str(e)) from None
        for line in torn:
            print(f'{self.log}: dropped its torn last line {line} (a write '
                  'cut short); the resumed run writes it again.', flush=True)

    def round(self, step: int, record: Mapping) -> None:
        """A finished round's record (``epoch``, losses, mAP, ...)."""
        if not self.enabled:
            return
        runlog.append_jsonl(self.log, record)
        values = _flat({k: v for k, v in record.items() if k != 'epoch'},
                       'round/')
        for sink in self._sinks:
            sink.scalars(step, values)

    def steps(self, step: int, epoch: int, scalars: Mapping) -> None:
        """Means of the step metrics over the interval ending at ``step``."""
        if not self.enabled:
            return
        record = {'kind': 'step', 'step': step, 'epoch': epoch, **scalars}
        runlog.append_jsonl(self.log, record)
        values = _flat(scalars, 'step/')
        for sink in self._sinks:
            sink.scalars(step, values)

    def table(self, name: str, columns, rows) -> None:
        """A table (the final results) to the writers that keep tables."""
        if self._wandb is not None:
            self._wandb.table(name, columns, rows)

    def close(self) -> None:
        """Flushes the event files, ends the W&B run."""
        for sink in self._sinks:
            sink.close()


def _per_length(bits, value):
    value = np.asarray(value)
    if value.ndim == 1 and len(value) == len(bits):
        return {str(b): float(v) for b, v in zip(bits, value)}
    return float(value)


class StepLogger:
    """Means of the step metrics every ``every`` steps, fetched one late.

    ``add`` sums the metrics on the device; at every ``every``-th step the
    sums are set aside and the PREVIOUS interval's are read and written,
    by which time their steps have long finished, so the host never blocks
    on the step it just dispatched. ``flush`` writes the last interval.
    """

    def __init__(self, writer: MetricWriter, bits, every: int | None):
        self.writer, self.bits, self.every = writer, tuple(bits), every
        self._sums, self._count, self._pending = None, 0, None

    def add(self, step: int, epoch: int, metrics) -> None:
        """Adds the metrics of global step ``step`` (1-based, just run)."""
        if not self.every or not self.writer.enabled:
            return
        # Failure counts (nonfinite, nonfinite_params) are not logged.
        metrics = {k: v for k, v in metrics.items()
                   if not k.startswith('nonfinite')}
        self._sums = metrics if self._sums is None else _tree_add(
            self._sums, metrics)
        self._count += 1
        if step % self.every == 0:
            self._write_pending()
            self._pending = (step, epoch, self._sums, self._count)
            self._sums, self._count = None, 0

    def flush(self) -> None:
        """Writes the interval set aside (call at the end of a round)."""
        self._write_pending()

    def state(self) -> dict | None:
        """The interval in progress as JSON, saved with each checkpoint.

        Call after ``flush``. A resumed run restores it (``restore``), so
        the record whose interval spans the restore is the mean of all
        its steps, as in a run never stopped.
        """
        if self._sums is None:
            return None
        host = parallel.to_host(self._sums)
        return {'count': self._count,
                'sums': {k: [np.asarray(v).dtype.str, np.asarray(v).tolist()]
                         for k, v in host.items()}}

    def restore(self, saved: dict | None) -> None:
        """Continues the interval saved by ``state`` (None: a new one)."""
        if not saved or not self.writer.enabled:
            return
        self._count = saved['count']
        self._sums = {k: jnp.asarray(np.asarray(v, dtype=dtype))
                      for k, (dtype, v) in saved['sums'].items()}

    def _write_pending(self) -> None:
        if self._pending is None:
            return
        step, epoch, sums, count = self._pending
        self._pending = None
        host = read_finished(sums)
        self.writer.steps(step, epoch, {
            k: _per_length(self.bits, np.asarray(v) / count)
            for k, v in host.items()})
