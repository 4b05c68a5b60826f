"""Runs that survive: kill and resume, preemption, corruption, NaN, fuzzing."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax import cli, errors, losses, runlog
from nhl_jax.cli.config import UsageError, check_config
from nhl_jax.cli.configs import default
from tests.support import ROOT

RUN = os.path.join(ROOT, 'experiments', 'run.py')
# Long enough epochs (small CNN on mnist5k) to be interrupted mid-run.
CNN_ARGS = ['--dataset=mnist5k', '--bits=8,16', '--epochs=4',
            '--config.eval_every=1', '--method=dpn', '--config.log_every=4']


def _config(**overrides):
    config = default.get_config()
    config.update(dict(dataset='mnist5k', bits=(8, 16), epochs=4,
                       eval_every=1, method='dpn', log_every=4))
    config.update(overrides)
    return config


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('straight')
    results = cli.train_and_evaluate(_config(), str(workdir))
    return dict(results, workdir=str(workdir))


def _start(workdir, *extra):
    return subprocess.Popen([sys.executable, RUN, *CNN_ARGS,
                             f'--workdir={workdir}', *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(predicate, proc, timeout=240):
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, 'timed out'
        time.sleep(0.05)


def _finished_steps(workdir):
    path = os.path.join(workdir, 'checkpoints')
    if not os.path.isdir(path):
        return []
    return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def _resume(workdir):
    result = subprocess.run([sys.executable, RUN, *CNN_ARGS,
                             f'--workdir={workdir}', '--resume'],
                            capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(workdir, 'results.json')) as f:
        return json.load(f)


def _assert_same_run(results, reference):
    assert results['params_sha256'] == reference['params_sha256']
    assert results['map'] == reference['map']
    assert results['map_last'] == reference['map_last']


def test_sigkill_then_resume_equals_uninterrupted(uninterrupted, tmp_path):
    workdir = str(tmp_path / 'run')
    proc = _start(workdir)
    _wait_for(lambda: len(_finished_steps(workdir)) >= 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not os.path.exists(os.path.join(workdir, 'results.json'))
    _assert_same_run(_resume(workdir), uninterrupted)
    epochs = [r['epoch'] for r in
              runlog.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))]
    assert epochs == [1, 2, 3, 4]


def _logged_step(workdir) -> int:
    """The last step of a 'step' record in metrics.jsonl (0: none yet)."""
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(path):
        return 0
    try:
        records = runlog.read_jsonl(path, kind='step')
    except ValueError:  # a line caught half-written
        return 0
    return records[-1]['step'] if records else 0


def test_ctrl_c_checkpoints_mid_run_and_resumes_exactly(uninterrupted,
                                                        tmp_path):
    """SIGINT as SIGTERM (whose path the two-process and per-system tests
    take): a mid-round checkpoint, then a resume equal to a run never
    stopped, its step records (means over intervals across the restore)
    included."""
    workdir = str(tmp_path / 'run')
    # Step records every 4 steps: wait until epoch 2 (steps 32-62) is a few
    # steps in, so the signal lands mid-epoch however fast the steps are.
    proc = _start(workdir)
    _wait_for(lambda: _logged_step(workdir) >= 38, proc)
    # Saves are asynchronous: the epoch's checkpoint may still be in flight.
    before = max(_finished_steps(workdir), default=0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    assert 'interrupted: checkpoint of step' in err
    step = _finished_steps(workdir)[-1]
    assert step > before
    with open(os.path.join(workdir, 'checkpoints', str(step), 'meta',
                           'metadata')) as f:
        partial = json.load(f)['partial']
    assert partial is not None and partial['batches'] < 31  # mid-epoch
    _assert_same_run(_resume(workdir), uninterrupted)
    steps = [runlog.read_jsonl(os.path.join(run, 'metrics.jsonl'),
                               kind='step')
             for run in (workdir, uninterrupted['workdir'])]
    assert steps[0] == steps[1]


def test_same_seed_is_bit_identical(uninterrupted, tmp_path):
    again = cli.train_and_evaluate(_config(), str(tmp_path))
    _assert_same_run(again, uninterrupted)
    other = cli.train_and_evaluate(_config(seed=1, epochs=1),
                                   str(tmp_path / 'other'))
    assert other['params_sha256'] != uninterrupted['params_sha256']


def _one_epoch_run(tmp_path):
    config = _config(dataset='digits', epochs=1)
    cli.train_and_evaluate(config, str(tmp_path))
    return config, _finished_steps(str(tmp_path))[-1]


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    config, step = _one_epoch_run(tmp_path)
    state_dir = tmp_path / 'checkpoints' / str(step) / 'state'
    for root, _, files in os.walk(state_dir):
        for name in files:
            with open(os.path.join(root, name), 'r+b') as f:
                f.truncate(max(os.path.getsize(f.name) // 3, 1))
    config.epochs = 2
    with pytest.raises(UsageError, match=rf'no checkpoint of .* verifies '
                                         rf'\(checkpoint {step} \(its '
                                         r'arrays cannot be read.*nothing '
                                         'was changed'):
        cli.train_and_evaluate(config, str(tmp_path), resume=True)
    assert _finished_steps(str(tmp_path)) == [step]  # nothing moved


def test_half_written_checkpoint_is_never_picked_up(tmp_path):
    config, step = _one_epoch_run(tmp_path)
    ckpts = tmp_path / 'checkpoints'
    # What a kill during a save leaves behind: orbax's temporary directory.
    shutil.copytree(ckpts / str(step),
                    ckpts / f'{step + 100}.orbax-checkpoint-tmp-12345')
    config.epochs = 2
    results = cli.train_and_evaluate(config, str(tmp_path), resume=True)
    assert results['epochs'] == {'8': 2, '16': 2}


def test_an_edited_config_cannot_continue_another_runs_checkpoint(tmp_path):
    config, step = _one_epoch_run(tmp_path)
    path = tmp_path / 'config.json'
    saved = json.loads(path.read_text())
    path.write_text(json.dumps(dict(saved, method='csq')))
    config.update(method='csq', epochs=2)
    with pytest.raises(UsageError, match=r"different run \(fields "
                                         r"\['method'\]\).*intact"):
        cli.train_and_evaluate(config, str(tmp_path), resume=True)
    assert _finished_steps(str(tmp_path)) == [step]


def test_a_torn_log_line_is_dropped_on_resume(tmp_path, capsys):
    config, _ = _one_epoch_run(tmp_path)
    with open(tmp_path / 'metrics.jsonl', 'a') as f:
        f.write('{"epoch": 2, "lo')  # a kill in the middle of a write
    config.epochs = 2
    cli.train_and_evaluate(config, str(tmp_path), resume=True)
    assert 'dropped its torn last line' in capsys.readouterr().out
    epochs = [r['epoch'] for r in
              runlog.read_jsonl(str(tmp_path / 'metrics.jsonl'))]
    assert epochs == [1, 2]


def test_a_resume_with_nothing_to_train_says_so(tmp_path, capsys):
    config, step = _one_epoch_run(tmp_path)
    capsys.readouterr()
    results = cli.train_and_evaluate(config, str(tmp_path), resume=True)
    out = capsys.readouterr().out
    assert 'has trained all 1 rounds; nothing to train' in out
    assert results['epochs'] == {'8': 1, '16': 1}
    assert _finished_steps(str(tmp_path)) == [step]


def test_a_full_disk_is_one_error_and_keeps_earlier_checkpoints(
        tmp_path, monkeypatch):
    config, step = _one_epoch_run(tmp_path)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, 'disk_usage',
                        lambda path: usage._replace(free=4096))
    config.epochs = 2
    with pytest.raises(errors.RunError, match=rf'No space left on device '
                                              rf'\(0\.0 MiB free there\); '
                                              rf'checkpoints up to step '
                                              rf'{step} are intact'):
        cli.train_and_evaluate(config, str(tmp_path), resume=True)
    assert _finished_steps(str(tmp_path)) == [step]
    monkeypatch.undo()
    results = cli.train_and_evaluate(config, str(tmp_path), resume=True)
    assert results['epochs'] == {'8': 2, '16': 2}


def _nan_after(steps):
    """A loss that turns NaN once its own step counter reaches ``steps``."""

    def init(key, *, num_train, num_classes, bits):
        del key, num_train, num_classes, bits
        return jnp.zeros((), jnp.int32)

    def apply(state, codes, labels, index):
        del labels, index
        value = jnp.mean(codes ** 2)
        return jnp.where(state >= steps, jnp.nan, value), state + 1

    return losses.HashLoss(init, apply)


def test_nan_loss_stops_naming_step_and_length(tmp_path, monkeypatch):
    monkeypatch.setitem(losses.LOSSES, 'nan_after', lambda: _nan_after(40))
    config = _config(dataset='digits', method='nan_after', epochs=5)
    with pytest.raises(FloatingPointError,
                       match=r'non-finite at step 41 \(epoch 3\) for length'
                             r"\(s\) \[8, 16\].*checkpoint \(step 30\)"):
        cli.train_and_evaluate(config, str(tmp_path))
    assert _finished_steps(str(tmp_path))[-1] == 30  # last good one kept


FIELDS = {
    'method': ['dpn', 'dsh', 'nope', '', 3, None],
    'dataset': ['digits', 'cifar', 7, None],
    'backbone': [None, 'mlp', 'vgg', 1],
    'bits': [(8, 16), (16, 8), (8, 8), (0, 8), (8, 1024), (), 'abc', (8.5,),
             (True, 8)],
    'weighting': ['none', 'paper', 'released', 'PAPER', 0],
    'distill_weight': [0.1, 0.0, -1.0, float('nan'), 'x'],
    'topology': ['adjacent', 'ring', None],
    'epochs': [1, 0, -3, 2.5, 'ten', True],
    'batch_size': [32, 0, 7, -1, 1.5],
    'learning_rate': [1e-3, 0.0, -1.0, 'fast', float('inf')],
    'top_k': [None, 10, 0, -5, 'all'],
    'devices': [None, 1, 2, 0, 'x'],
}


def test_fuzzed_configs_fail_only_with_usage_errors():
    rng = np.random.default_rng(0)
    failures = 0
    for _ in range(300):
        config = default.get_config()
        with config.unlocked():
            for name, values in FIELDS.items():
                if rng.random() < 0.3:
                    # A typed field refuses a wrong type up front.
                    with contextlib.suppress(TypeError):
                        config[name] = values[rng.integers(len(values))]
        try:
            check_config(config)
        except UsageError as e:
            assert '\n' not in str(e)
            failures += 1
    assert failures > 100
