"""What the nested NHL step costs to build: trace, lower, compile per M.

    python benchmarks/compile_lengths.py [--lengths 2,5,10] [--repeats 3]
    python benchmarks/compile_lengths.py --smoke      # M = 1, 2, once

For the default run's model (mnist5k, its default backbone, DPN, weighting
'paper', distillation 0.1) with M code lengths (8, 16, ... in steps of 8
for M = 10; the default 8/16/32/64/128 for M = 5; 8/16 for M = 2) and, as
the reference, one length alone (the single-length step of 64 bits),
times the three stages JAX runs before the first step: tracing to a
jaxpr (``jit(step).trace``), lowering to StableHLO (``.lower()``) and
XLA's compile (``.compile()``). Every repeat starts from cleared caches
(``jax.clear_caches``), and the persistent compilation cache is off, so
each stage is done in full; medians over ``--repeats``, after one
untimed build of each path (JAX's own first-use costs).

Each M is timed on both paths of the NHL objective, alternated repeat
by repeat: ``stacked`` (``--config.stack_lengths=true``: DPN has a
masked form, so the base loss, its vjp and the distillation are traced
once in a vmap over lengths) and ``unrolled`` (the default: M base
losses, M vector-Jacobian products for the weighting rule, M - 1
distillation terms). A single length always takes the unrolled path.
"""

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nhl_jax import train
from nhl_jax.cli import config as config_lib
from nhl_jax.cli import registry
from nhl_jax.cli.configs import default
from nhl_jax.train import step as step_lib

_BITS = {1: (64,), 2: (8, 16), 5: (8, 16, 32, 64, 128),
         10: tuple(range(8, 88, 8))}


def _stages(bits, dataset: str, image_shape,
            stack: bool) -> dict[str, float]:
    """Seconds of trace, lower and compile of one fresh train step."""
    config = default.get_config()
    config.update({'dataset': dataset, 'bits': bits, 'stack_lengths': stack})
    spec = config_lib.resolve(config)
    info = train.DataInfo(tuple(image_shape), 10, {'train': 1000})
    setup, state = registry.create_train_state(spec, info)
    fn = next(iter(setup.steps.values()))  # NHL has one stage
    batch = {'image': jnp.zeros((spec.batch_size, *image_shape), jnp.uint8),
             'label': jnp.zeros((spec.batch_size, 10), jnp.float32),
             'index': jnp.arange(spec.batch_size, dtype=jnp.int32)}
    jitted = step_lib.compile_step(fn)
    jax.clear_caches()
    times = {}
    start = time.perf_counter()
    traced = jitted.trace(state, batch, None)
    times['trace'] = time.perf_counter() - start
    start = time.perf_counter()
    lowered = traced.lower()
    times['lower'] = time.perf_counter() - start
    start = time.perf_counter()
    lowered.compile()
    times['compile'] = time.perf_counter() - start
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--lengths', default='2,5,10')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--smoke', action='store_true')
    args = parser.parse_args()
    jax.config.update('jax_compilation_cache_dir', None)
    counts = [1, *map(int, args.lengths.split(','))]
    dataset, shape = 'mnist5k', (28, 28, 1)
    if args.smoke:
        counts, args.repeats, dataset, shape = [1, 2], 1, 'digits', (8, 8, 1)
    for stack in (True, False):  # JAX's own first-use costs, untimed
        _stages(_BITS[2], dataset, shape, stack)
    print('| M | bits | path | trace s | lower s | compile s | total s |')
    print('|---|---|---|---:|---:|---:|---:|')
    for m in counts:
        paths = ('unrolled',) if m == 1 else ('stacked', 'unrolled')
        runs = {path: [] for path in paths}
        for _ in range(args.repeats):
            for path in paths:
                runs[path].append(_stages(_BITS[m], dataset, shape,
                                          path == 'stacked'))
        for path, times in runs.items():
            med = {k: statistics.median(r[k] for r in times)
                   for k in times[0]}
            label = f'{m} (single)' if m == 1 else str(m)
            bits = ','.join(map(str, _BITS[m]))
            print(f'| {label} | {bits} | {path} | {med["trace"]:.2f} | '
                  f'{med["lower"]:.2f} | {med["compile"]:.2f} | '
                  f'{sum(med.values()):.2f} |', flush=True)


if __name__ == '__main__':
    main()
