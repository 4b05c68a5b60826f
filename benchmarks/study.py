"""What the study scripts share: one training run per cell, formatting.

``nested_vs_single.py`` and ``ablation.py`` train with the default config
(experiments/configs/default.py) plus a few fields, each run in a
temporary workdir, and print Markdown tables of ``results.json`` values.
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nhl_jax import cli
from nhl_jax.cli.configs import default

# --smoke: seconds on digits, so CI checks the scripts, not the study.
SMOKE = {'dataset': 'digits', 'bits': (8, 16), 'epochs': 1, 'eval_every': 1,
         'batch_size': 32}


def parser(doc: str, *, methods: str, seeds: str,
           smoke: str) -> argparse.ArgumentParser:
    """The flags every study script takes (``smoke``: what --smoke runs)."""
    p = argparse.ArgumentParser(description=doc.split('\n')[0])
    p.add_argument('--methods', default=methods)
    p.add_argument('--seeds', default=seeds)
    p.add_argument('--dataset', default='mnist5k')
    p.add_argument('--bits', default='8,16,32,64,128')
    p.add_argument('--epochs', type=int, default=None,
                   help='override the config (40)')
    p.add_argument('--out', default=None, help='JSON of every run')
    p.add_argument('--smoke', action='store_true', help=f'CI: {smoke}')
    return p


def ints(text: str) -> tuple[int, ...]:
    """'8,16,32' -> (8, 16, 32)."""
    return tuple(int(v) for v in text.split(','))


def run_config(args, **fields):
    """The default config with ``fields`` set.

    ``args`` supplies ``dataset``, ``bits``, ``epochs`` (None: the
    config's) and ``smoke`` (the SMOKE fields override everything).
    """
    config = default.get_config()
    config.update({'dataset': args.dataset, 'bits': args.bits, **fields})
    if args.epochs:
        config.epochs = args.epochs
    if args.smoke:
        config.update(SMOKE)
    return config


def train_run(args, **fields) -> dict:
    """results.json of one run of ``run_config(args, **fields)``."""
    with tempfile.TemporaryDirectory() as workdir:
        return cli.train_and_evaluate(run_config(args, **fields), workdir)


def mean_std(values) -> str:
    """'0.950' for one value, '0.950 ± 0.004' for several."""
    if len(values) == 1:
        return f'{values[0]:.3f}'
    return f'{np.mean(values):.3f} ± {np.std(values):.3f}'


def report(tables, runs, out=None) -> None:
    """Prints the Markdown tables; ``out``: every run's results as JSON."""
    print('\n'.join(tables))
    if out:
        with open(out, 'w') as f:
            json.dump(runs, f, indent=1)
