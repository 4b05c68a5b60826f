"""Train steps per second against the number of (fake) devices.

    python benchmarks/devices_scaling.py [--devices=1,2,4] [--backbone=cnn]

Each device count runs in its own process (the CPU device count is fixed
when JAX starts): the same full NHL step (5 lengths, weighting +
distillation, DPN) over a ``('data',)`` mesh, global batch 64. On one CPU,
"devices" share the same cores, so this measures the overhead of the
partitioned program, not a speed-up; on a multi-GPU host run it with real
devices (``--devices`` counts them).
"""

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(num_devices: int, backbone: str, steps: int) -> None:
    import jax
    # Fakes CPU devices; on a GPU host the mesh uses the real accelerators.
    jax.config.update('jax_num_cpu_devices', num_devices)
    import numpy as np
    sys.path.insert(0, ROOT)
    from nhl_jax import cli, parallel, train
    from nhl_jax.cli.configs import default
    config = default.get_config()
    config.backbone = backbone
    shape = (28, 28, 1) if backbone == 'cnn' else (8, 8, 1)
    info = train.DataInfo(shape, 10, {'train': 2000, 'query': 1,
                                      'database': 1})
    setup, state = cli.create_train_state(cli.resolve(config), info)
    mesh = parallel.make_mesh(num_devices)
    compiled = train.compile_step(setup.steps['train'], mesh)

    def step(state, batch):
        return compiled(state, batch, None)

    state = parallel.replicate(state, mesh)
    rng = np.random.default_rng(0)
    batch = parallel.global_batch({
        'image': rng.integers(0, 256, (64, *shape), dtype=np.uint8),
        'label': np.eye(10, dtype=np.float32)[rng.integers(0, 10, 64)],
        'index': rng.permutation(2000)[:64].astype(np.int32)}, mesh, 64)
    for _ in range(3):
        state, _ = step(state, batch)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, _ = step(state, batch)
    jax.block_until_ready(state)
    print(steps / (time.perf_counter() - start))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--devices', default='1,2,4')
    parser.add_argument('--backbone', default='cnn')
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--child', type=int, default=None)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.backbone, args.steps)
        return
    counts = [int(d) for d in args.devices.split(',')]
    rates = {}
    for n in counts:
        out = subprocess.run(
            [sys.executable, __file__, f'--child={n}',
             f'--backbone={args.backbone}', f'--steps={args.steps}'],
            check=True, capture_output=True, text=True).stdout
        rates[n] = float(out.strip().splitlines()[-1])
    print(f'{args.backbone}, global batch 64, full NHL step (DPN, 5 lengths)')
    print('| devices | steps / s | vs 1 device |')
    print('|---|---|---|')
    for n in counts:
        print(f'| {n} | {rates[n]:.1f} | {rates[n] / rates[counts[0]]:.2f} |')


if __name__ == '__main__':
    main()
