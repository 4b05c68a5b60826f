r"""Every base loss under both training recipes, as a Markdown table.

    python benchmarks/recipes.py --dataset=digits [--seeds=0,1,2] \
        [--methods=dpsh,csq] [--append=benchmarks/RESULTS.md]

Each method trains one nested run (the default config: dominance weighting
'paper', distillation 0.1, bits 8-128) per recipe and seed: ``library``
(Adam 1e-3, weight decay 1e-5, batch 64) and ``reference`` (its reference
code's optimizer, rate, weight decay, batch and decay,
``nhl_jax/cli/recipes.py``). Rows: best mAP@all per length, their mean,
the one-sided bits of the longest code and the distinct codes of the
shortest (as in results_table.py), and the training seconds; then one line
per method naming the recipe with the higher mean mAP. ``--append`` adds
the tables to a results file with the command, date, machine and commit.
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile

import jax
import numpy as np
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import results_table
from nhl_jax import cli
from nhl_jax.cli import recipes
from nhl_jax.cli.configs import default


def run_one(method: str, recipe: str, args, bits, seed: int) -> dict:
    """results.json of one run, with its collapse measurements."""
    config = default.get_config()
    config.update(dict(method=method, dataset=args.dataset, bits=bits,
                       seed=seed, recipe=recipe))
    if args.epochs:
        config.epochs = args.epochs
    with tempfile.TemporaryDirectory() as workdir:
        results = cli.train_and_evaluate(config, workdir)
        return {**results, **results_table.collapse(workdir, bits)}


def _mean_map(runs, bits) -> list[float]:
    """Per seed: the mean over lengths of the best mAP."""
    return [float(np.mean([r['map'][str(b)] for b in bits])) for r in runs]


def table(rows: dict, bits) -> list[str]:
    """Markdown lines: one row per (method, recipe)."""
    lines = ['| method | recipe | ' + ' | '.join(f'{b} bits' for b in bits)
             + f' | mean | one-sided ({bits[-1]}) | distinct ({bits[0]}) '
             '| train s |', '|---' * (len(bits) + 6) + '|']
    for (method, recipe), runs in rows.items():
        cells = [results_table.cell([r['map'][str(b)] for r in runs])
                 for b in bits]
        lines.append(
            f'| {method} | {recipe} | ' + ' | '.join(cells)
            + f' | {results_table.cell(_mean_map(runs, bits))}'
            f' | {np.mean([r["one_sided"] for r in runs]):.0%}'
            f' | {np.mean([r["distinct"] for r in runs]):.0f}'
            f' | {np.mean([r["train_seconds"] for r in runs]):.1f} |')
    return lines


def verdicts(rows: dict, methods, bits) -> list[str]:
    """One line per method: the recipe with the higher mean mAP."""
    lines = []
    for method in methods:
        means = {recipe: np.mean(_mean_map(rows[method, recipe], bits))
                 for recipe in recipes.RECIPES}
        best = max(means, key=means.get)
        lines.append(f'- {method}: {best} ('
                     + ', '.join(f'{k} {v:.3f}' for k, v in means.items())
                     + ')')
    return lines


def provenance(argv) -> str:
    """The command, date, machine and commit of a measurement."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'],
                            cwd=root, capture_output=True, text=True,
                            check=False).stdout.strip() or 'unknown'
    device = jax.devices()[0]
    return (f'Command: `python benchmarks/recipes.py {" ".join(argv)}`. '
            f'Measured {datetime.date.today()} at commit {commit} on '
            f'{platform.machine()} with {os.cpu_count()} CPU(s) '
            f'({device.platform}: {device.device_kind}), jax '
            f'{jax.__version__}.')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', default='digits')
    parser.add_argument('--methods',
                        default=','.join(sorted(recipes.REFERENCE)))
    parser.add_argument('--bits', default='8,16,32,64,128')
    parser.add_argument('--epochs', type=int, default=None)
    parser.add_argument('--seeds', default='0')
    parser.add_argument('--append', default=None,
                        help='a Markdown file to append the tables to')
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    bits = tuple(int(b) for b in args.bits.split(','))
    seeds = [int(s) for s in args.seeds.split(',')]
    methods = args.methods.split(',')
    unknown = sorted(set(methods) - set(recipes.REFERENCE))
    if unknown:
        parser.error(f'no reference recipe for {unknown}')
    rows = {}
    for method in methods:
        for recipe in recipes.RECIPES:
            rows[method, recipe] = [run_one(method, recipe, args, bits, s)
                                    for s in seeds]
            print(table({(method, recipe): rows[method, recipe]},
                        bits)[-1], flush=True)
    text = '\n'.join([
        f'\n## Training recipes on {args.dataset} (issue 28)\n',
        provenance(sys.argv[1:]),
        (f'Nested runs (default config), seeds {args.seeds}; best mAP@all '
         'per length.\n'), *table(rows, bits), '',
        'Higher mean mAP:\n', *verdicts(rows, methods, bits), ''])
    print(text)
    if args.append:
        with open(args.append, 'a') as f:
            f.write(text)


if __name__ == '__main__':
    main()
