"""NHL ablation per length and per method (not averaged over either).

    python benchmarks/ablation.py [--methods=dpn,csq] [--seeds=0]
                                  [--dataset=mnist5k]
    python benchmarks/ablation.py --smoke      # CI: seconds, digits

Trains one nested run over 8/16/32/64/128 bits per method, seed and
variant:

| variant | weighting | distill_weight |
|---|---|---|
| none | none | 0 |
| w/o weighting | none | 0.1 |
| w/o distillation | paper | 0 |
| full | paper | 0.1 |

and prints, per method, the best mAP of every length for every variant
(mean ± std over the seeds when there are several) with the train seconds,
as Markdown. ``--weighting`` swaps the rule of the weighted variants (e.g.
``--weighting=gradnorm`` for a baseline's own ablation).
"""

import numpy as np
from absl import logging

import study
from study import SMOKE, ints, mean_std, train_run


def _variants(rule):
    """name -> (weighting, distill_weight)."""
    return {'none': ('none', 0.0), 'w/o weighting': ('none', 0.1),
            'w/o distillation': (rule, 0.0), 'full': (rule, 0.1)}






def _table(method, runs, bits, seeds, rule):
    dataset = next(iter(runs.values()))[0]['dataset']
    title = (f'\n**{method}** on {dataset}, weighting {rule!r}, seeds '
             f'{",".join(map(str, seeds))}: best mAP per length\n')
    lines = [title,
             '| variant | ' + ' | '.join(f'{b} bits' for b in bits)
             + ' | train s |',
             '|---' * (len(bits) + 2) + '|']
    for name, results in runs.items():
        cells = [mean_std([r['map'][str(b)] for r in results]) for b in bits]
        secs = np.mean([r['train_seconds'] for r in results])
        lines.append(f'| {name} | ' + ' | '.join(cells) + f' | {secs:.1f} |')
    return '\n'.join(lines)


def main():
    parser = study.parser(
        __doc__, methods='dpn,csq', seeds='0',
        smoke='1 epoch on digits, 8/16 bits, dpn, variants none and full')
    parser.add_argument('--weighting', default='paper',
                        help='rule of the weighted variants')
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    args.bits = ints(args.bits)
    seeds = ints(args.seeds)
    methods = ['dpn'] if args.smoke else args.methods.split(',')
    bits = SMOKE['bits'] if args.smoke else args.bits
    variants = _variants(args.weighting)
    if args.smoke:  # the two ends only: CI checks the script, not the study
        variants = {k: variants[k] for k in ('none', 'full')}
    everything, tables = {}, []
    for method in methods:
        runs = {name: [] for name in variants}
        for seed in seeds:  # variants interleaved: same machine load
            for name, (weighting, lam) in variants.items():
                runs[name].append(train_run(
                    args, method=method, seed=seed, weighting=weighting,
                    distill_weight=lam))
        everything[method] = runs
        tables.append(_table(method, runs, bits, seeds, args.weighting))
    study.report(tables, everything, args.out)


if __name__ == '__main__':
    main()
