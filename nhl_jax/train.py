"""Training: every code length in one run (NHL) or one length (baseline).

The flax-examples layout: ``create_train_state``, a pure ``train_step``
compiled once with ``jax.jit`` (NNX modules are split into a static graphdef
and state pytrees, and merged inside the step), and
``train_and_evaluate(config, workdir)``.
"""

import functools
import json
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from nhl_jax import checkpoint, data, evaluate, losses, models, runlog
from nhl_jax import weighting as weighting_lib
from nhl_jax.config import UsageError, check_config
from nhl_jax.nested import check_bits
from nhl_jax.objective import NHLObjective, nhl_objective
from nhl_jax.types import Array


class TrainState(NamedTuple):
    """Everything a train step reads and writes, as one pytree."""

    step: Array  # [] int32
    params: nnx.State  # trainable parameters (nnx.Param)
    rest: nnx.State  # other model variables (e.g. batch statistics)
    opt_state: optax.OptState
    loss_states: tuple[Any, ...]  # one base-loss state per length
    weighting: weighting_lib.DominanceState  # counters of the weighting
    rng: Array  # [2] uint32 raw key, folded with the step


class Setup(NamedTuple):
    """The static parts of a run, built once from the config."""

    graphdef: nnx.GraphDef
    objective: NHLObjective
    tx: optax.GradientTransformation
    bits: tuple[int, ...]


def make_optimizer(config) -> optax.GradientTransformation:
    """Adam with coupled L2 weight decay (torch ``Adam(weight_decay=...)``)."""
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.adam(config.learning_rate),
    )


def create_train_state(config, *, input_shape, num_train: int,
                       num_classes: int, bits=None) -> tuple[Setup, TrainState]:
    """Builds the model, optimizer, objective and initial state.

    Args:
      config: the run's ConfigDict (validated by ``check_config``).
      input_shape: (H, W, C) of the images.
      num_train: N, rows of the memory banks.
      num_classes: C.
      bits: code lengths; defaults to ``config.bits``.

    Returns:
      ``(setup, state)``.
    """
    bits = check_bits(tuple(config.bits) if bits is None else bits)
    model_key, loss_key, rng = jax.random.split(jax.random.key(config.seed), 3)
    rngs = nnx.Rngs(params=model_key)
    backbone = models.get_backbone(
        config.backbone or data.get_spec(config.dataset).backbone,
        input_shape, rngs=rngs)
    model = models.HashNet(backbone, bits, rngs=rngs)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss = losses.get(config.method, **dict(config.loss_kwargs))
    objective = nhl_objective(
        loss, bits, distill_weight=config.distill_weight,
        weighting=config.weighting, topology=config.topology)
    tx = make_optimizer(config)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        rest=rest,
        opt_state=tx.init(params),
        loss_states=objective.init(loss_key, num_train=num_train,
                                   num_classes=num_classes),
        weighting=weighting_lib.init_state(len(bits)),
        rng=jax.random.key_data(rng),
    )
    return Setup(graphdef, objective, tx, bits), state


def train_step(state: TrainState, batch, *, setup: Setup):
    """One optimisation step on a batch ``{image, label, index}``.

    Args:
      state: the current ``TrainState``.
      batch: image [B, H, W, C] uint8, label [B, C] float, index [B] int.
      setup: the static ``Setup``.

    Returns:
      ``(new_state, metrics)``; metrics hold the total and the [M] per-length
      losses, distillation terms and weights.
    """

    def loss_fn(params):
        model = nnx.merge(setup.graphdef, params, state.rest)
        features, h = model(batch['image'])
        total, (loss_states, metrics) = setup.objective.apply(
            state.loss_states, h, batch['label'], batch['index'],
            features=features)
        return total, (loss_states, metrics, nnx.state(model, nnx.Not(nnx.Param)))

    (total, (loss_states, metrics, rest)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
    new_state = state._replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        rest=rest,
        opt_state=opt_state,
        loss_states=loss_states,
        weighting=weighting_lib.update_state(state.weighting,
                                             metrics.dominance),
    )
    return new_state, {
        'loss': total,
        'losses': metrics.losses,
        'distill': metrics.distill,
        'weights': metrics.weights,
    }


def compile_train_step(setup: Setup):
    """``train_step`` jitted once for this setup, with the state donated."""
    return jax.jit(functools.partial(train_step, setup=setup),
                   donate_argnums=0)


def compile_encode(setup: Setup):
    """A jitted ``(params, rest, images) -> h [B, K_max]`` in eval mode."""

    @jax.jit
    def encode(params, rest, images):
        model = nnx.merge(setup.graphdef, params, rest)
        model.eval()
        return model(images)[1]

    return encode


def encode_dataset(encode, params, rest, ds, batch_size: int) -> np.ndarray:
    """Continuous outputs [N, K_max] of a whole dataset, in order."""
    outputs = []
    for batch in data.eval_batches(ds, batch_size):
        h = np.asarray(encode(params, rest, batch['image']))
        outputs.append(h[: batch['valid']])
    return np.concatenate(outputs)


def evaluate_lengths(encode, params, rest, splits, bits, *, batch_size: int,
                     top_k=None) -> dict[str, float]:
    """mAP of every code length; each length's codes are prefixes.

    Query and database are only encoded here: evaluation never touches the
    training losses' memory banks.
    """
    q = evaluate.sign_codes(
        encode_dataset(encode, params, rest, splits.query, batch_size))
    db = evaluate.sign_codes(
        encode_dataset(encode, params, rest, splits.database, batch_size))
    return {
        str(b): float(evaluate.mean_average_precision(
            q[:, :b], splits.query.labels, db[:, :b], splits.database.labels,
            top_k=top_k))
        for b in bits
    }


def _train_epoch(step_fn, state, ds, config, epoch: int, desc: str):
    """Runs one epoch; returns (state, per-epoch mean metrics, seconds)."""
    steps = data.steps_per_epoch(len(ds.labels), config.batch_size)
    bar = runlog.ProgressBar(steps, desc)
    start = time.perf_counter()
    sums = None
    batches = data.train_batches(ds, config.batch_size, seed=config.seed,
                                 epoch=epoch)
    for i, batch in enumerate(batches):
        state, metrics = step_fn(state, batch)
        # Accumulate on device; read back rarely so steps stay asynchronous.
        sums = metrics if sums is None else jax.tree.map(jnp.add, sums,
                                                         metrics)
        if (i + 1) % 10 == 0:
            bar.update(i + 1, float(metrics['loss']))
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    means = jax.tree.map(lambda x: np.asarray(x) / steps, sums)
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
    """NHL early stopping: the counter resets whenever ANY length improves."""
    improved = [b for b, v in maps.items() if v > meta['best_map'][b]]
    host = jax.device_get(params) if improved else None
    for b in improved:
        meta['best_map'][b] = maps[b]
        best[b] = host
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
    improving.
    """
    os.makedirs(workdir, exist_ok=True)
    setup, state = create_train_state(
        config, input_shape=splits.train.images.shape[1:],
        num_train=len(splits.train.labels),
        num_classes=splits.train.labels.shape[1], bits=bits)
    best = {str(b): state.params for b in setup.bits}
    log_path = os.path.join(workdir, 'metrics.jsonl')
    with checkpoint.manager(workdir) as mngr:
        state, best, meta = _restore_or_start(mngr, state, best, setup.bits,
                                              resume, workdir)
        runlog.truncate_jsonl(log_path, max_epoch=meta['epoch'])
        step_fn, encode = compile_train_step(setup), compile_encode(setup)
        epoch = meta['epoch']
        while epoch < config.epochs and not meta['stopped_early']:
            epoch += 1
            before = jax.device_get(state.weighting)
            desc = f'epoch {epoch}/{config.epochs} bits {list(setup.bits)}'
            state, means, seconds = _train_epoch(step_fn, state, splits.train,
                                                 config, epoch, desc)
            _check_finite(means, setup.bits, epoch, int(state.step))
            meta['train_seconds'] += seconds
            meta['epoch'] = epoch
            record = _epoch_record(epoch, means, seconds,
                                   jax.device_get(state.weighting), before,
                                   setup.bits)
            if epoch % config.eval_every == 0 or epoch == config.epochs:
                maps = evaluate_lengths(
                    encode, state.params, state.rest, splits, setup.bits,
                    batch_size=config.eval_batch_size, top_k=top_k)
                meta, best = _update_best(meta, best, maps, state.params,
                                          config.patience)
                record['map'] = maps
                checkpoint.save(mngr, int(state.step), state, best, meta)
            runlog.append_jsonl(log_path, record)
    return dict(meta, bits=list(setup.bits))


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
    runlog.write_json_atomic(path, json.loads(json.dumps(config.to_dict())))


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
    runlog.write_json_atomic(os.path.join(workdir, 'results.json'), results)
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
