r"""Remedies for the bank losses' collapse at the library recipe (issue 28).

    python benchmarks/bank_remedies.py --dataset=digits \
        --methods=dpsh,dhn,idhn,dsdh --seeds=0,1,2 \
        --remedies=none,warmup:160,sign,head_lr:1e-4,warmup:100000

Under the library recipe (Adam, lr 1e-3) the memory-bank losses end with
one or two database codes (benchmarks/RESULTS.md, "Training recipes").
Each method trains one nested run (the default config: weighting 'paper',
distillation 0.1, bits 8-128) per remedy and seed:

- ``none``: the paper's bank;
- ``warmup:W``: the loss option ``warmup=W``, in-batch pairs for the first
  W steps, the bank after (``warmup:100000``: in-batch pairs throughout);
- ``sign``: the loss option ``bank_codes='sign'``, a bank of sign codes;
- ``head_lr:R``: the hash head (and loss parameters) at rate R, the
  backbone at the library's 1e-3 (config ``learning_rate`` and
  ``backbone_learning_rate``);

``a+b`` combines remedies. Rows: best mAP@all per length (mean ± std over
seeds), their mean, the mean of the last evaluation's mAP, the one-sided
bits of the longest code and the distinct codes of the shortest
(``results_table.collapse``), train s. ``--tables_from`` merges the
``--json`` files of several invocations (e.g. seeds run apart).
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import results_table
from nhl_jax import cli, losses
from nhl_jax.cli.configs import default

LIBRARY_RATE = 1e-3  # default.get_config().learning_rate


def _one(part: str) -> tuple[dict, dict]:
    """(loss kwargs, config overrides) of one remedy."""
    name, _, value = part.partition(':')
    remedies = {
        'none': lambda: ({}, {}),
        'warmup': lambda: ({'warmup': int(value)}, {}),
        'sign': lambda: ({'bank_codes': 'sign'}, {}),
        'head_lr': lambda: ({}, {'learning_rate': float(value),
                                 'backbone_learning_rate': LIBRARY_RATE}),
    }
    if name not in remedies:
        raise SystemExit(f'unknown remedy {part!r}; choose from '
                         f'{sorted(remedies)} (e.g. warmup:160, '
                         'head_lr:1e-4), joined by +.')
    return remedies[name]()


def remedy(spec: str) -> tuple[dict, dict]:
    """``'warmup:160+sign'`` -> (loss kwargs, config overrides)."""
    kwargs, overrides = {}, {}
    for part in spec.split('+'):
        k, o = _one(part)
        kwargs.update(k)
        overrides.update(o)
    return kwargs, overrides


def run_one(method: str, spec: str, args, bits, seed: int) -> dict:
    """results.json of one run, with its collapse measurements."""
    kwargs, overrides = remedy(spec)
    config = default.get_config()
    config.update(dict(method=method, dataset=args.dataset, bits=bits,
                       seed=seed, plots=False, **overrides))
    config.loss_kwargs = kwargs
    if args.epochs:
        config.epochs = args.epochs
    with tempfile.TemporaryDirectory() as workdir:
        results = cli.train_and_evaluate(config, workdir)
        return {**results, **results_table.collapse(workdir, bits)}


def _means(runs, bits, key: str) -> list[float]:
    """Per seed: the mean over lengths of ``key`` ('map': best, 'map_last')."""
    return [float(np.mean([r[key][str(b)] for b in bits])) for r in runs]


def table(rows: dict, bits) -> list[str]:
    """Markdown lines: one row per (method, remedy)."""
    lines = ['| method | remedy | seeds | '
             + ' | '.join(f'{b} bits' for b in bits)
             + ' | mean | mean (last) | one-sided '
             f'({bits[-1]}) | distinct ({bits[0]}) | train s |',
             '|---' * (len(bits) + 8) + '|']
    for (method, spec), runs in rows.items():
        cells = [results_table.cell([r['map'][str(b)] for r in runs])
                 for b in bits]
        lines.append(
            f'| {method} | {spec} | {len(runs)} | ' + ' | '.join(cells)
            + f' | {results_table.cell(_means(runs, bits, "map"))}'
            f' | {results_table.cell(_means(runs, bits, "map_last"))}'
            + results_table.collapse_cells(runs))
    return lines


def merged(paths) -> dict:
    """{(method, remedy): runs} of several ``--json`` files, in order."""
    rows = {}
    for path in paths:
        with open(path) as f:
            for key, runs in json.load(f).items():
                rows.setdefault(tuple(key.split('|')), []).extend(runs)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', default='digits')
    parser.add_argument('--methods', default='dpsh,dhn,idhn,dsdh')
    parser.add_argument('--remedies',
                        default='none,warmup:160,sign,head_lr:1e-4')
    parser.add_argument('--bits', default='8,16,32,64,128')
    parser.add_argument('--epochs', type=int, default=None)
    parser.add_argument('--seeds', default='0')
    parser.add_argument('--json', default=None)
    parser.add_argument('--tables_from', default=None,
                        help='comma-separated --json files: print their '
                        'runs (seeds merged) as one table, train nothing')
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    bits = tuple(int(b) for b in args.bits.split(','))
    if args.tables_from:
        print('\n'.join(table(merged(args.tables_from.split(',')), bits)))
        return
    methods, specs = args.methods.split(','), args.remedies.split(',')
    for method in methods:  # every option is checked before the first run
        for spec in specs:
            losses.get(method, **remedy(spec)[0])
    rows = {}
    for method in methods:
        for spec in specs:
            runs = rows[method, spec] = []
            for seed in args.seeds.split(','):
                print(f'{method} {spec} seed {seed}', flush=True)
                runs.append(run_one(method, spec, args, bits, int(seed)))
            print(table({(method, spec): rows[method, spec]}, bits)[-1],
                  flush=True)
            if args.json:
                with open(args.json, 'w') as f:
                    json.dump({f'{m}|{s}': r for (m, s), r in rows.items()},
                              f)
    print(f'\n{args.dataset}, nested, default config, seeds {args.seeds}; '
          'best mAP@all per length\n')
    print('\n'.join(table(rows, bits)))


if __name__ == '__main__':
    main()
