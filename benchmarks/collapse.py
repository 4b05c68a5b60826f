r"""How codes collapse: the database's mean code epoch by epoch.

    python benchmarks/collapse.py --methods=dpsh,dsh,dsh:pairs=batch \
        --dataset=digits --bits=16 --epochs=8

Each method (a spec as in results_table.py) trains one run, stopped and
resumed after every epoch (resume is exact); after each epoch the
database is encoded with the last model and the script prints, per
epoch: mAP@all, the share of one-sided bits (>= 95 % of the database on
one sign), the size of the mean code m = mean_i sign(u_i) (rms over the
bits: 0 for balanced bits, 1 when every code is the same), the cosine of
m with the previous epoch's m (-1: the common part flips sign from epoch
to epoch) and the number of distinct codes.
"""

import argparse
import os
import sys
import tempfile

import numpy as np
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import results_table
from nhl_jax import cli
from nhl_jax.cli.configs import default


def trace(spec: str, args) -> list[dict]:
    """One row per epoch of one method."""
    name, kwargs = results_table.parse_method(spec)
    bits = int(args.bits)
    rows, previous = [], None
    with tempfile.TemporaryDirectory() as workdir:
        for epoch in range(1, args.epochs + 1):
            config = default.get_config()
            config.update(dict(method=name, dataset=args.dataset,
                               bits=(bits,), seed=args.seed, epochs=epoch,
                               eval_every=1, patience=args.epochs))
            config.loss_kwargs = kwargs
            results = cli.train_and_evaluate(config, workdir,
                                             resume=epoch > 1)
            codes = results_table.database_codes(workdir, (bits,))[bits]
            mean = codes.mean(0)  # [K]
            cosine = (float(mean @ previous / (np.linalg.norm(mean)
                                               * np.linalg.norm(previous)
                                               + 1e-12))
                      if previous is not None else float('nan'))
            rows.append({
                'epoch': epoch, 'map': results['map_last'][str(bits)],
                'one_sided': results_table.one_sided(codes),
                'mean_rms': float(np.sqrt(np.mean(mean ** 2))),
                'cosine': cosine,
                'distinct': len(np.unique(codes, axis=0))})
            previous = mean
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--methods', default='dpsh,dsh,dsh:pairs=batch')
    parser.add_argument('--dataset', default='digits')
    parser.add_argument('--bits', default='16')
    parser.add_argument('--epochs', type=int, default=8)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    tables = {spec: trace(spec, args) for spec in args.methods.split(',')}
    print(f'\n{args.dataset}, one length of {args.bits} bits, seed '
          f'{args.seed}; database codes of the last model after each epoch\n')
    print('| method | epoch | mAP | one-sided | rms of mean code | cos to '
          'previous | distinct |')
    print('|---|---|---|---|---|---|---|')
    for spec, rows in tables.items():
        for r in rows:
            print(f'| {spec} | {r["epoch"]} | {r["map"]:.3f} | '
                  f'{r["one_sided"]:.0%} | {r["mean_rms"]:.2f} | '
                  f'{r["cosine"]:+.2f} | {r["distinct"]} |')


if __name__ == '__main__':
    main()
