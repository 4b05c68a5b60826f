"""Can an evaluation hide behind the next epoch's training?

    python benchmarks/eval_overlap.py [--rounds=8] [--encode_only]
    python benchmarks/eval_overlap.py --smoke      # CI: seconds, digits

A run evaluates every few epochs (the default run: 8 of its 40 epochs),
and on the CPU the evaluation's forward passes over the query and
database images are most of the time outside the training loops. If the
training steps left cores idle, an evaluation started on a thread while
the next epoch trains would cost less than the two one after the other.
This script trains the default NHL run (its programs, as
``nhl_jax.train`` builds them) and times, in rounds alternating the order
of the two variants, (a) one epoch, then the full evaluation of the
parameters before it (``evaluation.evaluate_lengths``: every split
encoded, every evaluator ranked), and (b) the same evaluation on a thread
while the epoch trains. Prints the median seconds of each, the epoch and
the evaluation alone, and the median per-round ratio (b) / (a): 1.00
means nothing overlaps (a machine whose cores the step already fills),
while the evaluation's share of (a) is the most that could.
``--encode_only`` evaluates by the forward passes alone (the codes of
both splits, ``evaluation.encode_codes``), without the ranking.
"""

import argparse
import os
import sys
import threading
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nhl_jax import cli, compiler, parallel
from nhl_jax.cli import registry
from nhl_jax.cli.configs import default
from nhl_jax.train import DataInfo, evaluation, trainer
from nhl_jax.train import programs as programs_lib

SMOKE = {'dataset': 'digits', 'bits': (8, 16), 'batch_size': 32}


class _Run:
    """The default run's state, one epoch and one evaluation at a time."""

    def __init__(self, config, encode_only: bool = False):
        self.encode_only = encode_only
        spec = cli.resolve(config)
        self.system, self.spec = registry.SYSTEMS[spec.system], spec
        self.splits = trainer.run_splits(spec)
        info = DataInfo.of(self.splits)
        self.mesh = parallel.make_mesh(None)
        self.setup, drawn = self.system.draw(spec, info, spec.bits)
        self.programs = programs_lib.Programs(
            self.system, spec, self.setup, self.splits, info, self.mesh)
        self.state = parallel.replicate(self.programs.start(drawn), self.mesh)
        self.epoch = 0

    def train_epoch(self) -> None:
        self.epoch += 1
        plan = self.system.plan(self.spec, self.splits, self.epoch)
        step = self.programs.steps[plan.stage]
        rows = parallel.batch_sharding(self.mesh)
        state = self.state
        for batch in plan.batches(state, 0):
            state, _ = step(state, jax.device_put(batch, rows),
                            self.programs.consts)
        self.state = jax.block_until_ready(state)

    def snapshot(self):
        """Host copies of the parameters (the step donates its state)."""
        return parallel.to_host((self.state.params, self.state.rest))

    def evaluate(self, snapshot) -> None:
        params, rest = snapshot
        if self.encode_only:
            for split in (self.splits.query, self.splits.database):
                evaluation.encode_codes(
                    self.programs.encode, params, rest, split,
                    self.spec.eval_batch_size, mesh=self.mesh)
            return
        evaluation.evaluate_lengths(
            self.programs.encode, params, rest, self.splits,
            self.system.layout(self.setup.bits),
            evaluators=self.system.evaluators,
            batch_size=self.spec.eval_batch_size, mesh=self.mesh)


def _after(run: _Run) -> tuple[float, float, float]:
    """(a): (total, epoch, evaluation) seconds, one after the other."""
    snapshot = run.snapshot()
    start = time.perf_counter()
    run.train_epoch()
    trained = time.perf_counter()
    run.evaluate(snapshot)
    end = time.perf_counter()
    return end - start, trained - start, end - trained


def _beside(run: _Run) -> float:
    """(b): seconds of the evaluation on a thread while the epoch trains."""
    snapshot = run.snapshot()
    start = time.perf_counter()
    thread = threading.Thread(target=run.evaluate, args=(snapshot,))
    thread.start()
    run.train_epoch()
    thread.join()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=8)
    parser.add_argument('--encode_only', action='store_true',
                        help='the evaluation\'s forward passes alone '
                        '(no ranking)')
    parser.add_argument('--smoke', action='store_true',
                        help='CI: 2 rounds on digits, 8/16 bits')
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f'--rounds={args.rounds}: give at least 1.')
    compiler.use_persistent_cache(compiler.default_cache_dir())
    config = default.get_config()
    if args.smoke:
        config.update(SMOKE)
        args.rounds = 2
    run = _Run(config, encode_only=args.encode_only)
    _after(run)  # the first epoch and evaluation load their programs
    _beside(run)
    after, beside = [], []
    for r in range(args.rounds):
        pair = (_after, _beside) if r % 2 == 0 else (_beside, _after)
        for variant in pair:
            (after if variant is _after else beside).append(variant(run))
    after = np.array(after)
    ratios = np.array(beside) / after[:, 0]
    what = ('the forward passes alone' if args.encode_only
            else 'the full evaluation')
    print(f'{run.spec.dataset}, {len(run.spec.bits)} lengths, '
          f'{args.rounds} rounds, {what}, {jax.device_count()} '
          f'{jax.default_backend()} device(s), {os.cpu_count()} cores\n')
    print('| variant | median s |\n|---|---|')
    for name, values in (('epoch', after[:, 1]), ('evaluation', after[:, 2]),
                         ('epoch, then evaluation', after[:, 0]),
                         ('evaluation beside the epoch', beside)):
        print(f'| {name} | {np.median(values):.3f} |')
    print(f'\nbeside / after: median {np.median(ratios):.3f} (rounds '
          + ', '.join(f'{x:.3f}' for x in ratios) + '); the evaluation is '
          f'{np.median(after[:, 2] / after[:, 0]):.3f} of epoch + '
          'evaluation, the most an overlap could save')


if __name__ == '__main__':
    main()
