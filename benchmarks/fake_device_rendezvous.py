"""Why a 4-fake-device run can abort in an all-reduce, and the fix.

    python benchmarks/fake_device_rendezvous.py [--threads default,8]
        [--repeats 3] [--devices 4] [--steps 400] [--timeout 30]

Each trial is a fresh process with N fake CPU devices that dispatches
``--steps`` data-parallel steps (a per-device matmul and an all-reduce
of the weight gradient) from its one Python thread, with no host read
until the end, so the host runs ahead of the devices; XLA's stuck
warning comes after 5 s and its abort after ``--timeout`` s. ``--threads``
lists sizes of XLA's CPU client thread pool (``PJRT_NPROC``; 'default'
leaves it unset: max(cores, devices)).

What happens (issue 32, gdb stacks of a stuck trial and of a stuck
``run.py --method=mah --devices=4``): the client runs every device's part
of a program on that pool; once a device has 32 programs in flight, the
next program's dispatch task waits on the device's semaphore inside a
pool thread. With 4 threads for 4 devices, 3 parts of the oldest
collective start, wait for the fourth, and the fourth never gets a
thread: "Expected 4 threads to join the rendezvous, but only 3 of them
arrived". Nothing else dispatches; it is the fake-device setup, not an
order of programs across host threads. 2 N threads leave N for one
collective whatever the N dispatch tasks hold (tests/support's
``use_cpu_devices``).

Prints one row per thread setting: trials that finished, that aborted,
and their median seconds.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

STUCK_FLAGS = ('--xla_cpu_collective_call_warn_stuck_timeout_seconds=5 '
               '--xla_cpu_collective_call_terminate_timeout_seconds={}')


def _trial(devices: int, steps: int, size: int = 256) -> None:
    """One child: ``steps`` collective programs dispatched back to back."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    jax.config.update('jax_num_cpu_devices', devices)
    mesh = Mesh(np.array(jax.devices()), ('data',))

    @jax.jit
    def step(w, x):
        h = jnp.tanh(x @ w)  # [B / N per device, D]
        return w - 1e-3 * (x.T @ h) / x.shape[0]  # an all-reduce over rows

    w = jax.device_put(jnp.eye(size), NamedSharding(mesh, P()))
    x = jax.device_put(jnp.ones((devices * size, size)),
                       NamedSharding(mesh, P('data')))
    for _ in range(steps):
        w = step(w, x)
    w.block_until_ready()


def _run(threads: str, args) -> tuple[bool, float]:
    env = dict(os.environ, XLA_FLAGS=STUCK_FLAGS.format(args.timeout))
    env.pop('PJRT_NPROC', None)
    if threads != 'default':
        env['PJRT_NPROC'] = threads
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, '--child', '--devices', str(args.devices),
         '--steps', str(args.steps)], env=env, capture_output=True,
        text=True, timeout=args.timeout + 300, check=False)
    return done.returncode == 0, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', default='default,8')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--devices', type=int, default=4)
    parser.add_argument('--steps', type=int, default=400)
    parser.add_argument('--timeout', type=int, default=30)
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _trial(args.devices, args.steps)
        return
    settings = args.threads.split(',')
    trials = {t: [] for t in settings}
    for _ in range(args.repeats):  # the settings interleaved
        for threads in settings:
            trials[threads].append(_run(threads, args))
    print('| PJRT_NPROC | finished | aborted | median s |')
    print('|---|---:|---:|---:|')
    for threads, runs in trials.items():
        ok = sum(passed for passed, _ in runs)
        median = statistics.median(seconds for _, seconds in runs)
        print(f'| {threads} | {ok} | {len(runs) - ok} | {median:.1f} |')


if __name__ == '__main__':
    main()
