"""Training loops of several runs in one process, one round each in turn.

A machine that drifts by +-20 % within a minute moves two runs timed a
minute apart by as much as what they are compared for. Here every run is
the library's own loop (``nhl_jax.train.loop.fit``, as the command line
trains it) in a thread of its own; a baton lets exactly one loop work at a
time and passes after each round (``fit``'s ``after_round``), so the runs'
rounds alternate a few seconds apart and each round's seconds (its
metrics.jsonl ``train_seconds``) are compared with its neighbours'::

    seconds = turns.rounds({'nested': (config, (8, 16)),
                            'single 8': (config, (8,))}, workdir)
    seconds['nested']  # [round 1 s, round 2 s, ...]

The order of the runs is reversed every other cycle (A B C, C B A, ...),
so a drift linear in time over two cycles weighs the same on each run.
"""

import contextlib
import io
import json
import os
import threading

from nhl_jax import cli
from nhl_jax.cli import registry
from nhl_jax.train import loop, trainer


class _Baton:
    """One holder at a time; the main thread hands it out in turn."""

    def __init__(self, names):
        self._go = {name: threading.Event() for name in names}
        self._back = threading.Event()

    def take(self, name: str) -> None:
        """Blocks ``name``'s thread until it is given the baton."""
        self._go[name].wait()
        self._go[name].clear()

    def give_back(self) -> None:
        self._back.set()

    def turn(self, name: str, thread: threading.Thread) -> None:
        """Main thread: lets ``name`` (run by ``thread``) work until it
        gives the baton back or its thread has ended."""
        self._back.clear()
        self._go[name].set()
        while not self._back.wait(timeout=1.0) and thread.is_alive():
            pass


def rounds(runs: dict, workdir: str) -> dict[str, list[float]]:
    """Trains every run with their rounds alternating; seconds per round.

    Args:
      runs: {name: (config, bits)}: the ConfigDict (``--config`` fields)
        and the lengths of one training run (``(b,)`` for one length).
        Every run should have the same number of rounds.
      workdir: an existing folder; each run writes into a subfolder.

    Returns:
      {name: [train seconds of round 1, round 2, ...]}: shorter for a run
      that stopped early (patience).
    """
    specs = {name: cli.resolve(config) for name, (config, _) in runs.items()}
    rounds_of = {registry.SYSTEMS[s.system].schedule(s).rounds
                 for s in specs.values()}
    if len(rounds_of) != 1:
        raise ValueError(f'runs with different numbers of rounds '
                         f'{sorted(rounds_of)}; give them the same epochs.')
    baton, failed, finished = _Baton(runs), {}, set()

    def train(name):
        spec, (_, bits) = specs[name], runs[name]
        try:
            baton.take(name)
            splits = trainer.run_splits(spec)
            loop.fit(registry.SYSTEMS[spec.system], spec, splits, bits,
                     os.path.join(workdir, _folder(name)),
                     after_round=lambda: (baton.give_back(),
                                          baton.take(name)))
        except Exception as e:  # noqa: BLE001 - re-raised by the main thread
            failed[name] = e
        finally:
            finished.add(name)  # an early stop ends a run's turns too
            baton.give_back()

    threads = {name: threading.Thread(target=train, args=(name,),
                                      daemon=True) for name in runs}
    names = list(runs)
    # A run's first turn also loads its data and programs; its last one
    # finishes the loop after the last round.
    with (contextlib.redirect_stdout(io.StringIO()),
          contextlib.redirect_stderr(io.StringIO())):
        for t in threads.values():
            t.start()
        for cycle in range(rounds_of.pop() + 1):
            for name in names if cycle % 2 == 0 else names[::-1]:
                if name not in finished:
                    baton.turn(name, threads[name])
        for t in threads.values():
            t.join()
    for name, error in failed.items():
        raise RuntimeError(f'run {name!r} failed: {error!r}') from error
    return {name: _round_seconds(os.path.join(workdir, _folder(name)))
            for name in runs}


def _folder(name: str) -> str:
    return name.replace(' ', '_')


def _round_seconds(run_dir: str) -> list[float]:
    """Each round's train seconds, from the run's metrics.jsonl."""
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
        records = [json.loads(line) for line in f]
    return [r['train_seconds'] for r in records
            if 'stage' in r and 'train_seconds' in r]
