"""ODH training: warm-up classifier, exploration, aggregation; every length.

``python experiments/run.py --method=odh --backbone=bnn_cnn`` lands here
(``nhl_jax.systems``). Epochs are counted globally: epochs 1..W train the
warm-up classifier (``config.odh.warmup_epochs``), then ``config.epochs``
main epochs follow; main epoch e (1-based) is stage 1 (exploration) while
e <= ``config.odh.transition_epoch`` and stage 2 (aggregation) after, i.e.
the ODH code's ``epoch < transition_epoch`` with its 0-based epochs.
metrics.jsonl records the stage of every epoch. mAP of every length is
evaluated every ``config.eval_every`` main epochs (and at the last) at the
dataset's top_k, with the NHL early stop; a checkpoint is written after
the warm-up and after every evaluation, so ``--resume`` continues exactly.
"""

import os
import time

import jax
import numpy as np
from flax import nnx

from nhl_jax import checkpoint, data, models, parallel, runlog
from nhl_jax import train as nhl_train
from nhl_jax.config import UsageError
from nhl_jax.data import augment as augment_lib
from nhl_jax.odh import centers as centers_lib
from nhl_jax.odh import data as odh_data
from nhl_jax.odh import model as model_lib
from nhl_jax.odh import step as step_lib
from nhl_jax.step import evaluate_lengths

update_best, params_digest = nhl_train.update_best, nhl_train.params_digest


def check_odh_config(config) -> None:
    """Validates ``config.odh`` (the common fields are checked by
    ``nhl_jax.config.check_config``); raises a one-line ``UsageError``."""
    odh = config.odh
    if odh.centers not in centers_lib.CENTERS:
        raise UsageError(f'Unknown odh.centers {odh.centers!r}; choose one '
                         f'of {sorted(centers_lib.CENTERS)}.')
    name = odh.classifier_backbone
    if name is not None and name not in models.BACKBONES:
        raise UsageError(f'Unknown odh.classifier_backbone {name!r}; choose '
                         f'one of {sorted(models.BACKBONES)}.')
    _check_classifier_pretrained(config)
    for field in ('warmup_epochs', 'transition_epoch'):
        if not _is_int(odh[field]) or odh[field] < 0:
            raise UsageError(f'odh.{field} must be an int >= 0, got '
                             f'{odh[field]!r}.')
    if not _is_int(odh.n_positive) or odh.n_positive < 1:
        raise UsageError(f'odh.n_positive must be an int >= 1, got '
                         f'{odh.n_positive!r}.')
    if config.batch_size % odh.n_positive:
        raise UsageError(
            f'batch_size {config.batch_size} does not split into groups of '
            f'odh.n_positive={odh.n_positive}; use a multiple of it.')
    _check_numbers(odh)


def _classifier_name(config) -> str:
    return config.odh.classifier_backbone or data.get_spec(
        config.dataset, config.get('data_dir')).backbone


def _check_classifier_pretrained(config) -> None:
    path = config.odh.classifier_pretrained
    if not path:
        return
    name = _classifier_name(config)
    if name not in models.PRETRAINED:
        raise UsageError(
            f'classifier backbone {name!r} has no pretrained weights loader; '
            f'choose one of {sorted(models.PRETRAINED)} or leave '
            'odh.classifier_pretrained unset.')
    if not os.path.isfile(path):
        raise UsageError(
            f'odh.classifier_pretrained file {path!r} does not exist; see the '
            'README (pretrained backbones) for how to make it.')


def _check_numbers(odh) -> None:
    for field in ('ce_weight_explore', 'asd_weight', 'ce_weight_aggregate'):
        if not odh[field] >= 0:
            raise UsageError(f'odh.{field} must be >= 0, got {odh[field]!r}.')
    for field in ('temperature', 'max_norm'):
        if not odh[field] > 0:
            raise UsageError(f'odh.{field} must be > 0, got {odh[field]!r}.')
    if not 0 <= odh.weak_strength <= 1:
        raise UsageError('odh.weak_strength must lie in [0, 1], got '
                         f'{odh.weak_strength!r}.')
    low, high = tuple(odh.crop_scale)
    if not 0 < low <= high <= 1:
        raise UsageError('odh.crop_scale must be (low, high) with 0 < low <= '
                         f'high <= 1, got {tuple(odh.crop_scale)!r}.')
    if not 0 <= odh.flip_prob <= 1:
        raise UsageError(f'odh.flip_prob must lie in [0, 1], got '
                         f'{odh.flip_prob!r}.')


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def stage_of(epoch: int, config) -> str:
    """The stage of global epoch ``epoch`` (1-based)."""
    main = epoch - config.odh.warmup_epochs
    if main <= 0:
        return 'warmup'
    return ('exploration' if main <= config.odh.transition_epoch
            else 'aggregation')


def _hyper(config) -> step_lib.Hyper:
    odh = config.odh
    strong = augment_lib.AugmentParams(
        crop_scale=tuple(float(v) for v in odh.crop_scale),
        flip_prob=float(odh.flip_prob))
    return step_lib.Hyper(
        temperature=odh.temperature, ce_weight_explore=odh.ce_weight_explore,
        asd_weight=odh.asd_weight, ce_weight_aggregate=odh.ce_weight_aggregate,
        n_positive=odh.n_positive, learn_centers=odh.learn_centers,
        strong=strong, weak_strength=odh.weak_strength)


def _steps_per_epoch(config, stage: str, n: int) -> int:
    if stage == 'aggregation':
        return odh_data.num_group_batches(
            n, config.batch_size // config.odh.n_positive)
    return data.steps_per_epoch(n, config.batch_size)


def create(config, *, input_shape, num_train: int, num_classes: int, bits):
    """(setup, state) of an ODH run; nothing is trained."""
    odh = config.odh
    epochs = range(1, odh.warmup_epochs + config.epochs + 1)
    counts = {s: 0 for s in step_lib.STAGES}
    for e in epochs:
        stage = stage_of(e, config)
        counts[stage] += _steps_per_epoch(config, stage, num_train)
    model_key, rng = jax.random.split(jax.random.key(config.seed))
    spec = data.get_spec(config.dataset, config.get('data_dir'))
    model = model_lib.build_model(
        backbone=config.backbone or spec.backbone,
        classifier_backbone=_classifier_name(config),
        input_shape=input_shape, num_classes=num_classes, bits=bits,
        centers=odh.centers, center_hidden=odh.center_hidden,
        hash_bn=odh.hash_bn, backbone_kwargs=config.backbone_kwargs,
        classifier_kwargs=odh.classifier_kwargs,
        rngs=nnx.Rngs(params=model_key))
    if odh.classifier_pretrained:  # the ODH code's ImageNet ResNet-50
        models.load_pretrained(_classifier_name(config),
                               model.classifier.backbone,
                               odh.classifier_pretrained)
    txs = step_lib.make_optimizers(
        learning_rate=config.learning_rate, weight_decay=config.weight_decay,
        warmup_steps=counts['warmup'],
        main_steps=counts['exploration'] + counts['aggregation'],
        learn_centers=odh.learn_centers)
    graphdef, state = step_lib.init_state(model, txs, rng)
    setup = step_lib.Setup(graphdef, tuple(bits), *txs, _hyper(config),
                           max_norm=odh.max_norm)
    return setup, state


def _batches(config, stage: str, ds, epoch: int):
    if stage == 'aggregation':
        return odh_data.group_batches(
            ds, config.batch_size // config.odh.n_positive,
            n_positive=config.odh.n_positive, seed=config.seed, epoch=epoch,
            rows=parallel.process_slice(config.batch_size),
            workers=config.data_workers)
    return data.train_batches(
        ds, config.batch_size, seed=config.seed, epoch=epoch,
        rows=parallel.process_slice(config.batch_size),
        workers=config.data_workers)


def _train_epoch(step_fn, state, batches, mesh, batch_size: int):
    start = time.perf_counter()
    sums, count = None, 0
    for local in batches:
        state, metrics = step_fn(state, parallel.global_batch(
            local, mesh, batch_size))
        sums = metrics if sums is None else jax.tree.map(
            lambda a, b: a + b, sums, metrics)
        count += 1
    jax.block_until_ready(state)
    means = jax.tree.map(lambda x: np.asarray(x) / count,
                         parallel.to_host(sums))
    return state, means, time.perf_counter() - start


class _Loop:
    """One epoch: train its stage, log, maybe evaluate and checkpoint."""

    def __init__(self, config, setup, splits, mesh, top_k, mngr, log):
        self.config, self.setup, self.splits = config, setup, splits
        self.mesh, self.top_k, self.mngr, self.log = mesh, top_k, mngr, log
        self.steps = step_lib.compile_steps(setup, mesh)
        self.encode = step_lib.compile_encode(setup.graphdef)
        self.tables = step_lib.compile_centers(setup.graphdef)

    def _centers(self, state):
        return [np.asarray(t) for t in parallel.to_host(
            self.tables(state.params, state.rest))]

    def epoch(self, state, meta, best):
        config, epoch = self.config, meta['epoch'] + 1
        stage = stage_of(epoch, config)
        before = self._centers(state)
        state, means, seconds = _train_epoch(
            self.steps[stage], state,
            _batches(config, stage, self.splits.train, epoch), self.mesh,
            config.batch_size)
        if means['nonfinite'] > 0:
            raise FloatingPointError(
                f'loss became non-finite in epoch {epoch} ({stage}); the last '
                f'checkpoint (step {self.mngr.latest_step()}) is intact: '
                'lower the learning rate, then --resume.')
        after = self._centers(state)
        total = config.odh.warmup_epochs + config.epochs
        runlog.ProgressBar(0, f'epoch {epoch}/{total} ({stage})',
                           quiet=not parallel.is_main_process()).close(
            f'loss {float(means["loss"]):.4f} ({seconds:.2f} s)')
        record = _record(epoch, stage, means, seconds, self.setup.bits,
                         before, after, config.odh.warmup_epochs)
        key = 'warmup_seconds' if stage == 'warmup' else 'train_seconds'
        meta.update(epoch=epoch, **{key: meta[key] + seconds})
        main = epoch - config.odh.warmup_epochs
        last = epoch == config.odh.warmup_epochs + config.epochs
        if main == 0 or (main > 0 and (main % config.eval_every == 0
                                       or last)):
            if main > 0:
                params, rest = parallel.to_host((state.params, state.rest))
                record['map'] = evaluate_lengths(
                    self.encode, params, rest, self.splits, self.setup.bits,
                    batch_size=config.eval_batch_size, top_k=self.top_k,
                    workers=config.data_workers)
                meta, best = update_best(meta, best, record['map'],
                                          params, config.patience)
            checkpoint.save(self.mngr, int(parallel.to_host(state.step)),
                            state, best, meta)
        if parallel.is_main_process():
            runlog.append_jsonl(self.log, record)
        return state, meta, best


def _record(epoch, stage, means, seconds, bits, before, after, warmup):
    per = lambda x: {str(b): float(v) for b, v in zip(bits, x)}
    return {
        'epoch': epoch, 'stage': stage,
        'main_epoch': max(epoch - warmup, 0),
        'train_seconds': seconds, 'loss': float(means['loss']),
        'hash_center': per(means['hc']), 'asd': per(means['asd']),
        'ce': float(means['ce']),
        # Centre bits that flipped during the epoch, per length.
        'center_flips': per([int((a != b).sum())
                             for a, b in zip(before, after)]),
    }


def _new_meta(bits):
    return {'epoch': 0, 'counter': 0, 'train_seconds': 0.0,
            'warmup_seconds': 0.0, 'stopped_early': False,
            'best_map': {str(b): -1.0 for b in bits}, 'last_map': {}}


def fit(config, workdir: str, splits, bits, *, top_k=None,
        resume: bool = False) -> dict:
    """Trains ODH for the lengths ``bits`` in ``workdir``; returns a summary."""
    mesh = parallel.make_mesh(config.devices)
    parallel.check_batch_size(config.batch_size, mesh)
    os.makedirs(workdir, exist_ok=True)
    setup, state = create(
        config, input_shape=data.image_shape(splits.train),
        num_train=len(splits.train.labels),
        num_classes=splits.train.labels.shape[1], bits=bits)
    initial = jax.device_get(state.params)  # host copy: the state is donated
    best = {str(b): initial for b in bits}
    log = os.path.join(workdir, 'metrics.jsonl')
    with checkpoint.manager(workdir) as mngr:
        state, best, meta = checkpoint.restore_or_start(
            mngr, state, best, lambda: _new_meta(bits), resume=resume,
            workdir=workdir)
        state = parallel.replicate(state, mesh)
        if parallel.is_main_process():
            runlog.truncate_jsonl(log, max_epoch=meta['epoch'])
        loop = _Loop(config, setup, splits, mesh, top_k, mngr, log)
        total = config.odh.warmup_epochs + config.epochs
        while meta['epoch'] < total and not meta['stopped_early']:
            state, meta, best = loop.epoch(state, meta, best)
    return dict(meta, bits=list(bits),
                params_sha256=params_digest(parallel.to_host(state.params)))


def _check_classes(splits, n_positive: int) -> None:
    counts = np.bincount(splits.train.labels.argmax(1))
    fewest = counts[counts > 0].min()
    if fewest < n_positive:
        raise UsageError(
            f'a class has only {fewest} training images, fewer than '
            f'odh.n_positive={n_positive}; lower odh.n_positive.')


def train_and_evaluate(config, workdir: str, *, resume: bool = False) -> dict:
    """Trains and evaluates ODH as configured; writes results.json.

    Args:
      config: a ConfigDict as in ``experiments/configs/odh.py`` (its
        ``odh`` field holds the ODH settings).
      workdir: run directory (its parent must exist).
      resume: continue from the latest checkpoint in ``workdir``.

    Returns:
      The results dict written to ``workdir/results.json``.
    """
    check_odh_config(config)
    spec = data.get_spec(config.dataset, config.data_dir)
    top_k = config.top_k if config.top_k is not None else spec.top_k
    splits = data.load_splits(config.dataset, seed=config.seed,
                              data_dir=config.data_dir)
    _check_classes(splits, config.odh.n_positive)
    nhl_train.check_same_config(workdir, config, resume)
    summaries = [fit(config, run_dir, splits, bits, top_k=top_k,
                     resume=resume)
                 for bits, run_dir in nhl_train.training_runs(config, workdir)]
    results = _results(config, spec, summaries, top_k)
    if parallel.is_main_process():
        runlog.write_json_atomic(os.path.join(workdir, 'results.json'),
                                 results)
        k = 'all' if top_k is None else top_k
        print(runlog.format_table(
            results['bits'], results['map_last'], results['map'],
            title=f'odh ({config.odh.centers} centres) on {config.dataset}, '
            f'backbone {results["backbone"]}, mAP@{k}, train '
            f'{results["train_seconds"]:.1f} s'))
    return results


def _results(config, spec, summaries, top_k) -> dict:
    merged = lambda key: {b: v for s in summaries
                          for b, v in s[key].items()}
    return {
        'method': 'odh', 'dataset': config.dataset,
        'backbone': config.backbone or spec.backbone,
        'classifier_backbone': _classifier_name(config),
        'centers': config.odh.centers,
        'bits': [int(b) for b in config.bits],
        'mode': 'single_length' if config.single_length else 'nested',
        'seed': config.seed, 'top_k': top_k,
        'transition_epoch': config.odh.transition_epoch,
        'warmup_epochs': config.odh.warmup_epochs,
        'map': merged('best_map'), 'map_last': merged('last_map'),
        'train_seconds': sum(s['train_seconds'] for s in summaries),
        'warmup_seconds': sum(s['warmup_seconds'] for s in summaries),
        'params_sha256': {str(b): s['params_sha256'] for s in summaries
                          for b in s['bits']},
        'epochs': {str(b): s['epoch'] for s in summaries for b in s['bits']},
    }
