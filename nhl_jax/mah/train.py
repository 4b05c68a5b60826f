"""MAH training: outer iterations of (sample Omega, train, update V), evaluation.

``python experiments/run.py --method=mah --head=cascade --bits=4,8,16``
reaches ``train_and_evaluate`` through ``nhl_jax.systems``.

**Protocol** (ADSH's, papers.md 3). ADSH learns a database code for every
item it may train on, and draws its training samples from those items. Here
the items that own a code V are the rows of one split of the dataset,
``config.mah.v_split``:

- ``'database'`` (default, the ADSH/MAH protocol): V covers the database
  split and Omega is drawn from it, so the labels of the whole database are
  used; the dataset's ``train`` split is not used. mnist5k: V over the 4,000
  database images; digits: 1,497; cifar10-1: the 59,000 database images,
  exactly the MAH CIFAR-10 setup (1,000 queries).
- ``'train'``: V covers the training split only (mnist5k: 2,000 images, the
  same labelled images NHL trains on).

Two evaluations, mAP per length:

- **asymmetric** (MAH's): queries sign(network(query split)) ranked against
  the learned V of the ``v_split`` rows, with their labels;
- **symmetric** (the dataset's standard protocol, comparable with NHL):
  sign(network(query split)) against sign(network(database split)).

Both are computed every ``mah.eval_every`` outer iterations and after the
last; ``results.json`` reports the last evaluation (``map_asymmetric``,
``map_symmetric``) and the best over evaluations (``*_best``, selected on
the queries, hence optimistic). ``train_seconds`` covers the network
updates and the V updates, not evaluation. A checkpoint is written after
every outer iteration; ``--resume`` continues from the last one exactly
(Omega comes from a key in the state). MAH runs on one device, in float32.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nhl_jax import checkpoint, data, evaluate, models, runlog
from nhl_jax.mah import config as mah_config
from nhl_jax.mah import step as mah_step
from nhl_jax.nested import check_bits
from nhl_jax.step import encode_dataset
from nhl_jax.train import check_same_config, params_digest

# nhl_jax.checkpoint saves a 'best' item; MAH keeps no best parameters (it
# reports the last evaluation), so that item is this placeholder.
_NO_BEST = {'unused': np.zeros((), np.int32)}


def _new_meta(bits):
    maps = {str(b): -1.0 for b in bits}
    return {'outer': 0, 'train_seconds': 0.0, 'last_asymmetric': {},
            'last_symmetric': {}, 'best_asymmetric': dict(maps),
            'best_symmetric': dict(maps)}


def _build(config, vsplit, bits):
    """(setup, state, compiled functions) of a run."""
    mah = config.mah
    name = config.backbone or data.get_spec(config.dataset,
                                            config.data_dir).backbone
    backbone = models.get_backbone(
        name, data.image_shape(vsplit),
        # The heads draw from their own key (mah.step.create_state).
        rngs=nnx.Rngs(params=jax.random.fold_in(
            jax.random.key(config.seed), 1)),
        **dict(config.get('backbone_kwargs', {})))
    if config.pretrained:
        models.load_pretrained(name, backbone, config.pretrained)
    steps = mah.epochs * data.steps_per_epoch(
        mah.num_samples, config.batch_size, drop_remainder=False)
    tx = mah_step.make_optimizer(
        mah.optimizer, learning_rate=mah.learning_rate,
        weight_decay=mah.weight_decay, steps_per_outer=steps,
        decay_after=tuple(mah.lr_decay_after),
        decay_factor=mah.lr_decay_factor,
        backbone_learning_rate=config.backbone_learning_rate,
        freeze_backbone=config.freeze_backbone)
    setup, state = mah_step.create_state(
        backbone=backbone, head=config.head, bits=bits,
        weights=mah_config.head_weights(mah, bits), tx=tx,
        num_database=len(vsplit.labels), seed=config.seed, gamma=mah.gamma,
        num_samples=mah.num_samples, freeze_backbone=config.freeze_backbone)
    return setup, state, mah_step.compile_fns(setup)


def _outer_iteration(fns, state, vsplit, db_labels, config):
    """Samples Omega, trains ``mah.epochs`` epochs on it, updates V."""
    start = time.perf_counter()
    state = fns.start(state, db_labels)
    omega = np.asarray(state.omega)
    sums, steps = None, 0
    for _ in range(config.mah.epochs):
        for batch in mah_step.omega_batches(vsplit, omega, config.batch_size,
                                            workers=config.data_workers):
            state, metrics = fns.step(state, batch, db_labels)
            sums = metrics if sums is None else jax.tree.map(
                jnp.add, sums, metrics)
            steps += 1
    state, objective = fns.finish(state, db_labels)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    means = jax.tree.map(lambda x: np.asarray(x) / steps, sums)
    return state, means, np.asarray(objective), seconds


def evaluate_both(fns, state, splits, vsplit, bits, *, batch_size: int,
                  top_k=None, workers: int = 0):
    """Asymmetric and symmetric mAP per length (module docstring).

    Returns:
      ``(asymmetric, symmetric)``, each {str(bits): mAP}.
    """
    q, db = (evaluate.sign_codes(encode_dataset(
        fns.encode, state.params, state.rest, ds, batch_size,
        workers=workers))
        for ds in (splits.query, splits.database))
    ends = np.cumsum(bits)
    asymmetric, symmetric = {}, {}
    for b, end, v in zip(bits, ends, state.codes):
        cols = slice(end - b, end)
        asymmetric[str(b)] = evaluate.mean_average_precision(
            q[:, cols], splits.query.labels, evaluate.sign_codes(v),
            vsplit.labels, top_k=top_k)
        symmetric[str(b)] = evaluate.mean_average_precision(
            q[:, cols], splits.query.labels, db[:, cols],
            splits.database.labels, top_k=top_k)
    return asymmetric, symmetric


def _record(meta, means, objective, seconds, bits, config, maps):
    def per(x):
        return {str(b): float(v) for b, v in zip(bits, x)}

    record = {
        'outer_iteration': meta['outer'],
        # Epochs done so far, the key runlog.truncate_jsonl resumes on.
        'epoch': meta['outer'] * config.mah.epochs,
        'train_seconds': seconds,
        'loss': float(means['loss']),
        'losses': per(means['losses']),
        'objective': per(objective),
    }
    if maps is not None:
        record['map_asymmetric'], record['map_symmetric'] = maps
    return record


def _check_finite(means, objective, outer: int, bits, mngr) -> None:
    bad = [b for b, x, j in zip(bits, means['losses'], objective)
           if not (np.isfinite(x) and np.isfinite(j))]
    if bad:
        raise FloatingPointError(
            f'MAH loss became non-finite in outer iteration {outer} for '
            f'length(s) {bad}; the last checkpoint (step '
            f'{mngr.latest_step()}) is intact: lower mah.learning_rate or '
            'mah.gamma, then --resume.'
        )


def _update_maps(meta, maps):
    asymmetric, symmetric = maps
    meta['last_asymmetric'], meta['last_symmetric'] = asymmetric, symmetric
    for kind, values in (('asymmetric', asymmetric),
                         ('symmetric', symmetric)):
        best = meta[f'best_{kind}']
        for b, v in values.items():
            best[b] = max(best[b], v)
    return meta


def fit(config, workdir: str, splits, *, top_k=None,
        resume: bool = False) -> dict:
    """Runs MAH's outer iterations in ``workdir``; returns the final meta."""
    bits = check_bits(tuple(config.bits))
    vsplit = getattr(splits, config.mah.v_split)
    db_labels = jnp.asarray(vsplit.labels)
    _, state, fns = _build(config, vsplit, bits)
    log = os.path.join(workdir, 'metrics.jsonl')
    with checkpoint.manager(workdir) as mngr:
        state, _, meta = checkpoint.restore_or_start(
            mngr, state, _NO_BEST, lambda: _new_meta(bits), resume=resume,
            workdir=workdir)
        runlog.truncate_jsonl(log, max_epoch=meta['outer'] * config.mah.epochs)
        total = config.mah.outer_iterations
        while meta['outer'] < total:
            state, means, objective, seconds = _outer_iteration(
                fns, state, vsplit, db_labels, config)
            meta['outer'] += 1
            _check_finite(means, objective, meta['outer'], bits, mngr)
            meta['train_seconds'] += seconds
            maps = None
            if meta['outer'] % config.mah.eval_every == 0 or (
                    meta['outer'] == total):
                maps = evaluate_both(
                    fns, state, splits, vsplit, bits,
                    batch_size=config.eval_batch_size, top_k=top_k,
                    workers=config.data_workers)
                meta = _update_maps(meta, maps)
            checkpoint.save(mngr, int(state.step), state, _NO_BEST, meta)
            record = _record(meta, means, objective, seconds, bits, config,
                             maps)
            runlog.append_jsonl(log, record)
            print(_progress(record, total), flush=True)
    return dict(meta, params_sha256=params_digest(jax.device_get(state.params)))


def _progress(record, total: int) -> str:
    line = (f'outer {record["outer_iteration"]}/{total} loss '
            f'{record["loss"]:.4f} ({record["train_seconds"]:.2f} s)')
    if 'map_asymmetric' in record:
        line += ' mAP asym ' + ' '.join(
            f'{v:.3f}' for v in record['map_asymmetric'].values())
        line += ' sym ' + ' '.join(
            f'{v:.3f}' for v in record['map_symmetric'].values())
    return line


def train_and_evaluate(config, workdir: str, *, resume: bool = False) -> dict:
    """Trains MAH as configured; writes ``workdir/results.json``.

    Args:
      config: a ConfigDict as in ``experiments/configs/default.py`` with
        ``method='mah'``, ``head`` and ``config.mah`` (see
        ``nhl_jax.mah.config``); validated before anything is written.
      workdir: run directory (created; its parent must exist).
      resume: continue from the latest checkpoint in ``workdir``.

    Returns:
      The results dict written to ``results.json``.
    """
    mah_config.check(config)
    splits = data.load_splits(config.dataset, seed=config.seed,
                              data_dir=config.data_dir)
    mah_config.check_splits(config, splits)
    spec = data.get_spec(config.dataset, config.data_dir)
    top_k = config.top_k if config.top_k is not None else spec.top_k
    check_same_config(workdir, config, resume)
    meta = fit(config, workdir, splits, top_k=top_k, resume=resume)
    results = _results(config, meta, splits, top_k, spec.backbone)
    runlog.write_json_atomic(os.path.join(workdir, 'results.json'), results)
    print(_table(results))
    return results


def _results(config, meta, splits, top_k, default_backbone) -> dict:
    v_split = config.mah.v_split
    return {
        'method': 'mah',
        'head': config.head,
        'dataset': config.dataset,
        'backbone': config.backbone or default_backbone,
        'bits': [int(b) for b in config.bits],
        'seed': config.seed,
        'top_k': top_k,
        'v_split': v_split,
        'num_database_codes': len(getattr(splits, v_split).labels),
        'map_asymmetric': meta['last_asymmetric'],
        'map_symmetric': meta['last_symmetric'],
        'map_asymmetric_best': meta['best_asymmetric'],
        'map_symmetric_best': meta['best_symmetric'],
        'train_seconds': meta['train_seconds'],
        'outer_iterations': meta['outer'],
        'params_sha256': meta['params_sha256'],
        'mah': config.mah.to_dict(),
    }


def _table(results) -> str:
    k = 'all' if results['top_k'] is None else results['top_k']
    title = (f'mah ({results["head"]} heads) on {results["dataset"]}, mAP@{k} '
             f'of the last evaluation, V over the {results["v_split"]} split, '
             f'train {results["train_seconds"]:.1f} s')
    lines = [
        title,
        f'{"bits":>6} {"asymmetric":>11} {"symmetric":>11}',
    ]
    for b in results['bits']:
        lines.append(f'{b:>6} {results["map_asymmetric"][str(b)]:>11.4f} '
                     f'{results["map_symmetric"][str(b)]:>11.4f}')
    return '\n'.join(lines)
