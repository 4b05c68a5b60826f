"""The command line: one-line errors before any work, and a short real run."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, 'experiments', 'run.py'), *args],
        cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('args, message', [
    (['--method=dspn'], "Unknown method 'dspn'; choose one of ['csq', 'dch', "
                        "'dpn', 'dsh', 'dtsh', 'lcdsh', 'mah', 'mdsh', 'odh']."),
    (['--head=flat'], "head 'flat' is only used by --method=mah"),
    (['--head=tree'], "Unknown head 'tree'; choose one of"),
    (['--bits=16,8'], 'strictly increasing'),
    (['--bits=8,x'], 'comma-separated integers'),
    (['--dataset=cifar'], "Unknown dataset 'cifar'; choose one of"),
    (['--weighting=dominance'], "Unknown weighting 'dominance'"),
    (['--bits=8,512'], 'wider than the cnn feature (256)'),
    (['--config.loss_kwargs.margin2=1.0'], None),  # unknown config field
])
def test_bad_flags_fail_fast_with_one_line(args, message, tmp_path):
    workdir = tmp_path / 'run'
    result = _run(*args, f'--workdir={workdir}')
    assert result.returncode != 0
    if message is not None:
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith('error: ') and message in lines[-1], (
            result.stderr)
        assert len([line for line in lines if 'Traceback' in line]) == 0
    assert not workdir.exists()


def test_loss_hyperparameters_are_checked(tmp_path):
    result = _run('--method=dpn', '--config.loss_kwargs={"marg": 2.0}',
                  f'--workdir={tmp_path / "run"}')
    assert result.returncode != 0
    assert "no hyperparameter(s) ['marg']" in result.stderr


def test_missing_workdir_parent(tmp_path):
    result = _run(f'--workdir={tmp_path}/missing/run')
    assert result.returncode != 0
    assert 'does not exist' in result.stderr.strip().splitlines()[-1]


def test_short_run_writes_results(tmp_path):
    workdir = tmp_path / 'run'
    result = _run('--method=csq', '--dataset=digits', '--bits=8,16',
                  '--epochs=1', f'--workdir={workdir}')
    assert result.returncode == 0, result.stderr
    assert 'mAP (best)' in result.stdout
    results = json.loads((workdir / 'results.json').read_text())
    assert results['method'] == 'csq' and results['bits'] == [8, 16]
    assert 'INFO' not in result.stderr  # orbax chatter is silenced


@pytest.mark.parametrize('name', ['cifar10', 'imagenet100', 'coco'])
def test_paper_configs(name):
    from experiments.configs import paper
    from nhl_jax.config import UsageError, check_config
    config = paper.get_config(name)
    assert (config.backbone, config.learning_rate, config.batch_size) == (
        'resnet50', 1e-5, 64)
    with pytest.raises(UsageError, match='pass --data_dir'):
        check_config(config)


def test_default_workdir_is_created_under_runs(tmp_path):
    result = _run('--dataset=digits', '--bits=8', '--epochs=1', cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / 'runs' / 'digits_dpn' / 'results.json').exists()
