r"""Per-length mAP of several methods, one nested run each, as a markdown table.

    python benchmarks/results_table.py --dataset=digits \
        --methods=csq,dch,dpn,dsh,dtsh,lcdsh,mdsh

Each method is trained with the default config (full NHL: dominance weighting
'paper' and distillation 0.1) in a temporary directory; extra ``--epochs`` /
``--bits`` / ``--weighting`` override the config for all of them.
"""

import argparse
import os
import sys
import tempfile

from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.configs import default
from nhl_jax import train


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', default='digits')
    parser.add_argument('--methods', default='csq,dch,dpn,dsh,dtsh,lcdsh,mdsh')
    parser.add_argument('--bits', default='8,16,32,64,128')
    parser.add_argument('--epochs', type=int, default=None)
    parser.add_argument('--weighting', default=None)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    bits = tuple(int(b) for b in args.bits.split(','))
    rows = []
    for method in args.methods.split(','):
        config = default.get_config()
        config.update(dict(method=method, dataset=args.dataset, bits=bits,
                           seed=args.seed))
        if args.epochs:
            config.epochs = args.epochs
        if args.weighting:
            config.weighting = args.weighting
        with tempfile.TemporaryDirectory() as workdir:
            rows.append(train.train_and_evaluate(config, workdir))
    print(f'\n{args.dataset}, nested (one run per method), weighting '
          f'{rows[0]["weighting"]}, distill {rows[0]["distill_weight"]}, '
          f'seed {args.seed}; best mAP@all per length (last in brackets)\n')
    print('| method | ' + ' | '.join(f'{b} bits' for b in bits)
          + ' | train s |')
    print('|---' * (len(bits) + 2) + '|')
    for r in rows:
        cells = [f'{r["map"][str(b)]:.3f} ({r["map_last"][str(b)]:.3f})'
                 for b in bits]
        print(f'| {r["method"]} | ' + ' | '.join(cells)
              + f' | {r["train_seconds"]:.1f} |')


if __name__ == '__main__':
    main()
