"""Training: every code length in one run (NHL) or one length (baseline).

The flax-examples layout: ``create_train_state`` and the pure, jitted
``train_step`` (in ``nhl_jax.step``, re-exported here) and
``train_and_evaluate(config, workdir)``, the epoch loop with evaluation,
early stopping, checkpoints and the run's outputs.
"""

import contextlib
import glob
import hashlib
import json
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from nhl_jax import checkpoint, data, parallel, runlog, systems
from nhl_jax.config import UsageError, check_config, check_workdir
from nhl_jax.nested import check_bits
from nhl_jax.step import (  # noqa: F401  (the public training API)
    Setup,
    TrainState,
    compile_encode,
    compile_train_step,
    create_train_state,
    encode_dataset,
    evaluate_lengths,
    make_optimizer,
    train_step,
)


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a resumable checkpoint."""


class _StopFlag:
    """Set by SIGTERM (preemption); checked between steps."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        del signum, frame
        self.requested = True


@contextlib.contextmanager
def _sigterm_flag():
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signals can only be handled on the main thread
        return
    previous = signal.signal(signal.SIGTERM, flag)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


_NO_STEP = np.iinfo(np.int32).max


def _train_epoch(step_fn, state, ds, config, epoch, mesh, partial, stop):
    """Runs (the rest of) one epoch, stopping early if ``stop.requested``.

    Args:
      step_fn: the compiled train step.
      state: the train state.
      ds: the training set.
      config: the run config.
      epoch: 1-based epoch number.
      mesh: the data mesh.
      partial: progress of this epoch from a mid-epoch checkpoint (batches
        done, metric sums, seconds) or None.
      stop: a ``_StopFlag``.

    Returns:
      ``(state, progress)``: progress has ``batches`` done, host metric
      ``sums``, ``seconds``, and ``first_bad_step`` (or None).
    """
    steps = data.steps_per_epoch(len(ds.labels), config.batch_size)
    done = partial['batches'] if partial else 0
    bar = runlog.ProgressBar(steps, f'epoch {epoch}/{config.epochs}',
                             quiet=not parallel.is_main_process())
    start = time.perf_counter()
    sums = ({k: jnp.asarray(v) for k, v in partial['sums'].items()}
            if partial else None)
    bad_step = jnp.asarray(_NO_STEP)
    batches = data.train_batches(
        ds, config.batch_size, seed=config.seed, epoch=epoch,
        rows=parallel.process_slice(config.batch_size), start=done,
        workers=config.data_workers)
    for local in batches:
        if stop.requested:
            break
        state, metrics = step_fn(
            state, parallel.global_batch(local, mesh, config.batch_size))
        # Accumulate on device; read back rarely so steps stay asynchronous.
        sums = metrics if sums is None else jax.tree.map(jnp.add, sums,
                                                         metrics)
        bad_step = jnp.minimum(bad_step, jnp.where(
            metrics['nonfinite'].any(), state.step, _NO_STEP))
        done += 1
        if done % 10 == 0:
            bar.update(done, float(parallel.to_host(metrics['loss'])))
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start + (partial['seconds'] if partial
                                             else 0.0)
    bad = int(parallel.to_host(bad_step))
    progress = {'batches': done, 'seconds': seconds,
                'sums': jax.tree.map(lambda x: np.asarray(x).tolist(),
                                     parallel.to_host(sums)),
                'first_bad_step': None if bad == _NO_STEP else bad}
    if done == steps:
        bar.close(f'loss {progress["sums"]["loss"] / steps:.4f} '
                  f'({seconds:.2f} s)')
    return state, progress


def _check_finite(progress, bits, epoch: int, checkpoint_step) -> None:
    if progress['first_bad_step'] is None:
        return
    bad = [b for b, n in zip(bits, progress['sums']['nonfinite']) if n]
    raise FloatingPointError(
        f'loss became non-finite at step {progress["first_bad_step"]} '
        f'(epoch {epoch}) for length(s) {bad or list(bits)}; the last '
        f'checkpoint (step {checkpoint_step}) is intact: lower the learning '
        'rate or check the data, then --resume.'
    )


def _epoch_record(epoch, progress, anti_domination, bits):
    """The metrics.jsonl record of a finished epoch (means over its steps).

    ``anti_domination`` is None for weighting rules that do not count it.
    """
    steps = progress['batches']
    means = {k: np.asarray(v) / steps for k, v in progress['sums'].items()}
    per = lambda x: {str(b): float(v) for b, v in zip(bits, x)}  # noqa: E731
    record = {
        'epoch': epoch,
        'train_seconds': progress['seconds'],
        'loss': float(means['loss']),
        'losses': per(means['losses']),
        'distill': per(means['distill']),
        'weights': per(means['weights']),
    }
    if anti_domination is not None:
        record['anti_domination_rate'] = per(np.asarray(anti_domination)
                                             / steps)
    return record


def _anti_domination(weighting_state):
    """Host [M] anti-domination counters, or None if the rule has none."""
    counters = getattr(weighting_state, 'anti_domination', None)
    return None if counters is None else parallel.to_host(counters)


def _new_meta(bits):
    """Loop state saved with each checkpoint (JSON).

    ``epoch`` counts finished epochs; ``partial`` is the progress of the
    next one when a checkpoint was taken mid-epoch (on SIGTERM), else None.
    """
    return {'epoch': 0, 'counter': 0, 'train_seconds': 0.0,
            'best_map': {str(b): -1.0 for b in bits}, 'last_map': {},
            'stopped_early': False, 'partial': None}


def update_best(meta, best, maps, params, patience: int):
    """NHL early stopping: the counter resets whenever ANY length improves.

    ``params`` must be a host copy: the device state is donated next step.
    """
    improved = [b for b, v in maps.items() if v > meta['best_map'][b]]
    for b in improved:
        meta['best_map'][b] = maps[b]
        best[b] = params
    meta['counter'] = 0 if improved else meta['counter'] + 1
    meta['last_map'] = maps
    meta['stopped_early'] = meta['counter'] >= patience
    return meta, best


def fit(config, workdir: str, splits, bits, *, top_k=None,
        resume: bool = False) -> dict:
    """Trains the lengths ``bits`` jointly in ``workdir``; returns a summary.

    Evaluates every ``config.eval_every`` epochs (and at the last one),
    checkpoints after each evaluation, keeps the best parameters per length
    and stops after ``config.patience`` evaluations without any length
    improving. Data-parallel over ``config.devices`` devices (all of them
    by default, of every process). On SIGTERM it checkpoints mid-epoch and
    raises ``Preempted``; ``resume=True`` continues exactly where it was.
    """
    mesh = parallel.make_mesh(config.devices)
    parallel.check_batch_size(config.batch_size, mesh)
    os.makedirs(workdir, exist_ok=True)
    setup, state = create_train_state(
        config, input_shape=data.image_shape(splits.train),
        num_train=len(splits.train.labels),
        num_classes=splits.train.labels.shape[1], bits=bits)
    best = {str(b): state.params for b in setup.bits}
    log = os.path.join(workdir, 'metrics.jsonl')
    with checkpoint.manager(workdir) as mngr, _sigterm_flag() as stop:
        state, best, meta = checkpoint.restore_or_start(
            mngr, state, best, lambda: _new_meta(setup.bits), resume=resume,
            workdir=workdir)
        state = parallel.replicate(state, mesh)
        if parallel.is_main_process():
            runlog.truncate_jsonl(log, max_epoch=meta['epoch'])
        loop = _Loop(config, setup, splits, mesh, top_k, mngr, log)
        while meta['epoch'] < config.epochs and not meta['stopped_early']:
            state, meta, best = loop.epoch(state, meta, best, stop)
    return dict(meta, bits=list(setup.bits),
                params_sha256=params_digest(parallel.to_host(state.params)))


class _Loop:
    """One epoch of ``fit``: train, check, maybe evaluate, checkpoint, log."""

    def __init__(self, config, setup, splits, mesh, top_k, mngr, log):
        self.config, self.setup, self.splits = config, setup, splits
        self.mesh, self.top_k, self.mngr, self.log = mesh, top_k, mngr, log
        self.step_fn = compile_train_step(setup, mesh)
        self.encode = compile_encode(setup)

    def epoch(self, state, meta, best, stop):
        config, epoch = self.config, meta['epoch'] + 1
        partial = meta['partial']
        counters = _anti_domination(state.weighting)
        before = (partial['anti_domination'] if partial else
                  None if counters is None else counters.tolist())
        state, progress = _train_epoch(self.step_fn, state, self.splits.train,
                                       config, epoch, self.mesh, partial, stop)
        _check_finite(progress, self.setup.bits, epoch,
                      self.mngr.latest_step())
        step = int(parallel.to_host(state.step))
        if stop.requested:
            meta['partial'] = dict(progress, anti_domination=before)
            checkpoint.save(self.mngr, step, state, best, meta)
            raise Preempted(f'preempted: checkpoint of step {step} saved; '
                            'continue with --resume.')
        counters = _anti_domination(state.weighting)
        record = _epoch_record(
            epoch, progress,
            None if counters is None else counters - np.asarray(before),
            self.setup.bits)
        meta.update(epoch=epoch, partial=None,
                    train_seconds=meta['train_seconds'] + progress['seconds'])
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            params, rest = parallel.to_host((state.params, state.rest))
            record['map'] = evaluate_lengths(
                self.encode, params, rest, self.splits, self.setup.bits,
                batch_size=config.eval_batch_size, top_k=self.top_k,
                workers=config.data_workers)
            meta, best = update_best(meta, best, record['map'], params,
                                      config.patience)
            checkpoint.save(self.mngr, step, state, best, meta)
        if parallel.is_main_process():
            runlog.append_jsonl(self.log, record)
        return state, meta, best


def params_digest(params) -> str:
    """sha256 of the parameters' bytes: equal digests, identical runs."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()


def _holds_run(workdir: str) -> bool:
    """Whether ``workdir`` (or a ``len_<b>`` run in it) has checkpoints."""
    found = glob.glob(os.path.join(workdir, 'checkpoints', '*'))
    return bool(found or glob.glob(
        os.path.join(workdir, 'len_*', 'checkpoints', '*')))


def check_same_config(workdir: str, config, resume: bool) -> None:
    """Stores config.json, after refusing to overwrite or mix runs.

    Without ``resume`` a workdir that already holds a run is refused (before
    its config.json is touched); with it, a run made with another config.
    """
    path = os.path.join(workdir, 'config.json')
    if not resume and _holds_run(workdir):
        raise UsageError(
            f'{workdir} already holds a run; pass --resume to continue it or '
            'choose another --workdir.'
        )
    current = {k: v for k, v in config.to_dict().items() if k != 'epochs'}
    current = json.loads(json.dumps(current))  # tuples -> lists
    if resume and os.path.exists(path):
        with open(path) as f:
            saved = {k: v for k, v in json.load(f).items() if k != 'epochs'}
        diff = sorted(k for k in set(saved) | set(current)
                      if saved.get(k) != current.get(k))
        if diff:
            raise UsageError(
                f'{workdir} holds a run with a different config (fields '
                f'{diff}); resume with the same config or use another '
                '--workdir.'
            )
    os.makedirs(workdir, exist_ok=True)
    if parallel.is_main_process():
        runlog.write_json_atomic(path,
                                 json.loads(json.dumps(config.to_dict())))


def training_runs(config, workdir):
    """(bits, workdir) of each training run: one joint, or one per length."""
    bits = check_bits(tuple(config.bits))
    if config.single_length:
        return [((b,), os.path.join(workdir, f'len_{b}')) for b in bits]
    return [(bits, workdir)]


def train_and_evaluate(config, workdir: str, *, resume: bool = False) -> dict:
    """Trains and evaluates as configured; writes ``workdir/results.json``.

    NHL mode trains every length of ``config.bits`` in ONE run; with
    ``config.single_length`` each length is trained alone (the baseline),
    in ``workdir/len_<b>``, and the training times are summed.

    Args:
      config: a ConfigDict as in ``experiments/configs/default.py``.
      workdir: run directory (created; its parent must exist).
      resume: continue from the latest checkpoint in ``workdir``.

    Returns:
      The results dict written to ``results.json``.
    """
    check_config(config)  # every check before anything is written
    check_workdir(workdir)
    trainer = systems.get_trainer(config.method)
    if trainer is not None:  # MAH / ODH: their own loops
        return trainer(config, workdir, resume=resume)
    spec = data.get_spec(config.dataset, config.data_dir)
    top_k = config.top_k if config.top_k is not None else spec.top_k
    check_same_config(workdir, config, resume)
    splits = data.load_splits(config.dataset, seed=config.seed,
                              data_dir=config.data_dir)
    summaries = [fit(config, run_dir, splits, bits, top_k=top_k,
                     resume=resume) for bits, run_dir in training_runs(config, workdir)]
    results = _results(config, summaries, top_k)
    if parallel.is_main_process():
        runlog.write_json_atomic(os.path.join(workdir, 'results.json'),
                                 results)
        print(runlog.format_table(results['bits'], results['map_last'],
                                  results['map'], title=_title(results)))
    return results


def _results(config, summaries, top_k) -> dict:
    merged = lambda key: {b: v for s in summaries  # noqa: E731
                          for b, v in s[key].items()}
    return {
        'method': config.method,
        'dataset': config.dataset,
        'backbone': config.backbone or data.get_spec(
            config.dataset, config.data_dir).backbone,
        'bits': [int(b) for b in check_bits(tuple(config.bits))],
        'mode': 'single_length' if config.single_length else 'nested',
        'weighting': config.weighting,
        'distill_weight': config.distill_weight,
        'seed': config.seed,
        'top_k': top_k,
        'map': merged('best_map'),
        'map_last': merged('last_map'),
        'train_seconds': sum(s['train_seconds'] for s in summaries),
        'params_sha256': {str(b): s['params_sha256'] for s in summaries
                          for b in s['bits']},
        'epochs': {str(b): s['epoch'] for s in summaries for b in s['bits']},
    }


def _title(results) -> str:
    k = 'all' if results['top_k'] is None else results['top_k']
    return (f'{results["method"]} on {results["dataset"]} ({results["mode"]}, '
            f'weighting={results["weighting"]}), mAP@{k}, train '
            f'{results["train_seconds"]:.1f} s')
