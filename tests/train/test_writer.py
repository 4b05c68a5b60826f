"""Step scalars, TensorBoard events and profiler traces of a run."""

import glob
import io
import os
import re
import sys
import types

import jax.numpy as jnp
import pytest

from nhl_jax import cli, runlog
from nhl_jax.cli.configs import default
from nhl_jax.errors import UsageError
from nhl_jax.train import writer as writer_lib
from tests.support import wandb_records


def _config(**overrides):
    config = default.get_config()
    config.update(dict(dataset='digits', backbone='mlp', bits=(8, 16),
                       epochs=2, eval_every=1, batch_size=32, log_every=10))
    config.update(overrides)
    return config


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A run, its stderr a terminal (kept in terminal.txt beside it)."""
    workdir = tmp_path_factory.mktemp('scalars') / 'run'
    terminal = _Terminal()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, 'stderr', terminal)
        cli.train_and_evaluate(_config(profile_steps=(3, 5)), str(workdir))
    (workdir.parent / 'terminal.txt').write_text(terminal.getvalue())
    return workdir


def test_a_terminal_shows_the_runs_eta_and_the_encoding(run):
    out = (run.parent / 'terminal.txt').read_text()
    assert re.search(r'epoch 2/2: +\d+%.*\| *\d+/62 \[.*<', out)  # ETA
    assert 'encode query' in out and 'encode database' in out
    assert re.search(r'\nepoch 1/2 loss \d\.\d{4} \(\d+\.\d\d s\)\n', out)
    assert re.search(r'\n  mAP 8:\d\.\d{4} 16:\d\.\d{4} \(\d+\.\d\d s\)\n',
                     out)


def test_step_scalars_every_log_every_steps(run):
    steps = runlog.read_jsonl(str(run / 'metrics.jsonl'), kind='step')
    # 31 steps per epoch: the means over steps 1-10, 11-20, ..., 51-60.
    assert [r['step'] for r in steps] == [10, 20, 30, 40, 50, 60]
    assert [r['epoch'] for r in steps] == [1, 1, 1, 2, 2, 2]
    for record in steps:
        assert set(record['losses']) == set(record['weights']) == {'8', '16'}
        assert set(record['anti_domination']) == {'8', '16'}
        assert all(0 <= v <= 1 for v in record['anti_domination'].values())
    rounds = runlog.read_jsonl(str(run / 'metrics.jsonl'))
    assert [r['epoch'] for r in rounds] == [1, 2]


def test_tensorboard_events_hold_the_same_scalars(run):
    from tensorboard.backend.event_processing import event_accumulator
    events = event_accumulator.EventAccumulator(str(run / 'tensorboard'))
    events.Reload()
    tags = set(events.Tags()['scalars'])
    assert {'step/loss', 'step/losses/8', 'round/loss', 'round/map/16'} <= tags
    logged = runlog.read_jsonl(str(run / 'metrics.jsonl'), kind='step')
    values = [e.value for e in events.Scalars('step/losses/16')]
    assert values == pytest.approx([r['losses']['16'] for r in logged],
                                   rel=1e-6)


def test_profile_steps_write_a_trace(run):
    traces = glob.glob(str(run / 'profile' / 'plugins' / 'profile' / '*' /
                           '*.xplane.pb'))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


def test_resume_logs_every_step_interval_once_and_exactly(run, tmp_path):
    """Steps 31-40 span the restore after epoch 1 (31 steps): their mean
    is over all ten steps, as in the run never stopped."""
    cli.train_and_evaluate(_config(epochs=1), str(tmp_path))
    cli.train_and_evaluate(_config(), str(tmp_path), resume=True)
    steps = runlog.read_jsonl(str(tmp_path / 'metrics.jsonl'), kind='step')
    assert [r['step'] for r in steps] == [10, 20, 30, 40, 50, 60]
    assert steps == runlog.read_jsonl(str(run / 'metrics.jsonl'), kind='step')


def test_scalars_are_read_one_interval_late():
    """The host reads an interval only once the next one has been run."""
    written = []
    fake = types.SimpleNamespace(
        enabled=True, steps=lambda step, epoch, s: written.append(step))
    logger = writer_lib.StepLogger(fake, (8,), every=5)
    for step in range(1, 13):
        logger.add(step, 1, {'loss': jnp.asarray(float(step))})
        if step == 9:
            assert written == [], written  # step 5 waits for step 10
    assert written == [5]
    logger.flush()
    assert written == [5, 10]


def test_bad_profile_steps_are_refused():
    with pytest.raises(UsageError, match='profile_steps must be'):
        cli.resolve(_config(profile_steps=(5, 2)))


def test_wandb_offline_logs_the_same_scalars_the_config_and_a_table(
        tmp_path, monkeypatch):
    pytest.importorskip('wandb')
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_SILENT', 'true')
    workdir = tmp_path / 'run'
    results = cli.train_and_evaluate(
        _config(epochs=1, writers='jsonl,wandb', plots=False), str(workdir))
    assert not (workdir / 'plots').exists()  # --config.plots=false
    assert results['phase_seconds']['plots'] < 0.05
    rows = wandb_records.history(str(workdir))
    logged = runlog.read_jsonl(str(workdir / 'metrics.jsonl'))
    rounds = [r for r in rows if 'round/loss' in r]
    assert [r['round/loss'] for r in rounds] == pytest.approx(
        [r['loss'] for r in logged], rel=1e-6)
    assert rounds[0]['round/map/16'] == pytest.approx(logged[0]['map']['16'])
    steps = [r for r in rows if 'step/loss' in r]
    assert [r['step'] for r in steps] == [10, 20, 30]
    assert any(r.get('results/_type') == 'table-file' for r in rows)
    saved = wandb_records.config(str(workdir))
    assert saved['method'] == 'dpn' and saved['bits'] == [8, 16]
    assert (workdir / 'wandb_id.txt').read_text().strip()


def test_an_unknown_or_missing_writer_is_one_line(monkeypatch):
    with pytest.raises(UsageError, match=r"Unknown writer 'csv'; choose "
                                         r"from \['jsonl', 'tensorboard', "
                                         r"'wandb'\]"):
        writer_lib.parse_writers('jsonl,csv')
    monkeypatch.setattr(writer_lib.importlib.util, 'find_spec',
                        lambda name: None)
    with pytest.raises(UsageError, match='needs wandb: pip install'):
        writer_lib.parse_writers('wandb')
    assert writer_lib.parse_writers('jsonl') == ()
    assert writer_lib.parse_writers(None) == ()
