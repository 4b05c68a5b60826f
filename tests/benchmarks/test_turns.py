"""benchmarks/turns.py: runs' rounds alternate, one loop at a time."""

import argparse
import json
import os
import sys
import threading
import time

import pytest

from nhl_jax.cli.configs import default
from tests.support import ROOT

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import nested_vs_single
import turns


def _config(epochs=3, **fields):
    config = default.get_config()
    config.update(dataset='digits', bits=(8, 16), epochs=epochs,
                  eval_every=epochs, batch_size=32, **fields)
    return config


class _FakeFit:
    """``loop.fit`` that logs which run works when, writing round records."""

    def __init__(self, fail=None, stop=None):
        self.log, self.fail, self.lock = [], fail, threading.Lock()
        self.busy, self.stop = 0, stop

    def __call__(self, system, spec, splits, bits, workdir, *,
                 after_round):
        del system, splits
        os.makedirs(workdir)
        name = os.path.basename(workdir)
        for r in range(1, spec.epochs + 1):
            with self.lock:
                self.busy += 1
                assert self.busy == 1, 'two loops worked at once'
            if name == self.fail:
                self.busy -= 1
                raise ValueError('boom')
            time.sleep(0.002)
            self.log.append((name, r))
            with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
                f.write(json.dumps({'epoch': r, 'stage': 'train',
                                    'train_seconds': r + len(bits)}) + '\n')
                f.write(json.dumps({'kind': 'step', 'step': r}) + '\n')
            with self.lock:
                self.busy -= 1
            if name == self.stop:  # an early stop: no after_round
                return
            after_round()


@pytest.fixture
def fake_fit(monkeypatch):
    fit = _FakeFit()
    monkeypatch.setattr(turns.loop, 'fit', fit)
    monkeypatch.setattr(turns.trainer, 'run_splits', lambda spec: None)
    return fit


def test_rounds_alternate_reversing_every_other_cycle(fake_fit, tmp_path):
    runs = {'nested': (_config(), (8, 16)),
            'single 8': (_config(single_length=True), (8,)),
            'single 16': (_config(single_length=True), (16,))}
    seconds = turns.rounds(runs, str(tmp_path))
    a, b, c = 'nested', 'single_8', 'single_16'
    assert fake_fit.log == [(a, 1), (b, 1), (c, 1), (c, 2), (b, 2), (a, 2),
                            (a, 3), (b, 3), (c, 3)]
    # Each run's round records only, in order (the step records skipped).
    assert seconds == {'nested': [3, 4, 5], 'single 8': [2, 3, 4],
                       'single 16': [2, 3, 4]}


def test_a_failed_run_is_raised_and_the_others_finish(monkeypatch, tmp_path):
    fit = _FakeFit(fail='single_8')
    monkeypatch.setattr(turns.loop, 'fit', fit)
    monkeypatch.setattr(turns.trainer, 'run_splits', lambda spec: None)
    runs = {'nested': (_config(), (8, 16)),
            'single 8': (_config(single_length=True), (8,))}
    with pytest.raises(RuntimeError, match="run 'single 8' failed"):
        turns.rounds(runs, str(tmp_path))
    assert [r for name, r in fit.log if name == 'nested'] == [1, 2, 3]


def test_runs_of_different_lengths_are_refused(fake_fit, tmp_path):
    runs = {'a': (_config(epochs=3), (8,)), 'b': (_config(epochs=4), (8,))}
    with pytest.raises(ValueError, match='different numbers of rounds'):
        turns.rounds(runs, str(tmp_path))
    assert not fake_fit.log and not os.listdir(tmp_path)



def test_a_run_that_stops_early_leaves_the_others_their_turns(monkeypatch,
                                                             tmp_path):
    fit = _FakeFit(stop='single_8')
    monkeypatch.setattr(turns.loop, 'fit', fit)
    monkeypatch.setattr(turns.trainer, 'run_splits', lambda spec: None)
    runs = {'nested': (_config(), (8, 16)),
            'single 8': (_config(single_length=True), (8,))}
    seconds = turns.rounds(runs, str(tmp_path))
    assert fit.log == [('nested', 1), ('single_8', 1), ('nested', 2),
                       ('nested', 3)]
    assert seconds == {'nested': [3, 4, 5], 'single 8': [2]}


def test_nested_vs_single_interleaves_the_real_loops():
    """The library's loop in turns (nested_vs_single's --smoke fields):
    one ratio, of round 2, the first and the last rounds left out."""
    args = argparse.Namespace(dataset='digits', bits=(8, 16), smoke=True,
                              rounds=3, epochs=None)
    line = nested_vs_single._interleaved(args, 'dpn', (0,), (8, 16))
    assert line.startswith('\nsingle / nested with the rounds interleaved '
                           'in one process (3 rounds each; the first and the '
                           'last left out)')
    ratio = float(line.split('over all 1 rounds: ')[1].split('x')[0])
    assert 0 < ratio < 10  # two single-length rounds over one nested round


def test_the_nested_run_is_timed_before_and_after_the_single_ones():
    before = {'params_sha256': 'a', 'train_seconds': 10.0, 'map': 1}
    after = {'params_sha256': 'a', 'train_seconds': 12.0, 'map': 2}
    run = nested_vs_single._bracketed(before, after)
    assert run == {'params_sha256': 'a', 'train_seconds': 11.0, 'map': 1,
                   'train_seconds_runs': [10.0, 12.0]}
    with pytest.raises(RuntimeError, match='not deterministic'):
        nested_vs_single._bracketed(before, dict(after, params_sha256='b'))
