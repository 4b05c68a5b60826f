"""Milliseconds per train step: plain nested, + distillation, + weighting.

    python benchmarks/step_time.py [--method=dpn] [--backbone=cnn] [--rounds=5]

Times the jitted ``nhl_jax.train.train_step`` of the small MNIST CNN
(conv32-pool-conv64-pool-fc256, batch 64, lengths 8/16/32/64/128) on a fixed
random batch. Variants are interleaved round by round, so machine noise hits
them alike, and each is reported as the median over rounds with its ratio to
the plain nested step. Reference (ecosystem.md / issue 4, same CNN on this
2-core CPU): the released PyTorch NHL code takes ~42 ms per plain nested
step and ~56 ms with weighting + distillation.
"""

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.configs import default  # noqa: E402
from nhl_jax import train  # noqa: E402

VARIANTS = {  # name: (bits, weighting, distill_weight)
    'single length (64 bits)': ((64,), 'none', 0.0),
    'nested, plain': ((8, 16, 32, 64, 128), 'none', 0.0),
    'nested + distillation': ((8, 16, 32, 64, 128), 'none', 0.1),
    'nested + weighting (paper)': ((8, 16, 32, 64, 128), 'paper', 0.0),
    'nested + weighting (released)': ((8, 16, 32, 64, 128), 'released', 0.0),
    'nested + weighting + distillation': ((8, 16, 32, 64, 128), 'paper', 0.1),
}


def _batch(shape, classes, batch, seed=0):
    rng = np.random.default_rng(seed)
    return {
        'image': rng.integers(0, 256, (batch, *shape), dtype=np.uint8),
        'label': np.eye(classes, dtype=np.float32)[
            rng.integers(0, classes, batch)],
        'index': rng.permutation(2000)[:batch].astype(np.int32),
    }


def _stepper(args, bits, weighting, distill_weight):
    config = default.get_config()
    config.method, config.backbone = args.method, args.backbone
    config.weighting, config.distill_weight = weighting, distill_weight
    config.bits = bits
    setup, state = train.create_train_state(
        config, input_shape=args.shape, num_train=2000, num_classes=10)
    step = train.compile_train_step(setup)
    batch = _batch(args.shape, 10, args.batch_size)
    for _ in range(3):  # compile and warm up
        state, _ = step(state, batch)
    jax.block_until_ready(state)
    return step, state, batch


def _time(step, state, batch, steps):
    start = time.perf_counter()
    for _ in range(steps):
        state, _ = step(state, batch)
    jax.block_until_ready(state)
    return state, 1e3 * (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--method', default='dpn')
    parser.add_argument('--backbone', default='cnn')
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--steps', type=int, default=20)
    args = parser.parse_args()
    args.shape = (28, 28, 1) if args.backbone == 'cnn' else (8, 8, 1)
    runs = {name: list(_stepper(args, *v)) for name, v in VARIANTS.items()}
    times = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, run in runs.items():
            run[1], ms = _time(*run, args.steps)
            times[name].append(ms)
    plain = statistics.median(times['nested, plain'])
    print(f'{args.method}, {args.backbone}, batch {args.batch_size}, '
          f'{jax.devices()[0].device_kind}, median of {args.rounds} rounds x '
          f'{args.steps} steps')
    print('| variant | ms / step | vs plain nested |')
    print('|---|---|---|')
    for name, values in times.items():
        ms = statistics.median(values)
        print(f'| {name} | {ms:.1f} | {ms / plain:.3f} |')


if __name__ == '__main__':
    main()
