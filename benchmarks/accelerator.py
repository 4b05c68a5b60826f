"""Train-step and evaluation throughput on the default device, fp32 vs bf16.

    python benchmarks/accelerator.py                  # the full table
    python benchmarks/accelerator.py --smoke          # CI: the cnn, seconds
    python benchmarks/accelerator.py --backbones=cnn --batches=64

Prints the device, then per backbone (cnn at 28x28; resnet50 and vit_b16 at
224x224, random weights, synthetic uint8 batches), batch size and compute
dtype: ms per jitted NHL train step (dpn, lengths 8-128, full NHL: paper
weighting + distillation) and images/s; the overhead of that step over
plain nested (no weighting, no distillation); and evaluation throughput:
images/s encoded and seconds for the mAP of 1,000 queries against 10,000
codes. float32 and bfloat16 steps are timed in interleaved blocks (this
machine drifts, so only ratios from interleaved blocks mean anything);
each number is the median over blocks.
"""

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nhl_jax import cli, retrieval, train
from nhl_jax.cli.configs import default

# backbone -> (image shape, backbone_kwargs).
FULL = {
    'cnn': ((28, 28, 1), {}),
    'resnet50': ((224, 224, 3), {}),
    'vit_b16': ((224, 224, 3), {}),
}
SMOKE = {
    'cnn': ((28, 28, 1), {}),
    'resnet50': ((32, 32, 3), {'input_size': None}),
    'vit_b16': ((32, 32, 3), {'patch': 8, 'width': 32, 'depth': 2,
                              'heads': 2, 'mlp': 64, 'input_size': 32}),
}
BITS = (8, 16, 32, 64, 128)


def _stepper(backbone, shape, kwargs, batch, dtype, weighting, distill):
    config = default.get_config()
    config.update(dict(method='dpn', backbone=backbone, bits=BITS,
                       batch_size=batch, compute_dtype=dtype,
                       weighting=weighting, distill_weight=distill))
    config.backbone_kwargs = dict(kwargs)
    info = train.DataInfo(shape, 10, {'train': 4 * batch, 'query': 1,
                                      'database': 1})
    setup, state = cli.create_train_state(cli.resolve(config), info)
    step = train.compile_step(setup.steps['train'])
    rng = np.random.default_rng(0)
    data = jax.device_put({
        'image': rng.integers(0, 256, (batch, *shape), dtype=np.uint8),
        'label': np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)],
        'index': rng.permutation(4 * batch)[:batch].astype(np.int32)})
    for _ in range(2):  # compile and warm up
        state, _ = step(state, data, None)
    jax.block_until_ready(state)
    return {'step': step, 'state': state, 'batch': data, 'setup': setup}


def _block(runner, steps: int) -> float:
    """ms per step over ``steps`` steps (the state is threaded)."""
    state = runner['state']
    start = time.perf_counter()
    for _ in range(steps):
        state, _ = runner['step'](state, runner['batch'], None)
    jax.block_until_ready(state)
    runner['state'] = state
    return 1e3 * (time.perf_counter() - start) / steps


def _interleaved(runners: dict, steps: int, blocks: int) -> dict:
    times = {name: [] for name in runners}
    for _ in range(blocks):
        for name, runner in runners.items():
            times[name].append(_block(runner, steps))
    return times


def _encode_rate(runner, blocks: int) -> float:
    """Images/s of the jitted eval-mode encoder on the step's batch."""
    setup, state = runner['setup'], runner['state']
    encode = train.compile_encode(setup)
    images = runner['batch']['image']
    jax.block_until_ready(encode(state.params, state.rest, images))
    rates = []
    for _ in range(blocks):
        start = time.perf_counter()
        jax.block_until_ready(encode(state.params, state.rest, images))
        rates.append(images.shape[0] / (time.perf_counter() - start))
    return statistics.median(rates)


def _map_seconds(queries: int, items: int) -> float:
    rng = np.random.default_rng(0)
    q = np.where(rng.random((queries, 64)) < 0.5, -1, 1).astype(np.int8)
    db = np.where(rng.random((items, 64)) < 0.5, -1, 1).astype(np.int8)
    labels = np.eye(10, dtype=np.float32)
    start = time.perf_counter()
    retrieval.mean_average_precision(
        q, labels[rng.integers(0, 10, queries)], db,
        labels[rng.integers(0, 10, items)])
    return time.perf_counter() - start


def run(backbones: dict, batches, *, steps: int, blocks: int,
        queries: int, items: int) -> list[dict]:
    """Every row of the table (one per backbone, batch and dtype)."""
    rows = []
    for name, (shape, kwargs) in backbones.items():
        for batch in batches:
            runners = {
                (dtype, kind): _stepper(name, shape, kwargs, batch, dtype,
                                        *mode)
                for dtype in ('float32', 'bfloat16')
                for kind, mode in (('nhl', ('paper', 0.1)),
                                   ('plain', ('none', 0.0)))}
            times = _interleaved(runners, steps, blocks)
            for dtype in ('float32', 'bfloat16'):
                full = times[(dtype, 'nhl')]
                ratios = [a / b for a, b in zip(full,
                                                times[(dtype, 'plain')])]
                ms = statistics.median(full)
                rows.append({
                    'backbone': name, 'shape': shape, 'batch': batch,
                    'dtype': dtype, 'ms': ms, 'images_s': 1e3 * batch / ms,
                    'overhead': statistics.median(ratios) - 1.0,
                    'encode_s': _encode_rate(runners[(dtype, 'nhl')],
                                             blocks)})
    seconds = _map_seconds(queries, items)
    for row in rows:
        row['map_s'] = seconds
    return rows


def table(rows, device: str, queries: int, items: int) -> str:
    """The Markdown table."""
    seconds = rows[0]['map_s'] if rows else float('nan')
    lines = [f'device: {device}',
             (f'mAP@all of {queries:,} queries x {items:,} 64-bit codes: '
              f'{seconds:.2f} s'),
             ('| backbone | input | batch | dtype | ms / step | images/s | '
              'NHL over plain nested | encode images/s |'),
             '|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(
            f'| {r["backbone"]} | {"x".join(map(str, r["shape"]))} | '
            f'{r["batch"]} | {r["dtype"]} | {r["ms"]:.1f} | '
            f'{r["images_s"]:,.0f} | {100 * r["overhead"]:+.1f} % | '
            f'{r["encode_s"]:,.0f} |')
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--backbones', default=None,
                   help=f'default: {",".join(FULL)} (--smoke: cnn)')
    p.add_argument('--batches', default='64,256')
    p.add_argument('--steps', type=int, default=10, help='steps per block')
    p.add_argument('--blocks', type=int, default=5)
    p.add_argument('--smoke', action='store_true',
                   help='CI: small inputs, batch 8, one block of 2 steps')
    args = p.parse_args(argv)
    shapes = SMOKE if args.smoke else FULL
    names = (args.backbones or ('cnn' if args.smoke else ','.join(FULL))
             ).split(',')
    unknown = sorted(set(names) - set(shapes))
    if unknown:
        p.error(f'unknown backbone(s) {unknown}; choose from {list(shapes)}')
    batches = (8,) if args.smoke else tuple(
        int(b) for b in args.batches.split(','))
    steps, blocks = (2, 1) if args.smoke else (args.steps, args.blocks)
    queries, items = (100, 1000) if args.smoke else (1000, 10000)
    device = f'{jax.devices()[0].device_kind} ({jax.default_backend()})'
    rows = run({n: shapes[n] for n in names}, batches, steps=steps,
               blocks=blocks, queries=queries, items=items)
    print(table(rows, device, queries, items))
    return rows


if __name__ == '__main__':
    main()
