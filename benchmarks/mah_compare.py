"""MAH (flat, cascade, nested heads) against NHL, per length, as Markdown.

    python benchmarks/mah_compare.py                 # mnist5k, bits 4,8,16
    python benchmarks/mah_compare.py --smoke         # seconds, for CI

Each system is trained with the default config (experiments/configs/
default.py) in a temporary directory: MAH with ``config.mah`` (Adam, 12
outer iterations of 2 epochs on |Omega| = 1,000 database images, gamma 200,
weights 4 : 2 : 1) and the given head; NHL with ``--method=dpn`` (dominance
weighting 'paper', distillation 0.1, 40 epochs on the 2,000 training
images, early stop). MAH cells read "asymmetric / symmetric" mAP@all of
the last evaluation: queries against the learned database codes V, then
against the network's own codes of the database (the standard protocol,
as NHL). V covers the database split, whose labels MAH then uses (the ADSH
protocol); "V on train" learns V for the 2,000 training images only (the
labels NHL uses) and ranks against them. NHL is symmetric only: its last
evaluation, the best one in brackets. ``train s`` counts training (MAH:
network and V updates), not evaluation.
"""

import argparse
import os
import sys
import tempfile

from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nhl_jax import cli
from nhl_jax.cli.configs import default

# Row label -> config fields ('mah': fields of config.mah).
SYSTEMS = {
    'MAH flat': {'method': 'mah', 'head': 'flat'},
    'MAH cascade': {'method': 'mah', 'head': 'cascade'},
    'MAH nested': {'method': 'mah', 'head': 'nested'},
    # V over the training split only: the labels NHL sees, no more.
    'MAH cascade (V on train)': {'method': 'mah', 'head': 'cascade',
                                 'mah': {'v_split': 'train'}},
    'NHL nested (dpn)': {'method': 'dpn', 'head': 'nested'},
}

# Tiny settings of --smoke: digits, a narrow MLP, one short outer iteration.
_SMOKE = {'dataset': 'digits', 'backbone': 'mlp', 'bits': (4, 8),
          'epochs': 1, 'backbone_kwargs': {'hidden': (32,)}}
_SMOKE_MAH = {'outer_iterations': 1, 'epochs': 1, 'num_samples': 64}


def run(name: str, *, dataset: str, bits, seed: int, smoke: bool) -> dict:
    """Trains one system in a temporary directory; returns its results."""
    config = default.get_config()
    fields = dict(SYSTEMS[name])
    config.mah.update(fields.pop('mah', {}))
    config.update(dict(fields, dataset=dataset, bits=tuple(bits), seed=seed))
    if smoke:
        config.update(_SMOKE)
        config.mah.update(_SMOKE_MAH)
    with tempfile.TemporaryDirectory() as workdir:
        return cli.train_and_evaluate(config, workdir)


def _cell(results, b) -> str:
    b = str(b)
    if results['method'] == 'mah':
        return (f'{results["map_last"][b]:.3f} / '
                f'{results["map_symmetric_last"][b]:.3f}')
    return f'– / {results["map_last"][b]:.3f} ({results["map"][b]:.3f})'


def table(rows: dict, bits) -> str:
    """The Markdown table of ``{name: results}``."""
    lines = ['| system | ' + ' | '.join(f'{b} bits' for b in bits)
             + ' | train s |', '|---' * (len(bits) + 2) + '|']
    for name, results in rows.items():
        lines.append(f'| {name} | ' + ' | '.join(
            _cell(results, b) for b in bits)
            + f' | {results["train_seconds"]:.1f} |')
    return '\n'.join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', default='mnist5k')
    parser.add_argument('--bits', default='4,8,16')
    parser.add_argument('--systems', default=','.join(SYSTEMS),
                        help=f'comma-separated, of {list(SYSTEMS)}')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--smoke', action='store_true',
                        help='tiny run on digits (seconds), for CI')
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    names = args.systems.split(',')
    unknown = sorted(set(names) - set(SYSTEMS))
    if unknown:
        parser.error(f'unknown systems {unknown}; choose from '
                     f'{list(SYSTEMS)}.')
    bits = _SMOKE['bits'] if args.smoke else tuple(
        int(b) for b in args.bits.split(','))
    dataset = _SMOKE['dataset'] if args.smoke else args.dataset
    rows = {name: run(name, dataset=dataset, bits=bits, seed=args.seed,
                      smoke=args.smoke) for name in names}
    text = (f'\n{dataset}, seed {args.seed}; mAP@all per length: MAH '
            'asymmetric / symmetric (last evaluation), NHL symmetric last '
            f'(best)\n\n{table(rows, bits)}')
    print(text)
    return text


if __name__ == '__main__':
    main()
