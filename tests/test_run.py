"""The command line: one-line errors before any work, and a short real run.

Flag and config errors are checked in-process, on run.py's own flags
(defined on a fresh ``FlagValues`` per command line) and the trainer's
entry point; two subprocesses check what only the real command shows: the
one-line ``error:`` exit and a run that writes its results.
"""

import json
import os
import subprocess
import sys
import warnings

import pytest
from absl import flags

from experiments import run
from nhl_jax import train
from nhl_jax.config import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, 'experiments', 'run.py'), *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def _parse(*args):
    """(config, workdir, resume) as ``run.py *args`` parses them."""
    argv = ['run.py', *args]
    flag_values = flags.FlagValues()
    with warnings.catch_warnings():
        # ml_collections loads the config file with importlib's deprecated
        # load_module(); the command line does too, there unseen.
        warnings.filterwarnings('ignore', 'the load_module', DeprecationWarning)
        run.define_flags(flag_values, argv)
        flag_values(argv)
    return run.parse(flag_values)


def _usage_error(*args) -> str:
    """The UsageError message ``run.py *args`` exits with."""
    with pytest.raises(UsageError) as e:
        config, workdir, resume = _parse(*args)
        train.train_and_evaluate(config, workdir, resume=resume)
    return str(e.value)


@pytest.mark.parametrize('args, message', [
    # The full list is checked by the CLI test: in-process, other tests'
    # losses may be registered.
    (['--method=dspn'], "Unknown method 'dspn'; choose one of"),
    (['--head=flat'], "head 'flat' is only used by --method=mah"),
    (['--head=tree'], "Unknown head 'tree'; choose one of"),
    (['--bits=16,8'], 'strictly increasing'),
    (['--bits=8,x'], 'comma-separated integers'),
    (['--dataset=cifar'], "Unknown dataset 'cifar'; choose one of"),
    (['--weighting=dominance'], "Unknown weighting 'dominance'"),
    (['--bits=8,512'], 'wider than the cnn feature (256)'),
    (['--method=dpn', '--config.loss_kwargs={"marg": 2.0}'],
     "no hyperparameter(s) ['marg']"),
])
def test_bad_flags_fail_fast_with_one_line(args, message, tmp_path):
    workdir = tmp_path / 'run'
    error = _usage_error(*args, f'--workdir={workdir}')
    assert message in error and '\n' not in error, error  # `error: ` + 1 line
    assert not workdir.exists()


def test_unknown_config_field_is_refused():
    with pytest.raises(AttributeError, match='margin2'):
        _parse('--config.loss_kwargs.margin2=1.0')


def test_missing_workdir_parent(tmp_path):
    error = _usage_error(f'--workdir={tmp_path}/missing/run')
    assert 'does not exist' in error and '\n' not in error


def test_flags_reach_the_config():
    config, workdir, resume = _parse(
        '--method=csq', '--dataset=digits', '--bits=8,16', '--epochs=1',
        '--single_length', '--config.batch_size=32')
    assert (config.method, config.dataset, config.bits, config.epochs,
            config.single_length, config.batch_size) == (
                'csq', 'digits', (8, 16), 1, True, 32)
    assert (workdir, resume) == (os.path.join('runs', 'digits_csq'), False)
    assert _parse('--workdir=w', '--resume')[1:] == ('w', True)


def test_cli_error_is_one_line_without_traceback(tmp_path):
    workdir = tmp_path / 'run'
    result = _run('--method=dspn', f'--workdir={workdir}')
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        "error: Unknown method 'dspn'; choose one of ['csq', 'dch', 'dpn', "
        "'dsh', 'dtsh', 'lcdsh', 'mah', 'mdsh', 'odh']."), result.stderr
    assert not any('Traceback' in line for line in lines), result.stderr
    assert not workdir.exists()


def test_short_run_writes_results_under_the_default_workdir(tmp_path):
    result = _run('--method=csq', '--dataset=digits', '--bits=8,16',
                  '--epochs=1', cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'mAP (best)' in result.stdout
    path = tmp_path / 'runs' / 'digits_csq' / 'results.json'
    results = json.loads(path.read_text())
    assert results['method'] == 'csq' and results['bits'] == [8, 16]
    assert 'INFO' not in result.stderr  # orbax chatter is silenced


@pytest.mark.parametrize('name', ['cifar10', 'imagenet100', 'coco'])
def test_paper_configs(name):
    from experiments.configs import paper
    from nhl_jax.config import check_config
    config = paper.get_config(name)
    assert (config.backbone, config.learning_rate, config.batch_size) == (
        'resnet50', 1e-5, 64)
    with pytest.raises(UsageError, match='pass --data_dir'):
        check_config(config)
