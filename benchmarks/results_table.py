r"""Per-length mAP of every method, one nested run each, as a markdown table.

    python benchmarks/results_table.py --dataset=digits
    python benchmarks/results_table.py --dataset=mnist5k \
        --methods=dsh:pairs=batch,dpn:targets=distinct

``--methods`` takes registered loss names (default: every one), each
optionally followed by ``:key=value`` loss options (``dsh:pairs=batch``).
Each is trained with the default config (full NHL: dominance weighting
'paper' and distillation 0.1) in a temporary directory; ``--epochs`` /
``--bits`` / ``--weighting`` override it for all of them. ``--seeds=0,1,2``
reports mean ± std over seeds. ``--json`` also writes every run's results.

Two measurements of collapse follow each row, from the database codes of
the last model: "one-sided" is the share of the longest code's bits on
which at least 95 % of the database takes one sign, "distinct" the number
of distinct codes at the shortest length (a working run has about one per
class or more; a collapsed one a handful).
"""

import argparse
import ast
import json
import os
import sys
import tempfile

import numpy as np
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nhl_jax import cli, losses, retrieval
from nhl_jax.cli import inference
from nhl_jax.cli.configs import default


def parse_method(spec: str) -> tuple[str, dict]:
    """``'dsh:pairs=batch'`` -> ``('dsh', {'pairs': 'batch'})``."""
    name, *options = spec.split(':')
    kwargs = {}
    for option in options:
        key, _, value = option.partition('=')
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return name, kwargs


def run_one(spec: str, args, bits, seed: int) -> dict:
    """Results of one nested run of ``spec`` (see ``train.make_results``)."""
    name, kwargs = parse_method(spec)
    config = default.get_config()
    config.update(dict(method=name, dataset=args.dataset, bits=bits,
                       seed=seed))
    config.loss_kwargs = kwargs
    if args.epochs:
        config.epochs = args.epochs
    if args.weighting:
        config.weighting = args.weighting
    with tempfile.TemporaryDirectory() as workdir:
        results = cli.train_and_evaluate(config, workdir)
        return {**results, **collapse(workdir, bits)}


def database_codes(workdir: str, bits) -> dict[int, np.ndarray]:
    """{b: [N, b] ±1 database codes} of the run's last model, per length."""
    database = inference.export_codes(workdir, splits=('database',))
    codes = retrieval.load_codes(database['paths']['database'])
    return {b: 2.0 * np.unpackbits(retrieval.codes_of_length(codes, b), axis=1,
                                   count=b) - 1.0
            for b in bits}


def one_sided(codes: np.ndarray) -> float:
    """Share of the bits of ±1 ``codes`` [N, K] on which >= 95 % of the
    rows take one sign."""
    ones = (codes > 0).mean(0)
    return float(np.mean(np.maximum(ones, 1 - ones) >= 0.95))


def collapse(workdir: str, bits) -> dict:
    """One-sided bits (longest code) and distinct codes (shortest)."""
    codes = database_codes(workdir, (bits[0], bits[-1]))
    return {'one_sided': one_sided(codes[bits[-1]]),
            'distinct': len(np.unique(codes[bits[0]], axis=0))}


def cell(values) -> str:
    """'0.950' for one value, '0.950 ± 0.004' for several."""
    if len(values) == 1:
        return f'{values[0]:.3f}'
    return f'{np.mean(values):.3f} ± {np.std(values):.3f}'


def collapse_cells(runs) -> str:
    """The last three cells of a row over seeds: one-sided bits of the
    longest code, distinct codes of the shortest, train seconds."""
    return (f' | {np.mean([r["one_sided"] for r in runs]):.0%}'
            f' | {np.mean([r["distinct"] for r in runs]):.0f}'
            f' | {np.mean([r["train_seconds"] for r in runs]):.1f} |')


def table(rows: dict, bits) -> list[str]:
    """Markdown lines: best mAP per length (last in brackets), train s."""
    lines = ['| method | ' + ' | '.join(f'{b} bits' for b in bits)
             + f' | train s | one-sided ({bits[-1]}) | distinct '
             f'({bits[0]}) |', '|---' * (len(bits) + 4) + '|']
    for spec, runs in rows.items():
        cells = [f'{cell([r["map"][str(b)] for r in runs])} '
                 f'({cell([r["map_last"][str(b)] for r in runs])})'
                 for b in bits]
        seconds = np.mean([r['train_seconds'] for r in runs])
        one_sided = np.mean([r['one_sided'] for r in runs])
        distinct = np.mean([r['distinct'] for r in runs])
        lines.append(f'| {spec} | ' + ' | '.join(cells)
                     + f' | {seconds:.1f} | {one_sided:.0%} | '
                     f'{distinct:.0f} |')
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', default='digits')
    parser.add_argument('--methods', default=','.join(sorted(losses.LOSSES)))
    parser.add_argument('--bits', default='8,16,32,64,128')
    parser.add_argument('--epochs', type=int, default=None)
    parser.add_argument('--weighting', default=None)
    parser.add_argument('--seeds', default='0')
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    bits = tuple(int(b) for b in args.bits.split(','))
    seeds = [int(s) for s in args.seeds.split(',')]
    specs = args.methods.split(',')
    for spec in specs:  # every name is checked before the first run
        name, kwargs = parse_method(spec)
        losses.get(name, **kwargs)
    rows = {}
    for spec in specs:
        rows[spec] = [run_one(spec, args, bits, seed) for seed in seeds]
        print(table({spec: rows[spec]}, bits)[-1], flush=True)
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(rows, f)
    first = rows[specs[0]][0]
    print(f'\n{args.dataset}, nested (one run per method), weighting '
          f'{first["weighting"]}, distill {first["distill_weight"]}, '
          f'seeds {args.seeds}; best mAP@all per length (last in '
          'brackets)\n')
    print('\n'.join(table(rows, bits)))


if __name__ == '__main__':
    main()
