r"""Every base loss under both training recipes, as a Markdown table.

    python benchmarks/recipes.py --dataset=digits [--seeds=0,1,2] \
        [--methods=dpsh,csq] [--records=DIR] [--from-records] \
        [--append=benchmarks/RESULTS.md]

Each method trains one nested run (the default config: dominance weighting
'paper', distillation 0.1, bits 8-128) per recipe and seed: ``library``
(Adam 1e-3, weight decay 1e-5, batch 64) and ``reference`` (its reference
code's optimizer, rate, weight decay, batch and decay,
``nhl_jax/cli/recipes.py``). Rows: best mAP@all per length, their mean,
the one-sided bits of the longest code and the distinct codes of the
shortest (as in results_table.py), and the training seconds; then one line
per method naming the recipe with the higher mean mAP, and the rows whose
mAP still rose over the last evaluation interval (far from convergence).
``--append`` adds the tables to a results file with the command, date,
machine and commit.

``--records=DIR`` keeps each finished run as one JSON file per (dataset,
method, recipe, seed): a re-run skips the runs found there and builds the
tables from the files, so a sweep stopped at any point resumes where it
stopped; ``--from-records`` trains nothing and tables what is there. XLA's
programs go to the persistent compilation cache
(``$NHL_JAX_COMPILATION_CACHE``, default ``~/.cache/nhl_jax/xla``), so the
runs after the first of each program load it instead of compiling.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import results_table
from nhl_jax import cli, compiler
from nhl_jax.cli import recipes
from nhl_jax.cli.configs import default
from nhl_jax.train import plots

# A row whose mean mAP rose by more than this over the last evaluation
# interval is reported as still rising.
RISING = 0.01


def run_one(method: str, recipe: str, args, bits, seed: int) -> dict:
    """The record of one run: results.json, its collapse measurements, the
    mAP at each evaluation ({bits: [[epoch, mAP], ...]}), the wall
    seconds and the setting it was made with."""
    config = default.get_config()
    config.update(dict(method=method, dataset=args.dataset, bits=bits,
                       seed=seed, recipe=recipe))
    config.plots = False  # the workdir is thrown away
    if args.epochs:
        config.epochs = args.epochs
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as workdir:
        results = cli.train_and_evaluate(config, workdir)
        record = {**results, **results_table.collapse(workdir, bits),
                  'map_history': map_history(workdir)}
    return {**record, 'wall_seconds': time.monotonic() - started,
            'setting': setting(args, bits)}


def map_history(workdir: str) -> dict:
    """{bits: [[epoch, mAP], ...]} of each evaluation of a run."""
    series = plots.per_length(plots.read_records(workdir), 'map')
    return {str(b): [[int(e), float(v)] for e, v in zip(*ev)]
            for b, ev in series.items()}


def setting(args, bits) -> dict:
    """What a record must share with this sweep to be reused."""
    return {'epochs': args.epochs or default.get_config().epochs,
            'bits': list(bits)}


def record_path(records: str, dataset: str, method: str, recipe: str,
                seed: int) -> str:
    """The record file of one run in the ``records`` folder."""
    return os.path.join(records, f'{dataset}_{method}_{recipe}_{seed}.json')


def read_record(path: str, expected: dict) -> dict | None:
    """The record at ``path`` (None: not there yet).

    Raises:
      SystemExit: the record was made with another setting (epochs, bits).
    """
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        record = json.load(f)
    if record.get('setting') != expected:
        sys.exit(f'error: {path} was made with {record.get("setting")}, '
                 f'not {expected}; pass another --records folder.')
    return record


def write_record(path: str, record: dict) -> None:
    """Writes ``record`` to ``path`` atomically (a killed sweep leaves the
    old file or none, never half of one)."""
    temporary = f'{path}.{os.getpid()}.tmp'
    with open(temporary, 'w') as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def _mean_map(runs, bits) -> list[float]:
    """Per seed: the mean over lengths of the best mAP."""
    return [float(np.mean([r['map'][str(b)] for b in bits])) for r in runs]


def last_gain(run: dict, bits) -> float | None:
    """Mean over lengths of the mAP gained between the last two
    evaluations (None: fewer than two, or a record without them)."""
    history = run.get('map_history', {})
    gains = [h[-1][1] - h[-2][1] for b in bits
             if len(h := history.get(str(b), [])) >= 2]
    return float(np.mean(gains)) if len(gains) == len(bits) else None


def table(rows: dict, bits) -> list[str]:
    """Markdown lines: one row per (method, recipe)."""
    lines = ['| method | recipe | ' + ' | '.join(f'{b} bits' for b in bits)
             + f' | mean | one-sided ({bits[-1]}) | distinct ({bits[0]}) '
             '| train s |', '|---' * (len(bits) + 6) + '|']
    for (method, recipe), runs in rows.items():
        if not runs:
            continue
        cells = [results_table.cell([r['map'][str(b)] for r in runs])
                 for b in bits]
        lines.append(
            f'| {method} | {recipe} | ' + ' | '.join(cells)
            + f' | {results_table.cell(_mean_map(runs, bits))}'
            + results_table.collapse_cells(runs))
    return lines


def verdicts(rows: dict, methods, bits) -> list[str]:
    """One line per method with runs under every recipe: the recipe with
    the higher mean mAP."""
    lines = []
    for method in methods:
        if not all(rows.get((method, r)) for r in recipes.RECIPES):
            continue
        means = {recipe: np.mean(_mean_map(rows[method, recipe], bits))
                 for recipe in recipes.RECIPES}
        best = max(means, key=means.get)
        lines.append(f'- {method}: {best} ('
                     + ', '.join(f'{k} {v:.3f}' for k, v in means.items())
                     + ')')
    return lines


def rising(rows: dict, bits) -> list[str]:
    """One line per row whose mean mAP (over seeds and lengths) still rose
    by more than ``RISING`` over the last evaluation interval."""
    lines = []
    for (method, recipe), runs in rows.items():
        gains = [g for r in runs if (g := last_gain(r, bits)) is not None]
        if gains and np.mean(gains) > RISING:
            lines.append(f'- {method} {recipe}: +{np.mean(gains):.3f}')
    return lines


def seed_counts(rows: dict, seeds) -> list[str]:
    """Lines naming the rows with fewer seeds than asked for."""
    return [f'- {m} {r}: {len(runs)} of {len(seeds)} seeds'
            for (m, r), runs in rows.items() if len(runs) < len(seeds)]


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


def sweep(args, methods, bits, seeds) -> dict:
    """{(method, recipe): [record per seed]}: the records found in
    ``args.records`` (all read, and checked, before any training), the
    other runs trained and written there (none with ``--from-records``)."""
    expected = setting(args, bits)
    paths = {(m, r, s): record_path(args.records, args.dataset, m, r, s)
             for m in methods for r in recipes.RECIPES for s in seeds
             } if args.records else {}
    found = {key: read_record(path, expected) for key, path in paths.items()}
    rows = {}
    for method in methods:
        for recipe in recipes.RECIPES:
            runs = [found.get((method, recipe, seed))
                    or _train(method, recipe, args, bits, seed,
                              paths.get((method, recipe, seed)))
                    for seed in seeds]
            rows[method, recipe] = [r for r in runs if r is not None]
            if rows[method, recipe]:
                print(table({(method, recipe): rows[method, recipe]},
                            bits)[-1], flush=True)
    return rows


def _train(method, recipe, args, bits, seed, path) -> dict | None:
    """A new run's record, written to ``path`` (None: ``--from-records``,
    nothing trained)."""
    if args.from_records:
        return None
    record = run_one(method, recipe, args, bits, seed)
    if path:
        write_record(path, record)
    print(f'{args.dataset} {method} {recipe} seed {seed}: '
          f'{record["wall_seconds"]:.1f} s wall', file=sys.stderr, flush=True)
    return record


def report(args, rows, methods, bits, seeds) -> str:
    """The Markdown section of the sweep's tables."""
    lines = [f'\n## Training recipes on {args.dataset} (issue 28)\n',
             provenance(sys.argv[1:]),
             (f'Nested runs (default config), seeds {args.seeds}; best '
              'mAP@all per length.\n'), *table(rows, bits), '',
             'Higher mean mAP:\n', *verdicts(rows, methods, bits), '']
    if still := rising(rows, bits):
        lines += [('Still rising (mean mAP gained over the last '
                   f'evaluation interval > {RISING}):\n'), *still, '']
    if fewer := seed_counts(rows, seeds):
        lines += ['Rows with fewer seeds:\n', *fewer, '']
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', default='digits')
    parser.add_argument('--methods',
                        default=','.join(sorted(recipes.REFERENCE)))
    parser.add_argument('--bits', default='8,16,32,64,128')
    parser.add_argument('--epochs', type=int, default=None)
    parser.add_argument('--seeds', default='0')
    parser.add_argument('--records', default=None,
                        help='a folder keeping one JSON file per run')
    parser.add_argument('--from-records', action='store_true',
                        help='train nothing: table the --records found')
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
    if args.from_records and not args.records:
        parser.error('--from-records needs --records=DIR')
    if args.records:
        os.makedirs(args.records, exist_ok=True)
    compiler.use_persistent_cache(compiler.default_cache_dir())
    rows = sweep(args, methods, bits, seeds)
    text = report(args, rows, methods, bits, seeds)
    print(text)
    if args.append:
        with open(args.append, 'a') as f:
            f.write(text)


if __name__ == '__main__':
    main()
