r"""Best mAP against the nested hash layer's init, ``--config.head_init``.

    python benchmarks/hashnet_init.py --seeds=0,1,2
    python benchmarks/hashnet_init.py --method=dpn --dataset=mnist5k \
        --bits=8,16,32,64,128 --nested --epochs=40 --seeds=0

The first trains ``--method=hashnet --dataset=digits --single_length
--bits=16 --epochs=20`` (the library recipe; issue 28's HashNet gap), the
second the default run (DPN, nested, weighting 'paper'), once per seed and
per ``--head_inits`` value:

- ``normal``: the NHL code's N(0, 0.01) weights and zero bias (default);
- ``torch``: torch's ``nn.Linear`` default, U(+-1/sqrt(fan_in)) weights
  and bias.

Prints best mAP@all per length and seed, and the mean over seeds. The
earlier ablation (torch's init in the MLP only, the bias only, ...) patched
``nnx.Linear``; it is this file at commit 623003a.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nhl_jax import cli
from nhl_jax.cli.configs import default


def best_maps(args, head_init: str, seed: int) -> dict[str, float]:
    """One run's best mAP per length (a str of the bits -> mAP)."""
    config = default.get_config()
    config.update(dict(
        method=args.method, dataset=args.dataset, head_init=head_init,
        single_length=not args.nested, bits=args.bits, epochs=args.epochs,
        seed=seed, patience=args.epochs, plots=False))
    with tempfile.TemporaryDirectory() as workdir:
        return cli.train_and_evaluate(config, workdir)['map']


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--head_inits', default='normal,torch')
    parser.add_argument('--seeds', default='0,1,2')
    parser.add_argument('--method', default='hashnet')
    parser.add_argument('--dataset', default='digits')
    parser.add_argument('--bits', default='16')
    parser.add_argument('--nested', action='store_true',
                        help='one nested run (default: single-length runs)')
    parser.add_argument('--epochs', type=int, default=20)
    args = parser.parse_args()
    args.bits = tuple(int(b) for b in args.bits.split(','))
    logging.set_verbosity(logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(',')]
    lines = ['| head_init | bits | ' + ' | '.join(f'seed {s}' for s in seeds)
             + ' | mean ± std |', '|---' * (len(seeds) + 3) + '|']
    for head_init in args.head_inits.split(','):
        start = time.perf_counter()
        runs = [best_maps(args, head_init, s) for s in seeds]
        for b in args.bits:
            maps = [run[str(b)] for run in runs]
            lines.append(
                f'| {head_init} | {b} | '
                + ' | '.join(f'{m:.3f}' for m in maps)
                + f' | {np.mean(maps):.3f} ± {np.std(maps):.3f} |')
            print(lines[-1], flush=True)
        print(f'{head_init}: {time.perf_counter() - start:.0f} s', flush=True)
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
