"""The round loop every system trains with: ``fit``.

A run is a sequence of rounds (``System.plan``: an NHL or ODH epoch, a MAH
outer iteration). Each round runs its optional ``begin`` hook, its batches
through the compiled step (data parallel over the mesh, metrics summed on
the device so that steps stay asynchronous), its optional ``end`` hook,
then maybe an evaluation (best parameters per length, patience) and a
checkpoint, and appends one record to metrics.jsonl (process 0 only).

Inside the step loop nothing is read from the device but at logging
intervals, and then only values one interval old, whose steps have long
finished, so the device queue never drains (issue 32): every step runs
under ``jax.transfer_guard_device_to_host('disallow_explicit')``
(``_no_sync``), and only ``writer.read_finished`` (the progress bar's
loss, ``writer.StepLogger``'s sums) lets a value through. GPUs and TPUs
enforce the guard; XLA's CPU client skips it, its arrays being host
memory (tests/train/test_loop.py makes the CPU enforce it too).

On SIGTERM (preemption) or Ctrl-C the loop checkpoints mid-round, with the
batches done, the running sums and what the round started with, and raises
``Preempted``; ``resume=True`` continues bit-identically. A non-finite loss
stops the run naming the first bad step and length, before anything of
that round is saved.
"""

import collections
import contextlib
import dataclasses
import functools
import hashlib
import os
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from nhl_jax import parallel, runlog
from nhl_jax.data import pipeline
from nhl_jax.train import checkpoint, evaluation, profile
from nhl_jax.train import programs as programs_lib
from nhl_jax.train import workdir as workdir_lib
from nhl_jax.train import writer as writer_lib
from nhl_jax.train.phases import Phases
from nhl_jax.train.system import DataInfo, RoundResult


class Preempted(Exception):
    """Training stopped on SIGTERM or SIGINT after a resumable checkpoint."""

    def __init__(self, message: str, *, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = signum  # the exit status is 128 + signum


class _Preemption:
    """Whether to stop for preemption before the next step; one answer for
    every process.

    One process: SIGTERM or the first SIGINT (Ctrl-C) sets a flag, so both
    end in a checkpoint; a second SIGINT stops at once, without one.
    Several: JAX's preemption service (``parallel.initialize`` enables it)
    catches SIGTERM on any process and agrees on a step at which ALL
    processes stop, so none of them waits alone in a collective;
    ``should_stop`` must then be asked at every step, with the same step
    numbers on every process.
    """

    def __init__(self):
        self.requested = False
        self.signum = signal.SIGTERM

    def __call__(self, signum, frame):
        del frame
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: no checkpoint
        self.requested, self.signum = True, signum
        if signum == signal.SIGINT:
            print('\ninterrupted: saving a checkpoint at the next step '
                  '(Ctrl-C again to stop without one).', file=sys.stderr,
                  flush=True)

    @property
    def reason(self) -> str:
        return 'interrupted' if self.signum == signal.SIGINT else 'preempted'

    def should_stop(self, step: int) -> bool:
        """Asked before running global step ``step`` (0-based)."""
        if jax.process_count() > 1 and not self.requested:
            self.requested = multihost_utils.reached_preemption_sync_point(
                step)
        return self.requested


_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def _preemption():
    flag = _Preemption()
    if (jax.process_count() > 1
            or threading.current_thread() is not threading.main_thread()):
        yield flag  # the service's own handler; or no signals off main
        return
    previous = {s: signal.signal(s, flag) for s in _SIGNALS}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


_NO_STEP = np.iinfo(np.int32).max
# Every step runs under this guard: a device-to-host read inside the step
# loop (a float() of a metric, np.asarray or jax.device_get of the state)
# would make the host wait for the step just dispatched, draining the queue.
_no_sync = functools.partial(jax.transfer_guard_device_to_host,
                             'disallow_explicit')
# Steps between two readings of the progress bar's loss.
_BAR_EVERY = 10
# Step metrics that count failures: summed over a round, never logged.
GUARDS = ('nonfinite', 'nonfinite_params')


def _ahead(batches, mesh, batch_size: int, depth: int = 2):
    """Global sharded batches, ``depth - 1`` of them sent ahead.

    The transfer of the next batch to the devices is started before the
    current step is dispatched, so the device never waits for it (double
    buffering); batches sent ahead of a preemption are simply dropped, as
    resuming reads from the batch position.
    """
    queue = collections.deque()
    for local in batches:
        queue.append(parallel.global_batch(local, mesh, batch_size))
        if len(queue) >= depth:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


@jax.jit
def _accumulate(sums, bad_step, metrics, step):
    """The round's metric sums and first failed step, after one more step.

    On device, so steps stay async; one compiled call instead of an eager
    op per metric leaf (a nested NHL step has dozens), which shortens the
    default run's training loops on the CPU (benchmarks/RESULTS.md).
    """
    failed = (metrics['nonfinite'].any() | ~jnp.isfinite(metrics['loss'])
              | (metrics['nonfinite_params'] > 0))
    return (jax.tree.map(jnp.add, sums, metrics),
            jnp.minimum(bad_step, jnp.where(failed, step, _NO_STEP)))


def _start_sums(sums, metrics):
    """Zero sums (unless resumed ones) and no failed step, placed as the
    step's metrics: by ``device_put``, not by eager ops (each a program
    to load), and so that ``_accumulate`` compiles once, not once for
    its first call's placement and again for its own outputs'."""
    place = jax.tree.leaves(metrics)[0].sharding
    if sums is None:
        sums = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), metrics)
    else:  # a checkpoint's sums (JSON lists), as the metrics' dtypes
        sums = jax.tree.map(lambda m, s: np.asarray(s, m.dtype), metrics,
                            sums)
    return jax.device_put((sums, np.int32(_NO_STEP)), place)


def params_digest(params) -> str:
    """sha256 of the parameters' bytes: equal digests, identical runs."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()


def new_meta(bits, evaluators) -> dict:
    """Loop state saved with each checkpoint (JSON).

    ``epoch`` counts finished rounds; ``partial`` is the progress of the
    next one when a checkpoint was taken mid-round (on SIGTERM), else None.
    ``best_map`` / ``last_map`` are the first evaluator's; ``others`` holds
    the best and last values of the other evaluators.
    """
    return {'epoch': 0, 'counter': 0, 'train_seconds': 0.0,
            'stage_seconds': {},
            'best_map': {str(b): -1.0 for b in bits}, 'last_map': {},
            'others': {name: {'best': {str(b): -1.0 for b in bits},
                              'last': {}} for name in evaluators[1:]},
            'stopped_early': False, 'partial': None}


def update_best(meta, best, maps, snapshot, patience: int):
    """NHL early stopping: the counter resets whenever ANY length improves.

    Args:
      meta: the loop state (``new_meta``).
      best: {str(bits): snapshot} of the best model per length.
      maps: {str(bits): mAP} of this evaluation.
      snapshot: ``str(bits) -> snapshot`` of the current model (host
        copies: the device state is donated next step).
      patience: evaluations without any improvement before stopping.

    Returns:
      ``(meta, best)``.
    """
    improved = [b for b, v in maps.items() if v > meta['best_map'][b]]
    for b in improved:
        meta['best_map'][b] = maps[b]
        best[b] = snapshot(b)
    meta['counter'] = 0 if improved else meta['counter'] + 1
    meta['last_map'] = maps
    meta['stopped_early'] = meta['counter'] >= patience
    return meta, best


def _update_others(meta, maps, improved) -> dict:
    """The other evaluators' values: ``last`` of each length they scored,
    ``best`` where the first evaluator's best parameters changed (the
    lengths ``evaluation.scheduled_lengths`` has them score)."""
    for name, entry in meta['others'].items():
        scored = maps.get(name, {})
        entry['last'].update(scored)
        entry['best'].update({b: v for b, v in scored.items()
                              if b in improved})
    return meta


def _host_snapshots(system, setup, state):
    """Host copies of the best-model snapshot of every length."""
    params, rest, extra = parallel.to_host(
        (state.params, state.rest, state.extra))
    return {str(b): system.snapshot(params, rest, extra, k)
            for k, b in enumerate(setup.bits)}


def fit(system, spec, splits, bits, workdir: str, *,
        resume: bool = False, phases: Phases | None = None,
        after_round=None) -> dict:
    """Trains the lengths ``bits`` of ``spec`` in ``workdir``; a summary.

    Data-parallel over ``spec.devices`` devices (all of them by default, of
    every process).

    Args:
      system: a ``nhl_jax.cli.registry.System``.
      spec: the resolved ``RunSpec``.
      splits: the loaded ``data.Splits``.
      bits: lengths of this training run.
      workdir: its directory (checkpoints, metrics.jsonl).
      resume: continue from the latest checkpoint in ``workdir``.
      phases: where the wall seconds of setup, training, evaluation and
        checkpoints are booked (``nhl_jax.train.phases``).
      after_round: called with no argument after each round: where a
        caller starts work for a thread that would slow the first round's
        tracing (``nhl_jax.train.plots.WarmUp.start``).

    Returns:
      The final loop state with ``bits`` and ``params_sha256``.

    Raises:
      Preempted: on SIGTERM or SIGINT, after a mid-round checkpoint.
      FloatingPointError: on a non-finite loss.
    """
    phases = Phases() if phases is None else phases
    begun = time.time()
    mesh = parallel.make_mesh(spec.devices)
    parallel.check_batch_size(spec.batch_size, mesh)
    os.makedirs(workdir, exist_ok=True)
    info = DataInfo.of(splits)
    setup, drawn = system.draw(spec, info, bits)
    programs = programs_lib.Programs(system, spec, setup, splits, info,
                                     mesh)
    state = programs.start(drawn)
    best = _host_snapshots(system, setup, state)
    writer = writer_lib.MetricWriter(workdir, writers=spec.writers,
                                     config=spec.config)
    profiler = profile.Profiler(spec.profile_steps, workdir)
    identity = workdir_lib.run_identity(spec, setup.bits, state)
    with (checkpoint.opened(workdir) as mngr, _preemption() as stop,
          contextlib.closing(writer), contextlib.closing(profiler),
          pipeline.run_workers(spec.data_workers, splits.train) as workers):
        # Worker processes, if any, serve every epoch and evaluation.
        spec = dataclasses.replace(spec, data_workers=workers)
        state, best, meta = checkpoint.restore_or_start(
            mngr, state, best,
            lambda: new_meta(setup.bits, system.evaluators), resume=resume,
            workdir=workdir, identity=identity, log=_note)
        state = parallel.replicate(state, mesh)
        writer.truncate(max_epoch=meta['epoch'],
                        max_step=int(parallel.to_host(state.step)))
        progress = _progress(system, spec, splits, meta)
        loop = _Loop(system, spec, setup, splits, programs, mngr,
                     (writer, profiler, phases, progress), identity)
        loop.scalars.restore(meta.get('step_log'))
        meta = _continued(meta, spec, loop.schedule.rounds, workdir)
        phases.add('setup', begun, time.time())
        with contextlib.closing(progress):
            while (meta['epoch'] < loop.schedule.rounds
                   and not meta['stopped_early']):
                state, meta, best = loop.round(state, meta, best, stop)
                if after_round is not None:
                    after_round()
        with phases('checkpoint'):
            checkpoint.wait(mngr)
        writer.table('results', ('bits', 'map_last', 'map'), [
            (int(b), meta['last_map'].get(str(b)), meta['best_map'][str(b)])
            for b in setup.bits])
    return dict(meta, bits=list(setup.bits),
                params_sha256=params_digest(parallel.to_host(state.params)))


def _progress(system, spec, splits, meta) -> runlog.RunProgress:
    """The run's bar: every round's steps, those already done counted."""
    steps = [system.plan(spec, splits, r).num_batches  # lazy: loads nothing
             for r in range(1, system.schedule(spec).rounds + 1)]
    done = sum(steps[:meta['epoch']]) + (meta['partial'] or {}).get(
        'batches', 0)
    return runlog.RunProgress(sum(steps), done=done,
                              quiet=not parallel.is_main_process())


def _note(line: str) -> None:
    if parallel.is_main_process():
        print(line, flush=True)


def _continued(meta, spec, rounds: int, workdir: str) -> dict:
    """The restored loop state under this run's patience, with a note when
    there is nothing left to train (a resume that would silently no-op).
    """
    if meta['epoch'] == 0:
        return meta
    meta['stopped_early'] = meta['counter'] >= spec.patience
    if meta['stopped_early']:
        _note(f'{workdir} stopped early after {meta["epoch"]} rounds '
              f'({meta["counter"]} evaluations without improvement, '
              f'patience {spec.patience}); nothing to train: pass a larger '
              '--config.patience with --resume to go on.')
    elif meta['epoch'] >= rounds and meta['partial'] is None:
        _note(f'{workdir} has trained all {rounds} rounds; nothing to '
              'train: pass a larger --config.epochs with --resume to go on.')
    return meta


class _Loop:
    """One round of ``fit``: train, check, maybe evaluate, checkpoint, log."""

    def __init__(self, system, spec, setup, splits, programs, mngr,
                 outputs, identity=None):
        self.identity = identity
        self.system, self.spec, self.setup = system, spec, setup
        self.splits, self.mesh, self.mngr = splits, programs.mesh, mngr
        self.writer, self.profiler, self.phases, self.progress = outputs
        self.scalars = writer_lib.StepLogger(self.writer, setup.bits,
                                             spec.log_every)
        self.schedule = system.schedule(spec)
        self.consts = programs.consts
        self.steps, self.hooks = programs.steps, programs.hooks
        self.encode = programs.encode

    def _hook(self, name, state, metrics):
        if name is None:
            return state
        state, out = self.hooks[name](state, self.consts)
        metrics.update(jax.tree.map(lambda x: np.asarray(x).tolist(),
                                    parallel.to_host(out)))
        return state

    def round(self, state, meta, best, stop):
        r, partial = meta['epoch'] + 1, meta['partial']
        plan = self.system.plan(self.spec, self.splits, r)
        begun, start = time.time(), time.perf_counter()
        if partial is None:
            before, hooks = self.system.round_info(self.setup, state), {}
            state = self._hook(plan.begin, state, hooks)
        else:
            before, hooks = partial['before'], partial['hooks']
        desc = self._desc(r, plan.stage)
        self.progress.round(desc)
        state, progress = self._batches(state, plan, r, partial, stop)
        self.scalars.flush()
        earlier = partial['seconds'] if partial else 0.0
        self._check_finite(progress, r, plan.stage)
        if stop.requested:
            meta['partial'] = dict(
                progress, before=before, hooks=hooks,
                seconds=earlier + time.perf_counter() - start)
            step = int(parallel.to_host(state.step))
            self._save(step, state, best, meta)
            checkpoint.wait(self.mngr)  # the process exits next
            raise Preempted(f'{stop.reason}: checkpoint of step {step} '
                            'saved; continue with --resume.',
                            signum=stop.signum)
        state = self._hook(plan.end, state, hooks)
        jax.block_until_ready(state)
        seconds = earlier + time.perf_counter() - start
        self._check_hooks(hooks, r)
        record = self._record(r, plan, progress, seconds, before, hooks,
                              state)
        self.progress.line(f'{desc} loss {record["loss"]:.4f} '
                           f'({seconds:.2f} s)')
        stages = meta['stage_seconds']
        stages[plan.stage] = stages.get(plan.stage, 0.0) + seconds
        meta.update(epoch=r, partial=None,
                    train_seconds=meta['train_seconds'] + seconds)
        self.phases.add('train', begun, time.time())
        if self.schedule.evaluates(r):
            with self.phases('evaluate'):
                evaluated = time.perf_counter()
                meta, best = self._evaluate(state, meta, best, record, r)
                record['evaluate_seconds'] = time.perf_counter() - evaluated
            self.progress.line('  mAP ' + ' '.join(
                f'{b}:{v:.4f}' for b, v in record['map'].items())
                + f' ({record["evaluate_seconds"]:.2f} s)')
        if self.schedule.checkpoints(r):
            with self.phases('checkpoint'):
                self._save(int(parallel.to_host(state.step)), state, best,
                           meta)
        with self.phases('train'):
            self.writer.round(int(parallel.to_host(state.step)), record)
        return state, meta, best

    def _save(self, step, state, best, meta) -> None:
        """A checkpoint, with the step scalars' interval in progress."""
        meta['step_log'] = self.scalars.state()
        checkpoint.save(self.mngr, step, state, best, meta,
                        identity=self.identity)

    def _batches(self, state, plan, r, partial, stop):
        """Runs (the rest of) the round's batches, stopping on SIGTERM."""
        done = partial['batches'] if partial else 0
        sums = partial['sums'] if partial else None
        bad_step = None
        step_fn = self.steps[plan.stage]
        # The host's count of global steps, for the preemption sync point.
        step = int(parallel.to_host(state.step))
        shown = None  # the bar's loss, read one interval later
        for batch in _ahead(plan.batches(state, done), self.mesh,
                            self.spec.batch_size):
            with _no_sync():
                if stop.should_stop(step):
                    break
                step += 1
                with self.profiler.step(step):
                    state, metrics = step_fn(state, batch, self.consts)
                self.profiler.after(step, state)
                self.scalars.add(step, r, metrics)
                if bad_step is None:
                    sums, bad_step = _start_sums(sums, metrics)
                sums, bad_step = _accumulate(sums, bad_step, metrics,
                                             state.step)
                done += 1
                self.progress.update(1)
                if self.progress.live and done % _BAR_EVERY == 0:
                    shown = self._show_loss(shown, metrics['loss'])
        jax.block_until_ready(state)
        bad = int(parallel.to_host(bad_step))
        return state, {
            'batches': done,
            'sums': jax.tree.map(lambda x: np.asarray(x).tolist(),
                                 parallel.to_host(sums)),
            'first_bad_step': None if bad == _NO_STEP else bad}

    def _show_loss(self, shown, loss):
        """Shows the loss set aside an interval ago; sets ``loss`` aside.

        Its step finished long ago, so reading it does not wait for the
        step just dispatched (a terminal's bar only).
        """
        if shown is not None:
            self.progress.loss(float(writer_lib.read_finished(shown)))
        return loss

    def _where(self, r, stage):
        where = f'{self.system.round_name} {r}'
        return where if stage in ('train', 'outer') else f'{where}, {stage}'

    def _desc(self, r, stage):
        desc = f'{self.system.round_name} {r}/{self.schedule.rounds}'
        return desc if stage in ('train', 'outer') else f'{desc} ({stage})'

    def _check_finite(self, progress, r, stage) -> None:
        if progress['first_bad_step'] is None:
            return
        bits, sums = self.setup.bits, progress['sums']
        counts = np.atleast_1d(sums['nonfinite'])
        bad = ([b for b, n in zip(bits, counts) if n]
               if len(counts) == len(bits) else [])
        what = (f'loss became non-finite at step {progress["first_bad_step"]} '
                f'({self._where(r, stage)}) for length(s) {bad or list(bits)}')
        if not counts.any() and sums['nonfinite_params']:
            what = (f'parameters became non-finite at step '
                    f'{progress["first_bad_step"]} ({self._where(r, stage)}) '
                    'while the loss stayed finite (NaN/inf weights or '
                    'features)')
        raise FloatingPointError(f'{what}; {self._restart_hint()}')

    def _restart_hint(self) -> str:
        """Where a run stopped by a non-finite value can go on from."""
        step = self.mngr.latest_step()
        if step is None:
            return ('no checkpoint was saved yet: lower the learning rate or '
                    'check the data and the pretrained weights, then start '
                    'again in another --workdir.')
        return (f'the last checkpoint (step {step}) is intact: lower the '
                'learning rate or check the data, then --resume.')

    def _check_hooks(self, hooks, r) -> None:
        counts = np.atleast_1d(hooks.get('nonfinite', 0))
        if not counts.any():
            return
        bad = [b for b, n in zip(self.setup.bits, counts) if n]
        raise FloatingPointError(
            f'the end of {self.system.round_name} {r} became non-finite for '
            f'length(s) {bad or list(self.setup.bits)}; '
            f'{self._restart_hint()}'
        )

    def _record(self, r, plan, progress, seconds, before, hooks, state):
        steps = progress['batches']
        means = {k: np.asarray(v) / steps for k, v in progress['sums'].items()
                 if k not in GUARDS}
        result = RoundResult(means, steps, before,
                             self.system.round_info(self.setup, state), hooks)
        record = {'epoch': r, 'stage': plan.stage, 'train_seconds': seconds,
                  'loss': float(means['loss'])}
        record.update(self.system.record(self.spec, self.setup.bits, r,
                                         result))
        return record

    def _evaluate(self, state, meta, best, record, r):
        """Scores round ``r``: the first evaluator, then the lengths the
        others need (``evaluation.scheduled_lengths``), each split encoded
        once; metrics.jsonl records which were scored (``evaluated``)."""
        spec, system, bits = self.spec, self.system, self.setup.bits
        params, rest = parallel.to_host((state.params, state.rest))
        learned = system.learned_codes(state, spec, self.splits)
        score = evaluation.scorer(
            self.encode, params, rest, self.splits, system.layout(bits),
            batch_size=spec.eval_batch_size, top_k=spec.top_k,
            workers=spec.data_workers,
            learned=None if learned is None else learned[0],
            learned_labels=None if learned is None else learned[1],
            mesh=self.mesh)
        primary = system.evaluators[0]
        maps = score({primary: bits})
        kept = dict(meta['best_map'])
        snapshots = _host_snapshots(system, self.setup, state)
        meta, best = update_best(meta, best, maps[primary], snapshots.get,
                                 spec.patience)
        improved = [b for b in bits if meta['best_map'][str(b)] != kept[str(b)]]
        lengths = evaluation.scheduled_lengths(
            system.evaluators, bits, improved=improved,
            final=meta['stopped_early'] or r == self.schedule.rounds)
        maps.update(score(lengths))
        record['map'] = maps[primary]
        for name in lengths:
            record[f'map_{name}'] = maps.get(name, {})
        record['evaluated'] = {primary: list(bits), **{
            name: list(b) for name, b in lengths.items()}}
        return _update_others(meta, maps, {str(b) for b in improved}), best
