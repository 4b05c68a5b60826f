"""Seconds to import what the command line's start-up imports.

    python benchmarks/import_time.py [--rounds=7]
    python benchmarks/import_time.py --smoke      # CI: one round

Each module is imported in a fresh interpreter (``python -c``), the
modules alternated round by round so that the machine's drift hits them
alike; the table gives the median over rounds of the import's own wall
seconds, each module timed after ``numpy`` (which every one of them
imports first). ``ml_dtypes`` is listed with its version: 0.7.0's
extension alone took most of a second here, against milliseconds for
0.6.0, which is why setup.cfg skips that release.
"""

import argparse
import statistics
import subprocess
import sys

MODULES = ('ml_dtypes', 'jax', 'flax.nnx', 'optax', 'orbax.checkpoint',
           'grain', 'matplotlib.figure', 'nhl_jax.cli.train')

_PROBE = ('import time, numpy; t = time.perf_counter(); import {0}; '
          'print(time.perf_counter() - t)')


def import_seconds(module: str) -> float:
    """Wall seconds of ``import module`` in a fresh interpreter."""
    done = subprocess.run([sys.executable, '-c', _PROBE.format(module)],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--smoke', action='store_true',
                        help='CI: one round of ml_dtypes and jax')
    args = parser.parse_args()
    modules = ('ml_dtypes', 'jax') if args.smoke else MODULES
    rounds = 1 if args.smoke else args.rounds
    seconds = {m: [] for m in modules}
    for _ in range(rounds):
        for module in modules:
            seconds[module].append(import_seconds(module))
    import ml_dtypes
    print(f'median of {rounds} interleaved rounds, fresh interpreter each; '
          f'ml_dtypes {ml_dtypes.__version__}, python '
          f'{sys.version.split()[0]}')
    print('| module | import s |')
    print('|---|---|')
    for module, values in seconds.items():
        print(f'| {module} | {statistics.median(values):.3f} |')


if __name__ == '__main__':
    main()
