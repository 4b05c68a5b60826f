"""Training: every code length in one run (NHL) or one length (baseline).

The flax-examples layout: ``create_train_state`` and the pure, jitted
``train_step`` (in ``nhl_jax.step``, re-exported here) and
``train_and_evaluate(config, workdir)``, the epoch loop with evaluation,
early stopping, checkpoints and the run's outputs.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from nhl_jax import checkpoint, data, parallel, runlog
from nhl_jax.config import UsageError, check_config
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


def _train_epoch(step_fn, state, ds, config, epoch: int, desc: str, mesh):
    """Runs one epoch; returns (state, per-epoch mean metrics, seconds)."""
    steps = data.steps_per_epoch(len(ds.labels), config.batch_size)
    bar = runlog.ProgressBar(steps, desc, quiet=not parallel.is_main_process())
    start = time.perf_counter()
    sums = None
    batches = data.train_batches(
        ds, config.batch_size, seed=config.seed, epoch=epoch,
        rows=parallel.process_slice(config.batch_size))
    for i, local in enumerate(batches):
        batch = parallel.global_batch(local, mesh, config.batch_size)
        state, metrics = step_fn(state, batch)
        # Accumulate on device; read back rarely so steps stay asynchronous.
        sums = metrics if sums is None else jax.tree.map(jnp.add, sums,
                                                         metrics)
        if (i + 1) % 10 == 0:
            bar.update(i + 1, float(parallel.to_host(metrics['loss'])))
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    means = jax.tree.map(lambda x: x / steps, parallel.to_host(sums))
    bar.close(f'loss {float(means["loss"]):.4f} ({seconds:.2f} s)')
    return state, means, seconds


def _check_finite(means, bits, epoch: int, step: int) -> None:
    bad = [b for b, v in zip(bits, means['losses']) if not np.isfinite(v)]
    if bad or not np.isfinite(means['loss']):
        raise FloatingPointError(
            f'loss became non-finite in epoch {epoch} (step {step}) at '
            f'length(s) {bad or list(bits)}; lower the learning rate or check '
            'the data.'
        )


def _epoch_record(epoch, means, seconds, counters, before, bits):
    steps = max(int(counters.count - before.count), 1)
    per = lambda x: {str(b): float(v) for b, v in zip(bits, x)}  # noqa: E731
    return {
        'epoch': epoch,
        'train_seconds': seconds,
        'loss': float(means['loss']),
        'losses': per(means['losses']),
        'distill': per(means['distill']),
        'weights': per(means['weights']),
        'anti_domination_rate': per(
            (np.asarray(counters.anti_domination)
             - np.asarray(before.anti_domination)) / steps),
    }


def _new_meta(bits):
    return {'epoch': 0, 'counter': 0, 'train_seconds': 0.0,
            'best_map': {str(b): -1.0 for b in bits}, 'last_map': {},
            'stopped_early': False}


def _update_best(meta, best, maps, params, patience: int):
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


def _restore_or_start(mngr, state, best, bits, resume: bool, workdir: str):
    if mngr.latest_step() is None:
        return state, best, _new_meta(bits)
    if not resume:
        raise UsageError(
            f'{workdir} already holds a run; pass --resume to continue it or '
            'choose another --workdir.'
        )
    return checkpoint.restore_latest(mngr, state, best)


def fit(config, workdir: str, splits, bits, *, top_k=None,
        resume: bool = False) -> dict:
    """Trains the lengths ``bits`` jointly in ``workdir``; returns a summary.

    Evaluates every ``config.eval_every`` epochs (and at the last one),
    checkpoints after each evaluation, keeps the best parameters per length
    and stops after ``config.patience`` evaluations without any length
    improving. Data-parallel over ``config.devices`` devices (all of them
    by default, of every process).
    """
    mesh = parallel.make_mesh(config.devices)
    parallel.check_batch_size(config.batch_size, mesh)
    os.makedirs(workdir, exist_ok=True)
    setup, state = create_train_state(
        config, input_shape=splits.train.images.shape[1:],
        num_train=len(splits.train.labels),
        num_classes=splits.train.labels.shape[1], bits=bits)
    best = {str(b): state.params for b in setup.bits}
    log = os.path.join(workdir, 'metrics.jsonl')
    with checkpoint.manager(workdir) as mngr:
        state, best, meta = _restore_or_start(mngr, state, best, setup.bits,
                                              resume, workdir)
        state = parallel.replicate(state, mesh)
        if parallel.is_main_process():
            runlog.truncate_jsonl(log, max_epoch=meta['epoch'])
        step_fn = compile_train_step(setup, mesh)
        encode = compile_encode(setup)
        while meta['epoch'] < config.epochs and not meta['stopped_early']:
            state, record = _epoch(step_fn, state, setup, splits, config,
                                   meta, mesh)
            if (meta['epoch'] % config.eval_every == 0
                    or meta['epoch'] == config.epochs):
                params, rest = parallel.to_host((state.params, state.rest))
                record['map'] = evaluate_lengths(
                    encode, params, rest, splits, setup.bits,
                    batch_size=config.eval_batch_size, top_k=top_k)
                meta, best = _update_best(meta, best, record['map'], params,
                                          config.patience)
                step = int(parallel.to_host(state.step))
                checkpoint.save(mngr, step, state, best, meta)
            if parallel.is_main_process():
                runlog.append_jsonl(log, record)
    return dict(meta, bits=list(setup.bits))


def _epoch(step_fn, state, setup, splits, config, meta, mesh):
    """Trains one epoch and updates ``meta``; returns (state, record)."""
    epoch = meta['epoch'] + 1
    before = parallel.to_host(state.weighting)
    desc = f'epoch {epoch}/{config.epochs} bits {list(setup.bits)}'
    state, means, seconds = _train_epoch(step_fn, state, splits.train, config,
                                         epoch, desc, mesh)
    counters = parallel.to_host(state.weighting)
    _check_finite(means, setup.bits, epoch, int(counters.count))
    meta['train_seconds'] += seconds
    meta['epoch'] = epoch
    return state, _epoch_record(epoch, means, seconds, counters, before,
                                setup.bits)


def _check_same_config(workdir: str, config, resume: bool) -> None:
    """Stores config.json; refuses to resume a run made with another config."""
    path = os.path.join(workdir, 'config.json')
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


def _runs(config, workdir):
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
    check_config(config)
    spec = data.get_spec(config.dataset)
    top_k = config.top_k if config.top_k is not None else spec.top_k
    _check_same_config(workdir, config, resume)
    splits = data.load_splits(config.dataset, seed=config.seed)
    summaries = [fit(config, run_dir, splits, bits, top_k=top_k,
                     resume=resume) for bits, run_dir in _runs(config, workdir)]
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
        'backbone': config.backbone or data.get_spec(config.dataset).backbone,
        'bits': [int(b) for b in check_bits(tuple(config.bits))],
        'mode': 'single_length' if config.single_length else 'nested',
        'weighting': config.weighting,
        'distill_weight': config.distill_weight,
        'seed': config.seed,
        'top_k': top_k,
        'map': merged('best_map'),
        'map_last': merged('last_map'),
        'train_seconds': sum(s['train_seconds'] for s in summaries),
        'epochs': {str(b): s['epoch'] for s in summaries for b in s['bits']},
    }


def _title(results) -> str:
    k = 'all' if results['top_k'] is None else results['top_k']
    return (f'{results["method"]} on {results["dataset"]} ({results["mode"]}, '
            f'weighting={results["weighting"]}), mAP@{k}, train '
            f'{results["train_seconds"]:.1f} s')
