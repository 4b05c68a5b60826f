"""One nested run over all lengths vs one single-length run per length.

    python benchmarks/nested_vs_single.py [--methods=dpn,csq,dsh]
                                          [--seeds=0,1,2]
    python benchmarks/nested_vs_single.py --smoke      # CI: seconds, digits

For each method and seed, trains (a) ONE nested NHL run over
8/16/32/64/128 bits with the default config (weighting 'paper',
distillation 0.1) and (b) the five single-length baselines
(``--single_length``: one call, each length alone, train seconds summed),
on mnist5k; then (a) again, its train seconds the mean of the two, which
cancels a drift of the machine linear in time (``--no_bracket`` trains it
once). Every run is the command line in a fresh process, as a sweep runs
it. Prints, per method, the total train seconds of both modes and their
ratio (single / nested) and the per-length best mAP as mean and std over
the seeds, as Markdown; then each seed's ratio, and the ratio at equal
epochs from the runs' median seconds per epoch, which one run slowed by a
drifting machine moves less; then the wall seconds of each mode by phase
(results.json ``phase_seconds``, median over the seeds). ``--out`` also
writes every run's results as JSON.
Train seconds count the training loops only, not evaluation (the NHL
papers' protocol); the first run of a mode also pays its compilation.
Then, per seed, the same comparison with the runs' rounds interleaved:
the nested run and the five single-length runs train in one process,
one round each in turn (``turns.py``; ``--rounds`` rounds each, evaluated
at the last), and each round gives a ratio, the five single-length
rounds' seconds summed over the nested round's, a few seconds apart
instead of minutes; prints their median per seed and over all rounds
(``--rounds=0``: skipped). Round 1 (it also loads programs) and the last
(its checkpoint is written while the next run's round trains) are left
out.
The persistent compilation cache and the saved traced programs are on,
as for the command line (``--no_cache``: ``--config.compilation_cache=off``
turns both off), so runs after a program's first load it.
"""

import functools
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

import study
import turns
from nhl_jax import compiler
from nhl_jax.cli import train as cli_train
from nhl_jax.train import phases
from study import SMOKE, ints, mean_std

_RUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                    'experiments', 'run.py')


def _table(method, runs, bits, seeds):
    """Markdown rows of one method: mAP mean ± std per length, seconds."""
    secs = {mode: [r['train_seconds'] for r in runs[mode]]
            for mode in runs}
    title = (f'\n**{method}** on {runs["nested"][0]["dataset"]}, seeds '
             f'{",".join(map(str, seeds))}: best mAP per length, mean ± std '
             'over seeds; train s per seed, summed over lengths for single\n')
    lines = [title,
             '| mode | ' + ' | '.join(f'{b} bits' for b in bits)
             + ' | mean mAP | train s | single / nested time |',
             '|---' * (len(bits) + 4) + '|']
    for mode in ('nested', 'single'):
        maps = np.array([[r['map'][str(b)] for b in bits]
                         for r in runs[mode]])
        ratio = np.sum(secs['single']) / np.sum(secs['nested'])
        lines.append(
            f'| {mode} | ' + ' | '.join(mean_std(maps[:, k])
                                        for k in range(len(bits)))
            + f' | {mean_std(maps.mean(1))} | {np.mean(secs[mode]):.1f} | '
            + (f'{ratio:.2f}x |' if mode == 'nested' else ' |'))
    per_seed = [s / n for s, n in zip(secs['single'], secs['nested'])]
    nested, single = (_epoch_seconds(runs[m]) for m in ('nested', 'single'))
    lines.append(
        '\nsingle / nested per seed: '
        + ', '.join(f'{r:.2f}x' for r in per_seed)
        + f' (median {np.median(per_seed):.2f}x). Median train seconds '
        f'per epoch: nested (every length) {nested:.3f}, single (one '
        f'length) {single:.3f}, so {len(bits) * single / nested:.2f}x at '
        'equal epochs (a run that the machine slowed moves its seed\'s '
        'ratio more than these)')
    return '\n'.join(lines)


def _epoch_seconds(runs) -> float:
    """Median over runs of train seconds per epoch (a single-length
    call's: per length and epoch, early stops counted)."""
    return float(np.median([r['train_seconds'] / sum(r['epochs'].values())
                            * (len(r['epochs']) if r['mode'] == 'nested'
                               else 1) for r in runs]))


def _phase_table(method, runs):
    """Markdown: median wall seconds by phase of each mode."""
    seen = runs['nested'][0]['phase_seconds']
    names = [k for k in (*phases.ORDER, 'total') if k in seen]
    lines = [(f'\n**{method}**: wall seconds by phase, median over seeds '
             '(single: the five lengths together)\n'),
             '| mode | ' + ' | '.join(names) + ' |',
             '|---' * (len(names) + 1) + '|']
    for mode in ('nested', 'single'):
        medians = [np.median([r['phase_seconds'].get(k, 0.0)
                              for r in runs[mode]]) for k in names]
        lines.append(f'| {mode} (s) | '
                     + ' | '.join(f'{v:.2f}' for v in medians) + ' |')
    return '\n'.join(lines)


def _interleaved(args, method: str, seeds, bits) -> str:
    """Markdown: single / nested per round, the runs' rounds interleaved
    in one process (``turns.rounds``), median per seed and overall."""
    medians, every = [], []
    for seed in seeds:
        runs = {'nested': (_config(args, method, seed), bits)}
        runs.update({f'single {b}': (_config(args, method, seed, True), (b,))
                     for b in bits})
        with tempfile.TemporaryDirectory() as tmp:
            seconds = turns.rounds(runs, tmp)
        # Round 1 also loads programs; the last one's checkpoint is
        # written while the next run's last round trains.
        nested = np.array(seconds.pop('nested'))[1:-1]
        ratios = (np.sum([s[1:-1] for s in seconds.values()], axis=0)
                  / nested)
        medians.append(float(np.median(ratios)))
        every.extend(ratios)
    return ('\nsingle / nested with the rounds interleaved in one process '
            f'({args.rounds} rounds each; the first and the last left out), '
            'median over '
            'rounds per seed: ' + ', '.join(f'{r:.2f}x' for r in medians)
            + f'; over all {len(every)} rounds: {np.median(every):.2f}x '
            f'(quartiles {np.quantile(every, 0.25):.2f}x-'
            f'{np.quantile(every, 0.75):.2f}x)')


def _config(args, method: str, seed: int, single_length: bool = False):
    """The default config with the fields of one interleaved run."""
    config = study.run_config(args, method=method, seed=seed,
                              single_length=single_length)
    # Evaluated once, at the last round: the rounds compared are training.
    config.update(epochs=args.rounds, eval_every=args.rounds)
    return config


def _fresh_run(args, *, method: str, seed: int,
               single_length: bool = False) -> dict:
    """results.json of one run of the command line in its own process,
    as a sweep runs it: no run inherits another's process (measured: in
    one process, a nested run right after the single-length ones trained
    8-13 % slower than one after a nested run, benchmarks/RESULTS.md)."""
    fields = {'dataset': args.dataset, 'bits': args.bits, 'method': method,
              'seed': seed, 'single_length': single_length}
    if args.epochs:
        fields['epochs'] = args.epochs
    if args.smoke:
        fields.update(SMOKE)  # as study.train_run: over everything
    if args.no_cache:
        fields['compilation_cache'] = 'off'
    # A field with a flag of its own is passed as it, any other as
    # --config.<field>.
    argv = [f'--{k}={_flag_value(v)}' if k in cli_train._OVERRIDES
            else f'--config.{k}={_flag_value(v)}' for k, v in fields.items()]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = os.path.join(tmp, 'run')
        done = subprocess.run(
            [sys.executable, _RUN, f'--workdir={workdir}', *argv],
            capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f'{method} seed {seed} failed:\n'
                               + done.stderr[-3000:])
        with open(os.path.join(workdir, 'results.json')) as f:
            return json.load(f)


def _flag_value(value) -> str:
    """``value`` as the command line reads it (tuples comma-separated)."""
    if isinstance(value, (tuple, list)):
        return ','.join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _bracketed(before: dict, after: dict) -> dict:
    """The nested run before the single ones, its train seconds the mean
    of it and its repeat after them (``train_seconds_runs``: both).

    Measured before and after, the nested run is timed at the single
    runs' midpoint under a drift linear in time, and one slow stretch of
    the machine weighs half as much on it.

    Raises:
      RuntimeError: if the repeat trained other parameters (a run is
        deterministic; it would time something else).
    """
    if before['params_sha256'] != after['params_sha256']:
        raise RuntimeError('the repeated nested run trained other '
                           'parameters; the runs are not deterministic.')
    seconds = [before['train_seconds'], after['train_seconds']]
    return dict(before, train_seconds=float(np.mean(seconds)),
                train_seconds_runs=seconds)


def main():
    parser = study.parser(__doc__, methods='dpn', seeds='0,1,2',
                          smoke='1 epoch on digits, 8/16 bits, one seed')
    parser.add_argument('--no_cache', action='store_true',
                        help='trace and compile every program (no caches)')
    parser.add_argument('--no_bracket', action='store_true',
                        help='one nested run per seed, before the single '
                        'ones (no second run after them)')
    parser.add_argument('--rounds', type=int, default=None,
                        help='rounds of each interleaved run (default 12, '
                        'at least 3; 3 with --smoke; 0: none)')
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 3 if args.smoke else 12
    if args.rounds and args.rounds < 3:
        parser.error(f'--rounds={args.rounds}: the first and the last '
                     'round are left out; give at least 3 (or 0: none).')
    if not args.no_cache:  # as the command line: programs load, not compile
        compiler.use_persistent_cache(compiler.default_cache_dir())
    args.bits = ints(args.bits)
    seeds = (0,) if args.smoke else ints(args.seeds)
    bits = SMOKE['bits'] if args.smoke else args.bits
    everything, tables = {}, []
    for method in args.methods.split(','):
        runs = {'nested': [], 'single': []}
        for seed in seeds:
            run = functools.partial(_fresh_run, args, method=method,
                                    seed=seed)
            nested, single = run(), run(single_length=True)
            runs['nested'].append(
                nested if args.no_bracket else _bracketed(nested, run()))
            runs['single'].append(single)
        everything[method] = runs
        tables.append(_table(method, runs, bits, seeds))
        tables.append(_phase_table(method, runs))
        if args.rounds:
            tables.append(_interleaved(args, method, seeds, bits))
    study.report(tables, everything, args.out)


if __name__ == '__main__':
    main()
