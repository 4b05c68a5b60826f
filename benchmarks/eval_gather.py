"""What gathering encoded codes costs as the number of batches grows.

    python benchmarks/eval_gather.py [--rows 1000000] [--batch 500]
        [--bits 128] [--devices 4] [--no-baseline]

On fake CPU devices, builds what the sharded encoder returns per global
batch (packed signs [B, W / 8] uint8 and NaN flags [B] bool, split over
the batch) for N rows, and times their gather into host arrays:

- today (``nhl_jax.train.evaluation``): each batch's rows copied to the
  host (``_local_rows``) and concatenated there; nothing is compiled in
  one process (several all-gather once, one program whatever the batch
  count);
- the path it replaced (unless ``--no-baseline``): one jitted
  concatenation with one operand per batch, whose compile time grows with
  the number of batches.
"""

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _batches(rows, batch, bits, mesh):
    """Per global batch: (packed [B, W / 8] uint8, [B] bool), sharded.

    Distinct arrays: a jax.Array keeps its host copy once made.
    """
    from nhl_jax import parallel
    sharding = parallel.batch_sharding(mesh)
    rng = np.random.default_rng(0)
    return [(jax.device_put(rng.integers(0, 256, (batch, bits // 8),
                                         dtype=np.uint8), sharding),
             jax.device_put(np.zeros(batch, bool), sharding))
            for _ in range(-(-rows // batch))]


def _today(outputs):
    from nhl_jax.train import evaluation
    start = time.perf_counter()
    blocks = [evaluation._local_rows(out) for out in outputs]
    jax.tree.map(lambda *rows: np.concatenate(rows), *blocks)
    return time.perf_counter() - start


def _one_operand_per_batch(outputs, mesh):
    """(compile, run) seconds of the replaced jitted concatenation."""
    import jax.numpy as jnp

    from nhl_jax import parallel
    gather = jax.jit(lambda outs: jax.tree.map(
        lambda *rows: jnp.concatenate(rows), *outs),
        out_shardings=parallel.replicated(mesh))
    start = time.perf_counter()
    compiled = gather.lower(outputs).compile()
    middle = time.perf_counter()
    jax.block_until_ready(compiled(outputs))
    return middle - start, time.perf_counter() - middle


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rows', type=int, default=1_000_000)
    parser.add_argument('--batch', type=int, default=500)
    parser.add_argument('--bits', type=int, default=128)
    parser.add_argument('--devices', type=int, default=4)
    parser.add_argument('--no-baseline', action='store_true')
    args = parser.parse_args()
    jax.config.update('jax_num_cpu_devices', args.devices)
    from nhl_jax import parallel
    mesh = parallel.make_mesh(args.devices)
    outputs = _batches(args.rows, args.batch, args.bits, mesh)
    print(f'{len(outputs)} batches of {args.batch} rows, {args.bits} bits, '
          f'{args.devices} devices')
    print(f'today: gather {_today(outputs):.2f} s, nothing compiled')
    if not args.no_baseline:
        compile_s, run_s = _one_operand_per_batch(outputs, mesh)
        print(f'one operand per batch: compile {compile_s:.2f} s, '
              f'run {run_s:.2f} s')


if __name__ == '__main__':
    main()
