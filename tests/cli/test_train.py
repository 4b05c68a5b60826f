"""The command line: one-line errors before any work, and a short real run.

Flag and config errors are checked in-process, on run.py's own flags
(defined on a fresh ``FlagValues`` per command line) and the trainer's
entry point; two subprocesses check what only the real command shows: the
one-line ``error:`` exit and a run that writes its results.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from nhl_jax import cli
from nhl_jax.cli import registry as systems
from nhl_jax.cli import train as run
from nhl_jax.cli.config import UsageError
from tests.support import ROOT, command_line


def _run(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, 'experiments', 'run.py'), *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


_flags = command_line.flags_of


def _parse(*args):
    """(config, workdir, resume) as ``run.py *args`` parses them."""
    return run.parse(_flags(*args))


def _usage_error(*args) -> str:
    """The UsageError message ``run.py *args`` exits with."""
    with pytest.raises(UsageError) as e:
        config, workdir, resume = _parse(*args)
        cli.train_and_evaluate(config, workdir, resume=resume)
    return str(e.value)


def _tree(root) -> dict:
    """Every path under ``root`` and each file's bytes (None: a folder)."""
    return {path.relative_to(root).as_posix():
            None if path.is_dir() else path.read_bytes()
            for path in root.rglob('*')}


# A bad command line a new user might type, and the start of its one-line
# error, which names the problem and the fix. <file> is a file that exists.
@pytest.mark.parametrize('args, message', [
    # The full list is checked by the CLI test: in-process, other tests'
    # losses may be registered.
    (['--method=dspn'], "Unknown method 'dspn'; choose one of"),
    (['--head=flat'], "head 'flat' is only used by --method=mah"),
    (['--head=tree'], "Unknown head 'tree'; choose one of"),
    (['--bits=16,8'], 'bits must be strictly increasing'),
    (['--bits=8,x'],
     ("--bits must be comma-separated integers, got ['8', 'x']; pass e.g. "
      '--bits=8,16,32.')),
    (['--dataset=cifar'], "Unknown dataset 'cifar'; choose one of"),
    (['--weighting=dominance'], "Unknown weighting 'dominance'"),
    (['--bits=8,512'],
     'longest code (512 bits) is wider than the cnn feature (256)'),
    (['--method=dpn', '--config.loss_kwargs={"marg": 2.0}'],
     ("loss 'dpn' has no hyperparameter(s) ['marg']; valid: ['centers', "
      "'margin', 'p', 'targets'].")),
    (['--config.loss_kwargs.margin2=1.0'],
     "loss 'dpn' has no hyperparameter(s) ['margin2']; valid:"),
    (['--config.loss_kwargs.margin=abc'],
     ("loss 'dpn' hyperparameter margin must be a number, got 'abc'; pass "
      'e.g. --config.loss_kwargs.margin=1.0.')),
    (['--method=dsh', '--config.loss_kwargs.margin'],  # a bare flag: True
     "loss 'dsh' hyperparameter margin must be a number or None, got True"),
    (['--weighting=gradnorm', '--config.weighting_kwargs.beta=1.0'],
     ("weighting 'gradnorm' has no hyperparameter(s) ['beta']; valid: "
      "['alpha', 'learning_rate', 'min_weight'].")),
    (['--weighting=gradnorm', '--config.weighting_kwargs.alpha=abc'],
     ("weighting 'gradnorm' hyperparameter alpha must be a number, got "
      "'abc'; pass e.g. --config.weighting_kwargs.alpha=1.5.")),
    (['--weighting=pcgrad', '--config.weighting_kwargs.alpha=1.0'],
     "weighting 'pcgrad' has no hyperparameter(s) ['alpha']; it takes none"),
    (['--weighting=static', '--config.weighting_kwargs.weights=1,2'],
     ("weighting_kwargs {'weights': (1, 2)} do not fit weighting 'static': "
      'static weights must be 5 positive numbers')),
    (['--config.nofield=1'],
     ("unknown config field 'nofield' (--config.nofield); the valid fields "
      'are listed in nhl_jax/cli/configs/default.py.')),
    (['--config=experiments/configs/nope.py'],
     ("config file 'experiments/configs/nope.py' does not exist; pass an "
      'existing one or a shipped config (default, paper, mah, odh), e.g. '
      '--config=default.')),
    (['--config=experiments/configs/nope.py', '--config.batch_size=8'],
     "config file 'experiments/configs/nope.py' does not exist"),
    (['--config.mah.nofield=1'], "unknown config field 'mah.nofield'"),
    (['--config.nofield.sub=1'], "unknown config field 'nofield.sub'"),
    (['--config=experiments/configs/mah.py', '--config.nofield.sub=1'],
     ("unknown config field 'nofield.sub' (--config.nofield.sub); the valid "
      'fields are listed in experiments/configs/mah.py.')),
    (['--seed=-1'],
     'seed must be an int in [0, 2**63), got -1; pass e.g. --seed=0.'),
    (['--dataset=digits', '--config.batch_size=100000'],
     ('batch_size 100000 is larger than the 1000 training images of digits, '
      'so a train round has no batch; pass --config.batch_size=1000 or '
      'less.')),
    (['--workdir=<file>'],
     ("workdir '<file>' is a file, not a directory; choose another "
      '--workdir.')),
    (['--workdir='], 'workdir is empty; pass --workdir=<directory>'),
])
def test_bad_flags_fail_fast_with_one_line(args, message, tmp_path,
                                           monkeypatch):
    monkeypatch.chdir(ROOT)  # config files are named relative to the repo
    existing = tmp_path / 'file'
    existing.write_text('not a run\n')
    args = [a.replace('<file>', str(existing)) for a in args]
    message = message.replace('<file>', str(existing))
    if not any(a.startswith('--workdir=') for a in args):
        args.append(f'--workdir={tmp_path / "run"}')
    before = _tree(tmp_path)
    error = _usage_error(*args)
    assert error.startswith(message) and '\n' not in error, error
    assert _tree(tmp_path) == before  # no workdir, the file as it was


def test_help_lists_the_registries():
    from nhl_jax import data, models
    from nhl_jax.cli import registry as systems
    from nhl_jax.models import heads
    from nhl_jax.nhl import objective
    flag_values = _flags()
    registries = {'method': systems.methods(), 'dataset': data.DATASETS,
                  'backbone': models.BACKBONES, 'head': heads.HEADS,
                  'weighting': objective.WEIGHTINGS}
    # absl wraps the help at 80 columns, possibly at a name's hyphen.
    text = ''.join(flag_values.get_help().split())
    for flag, registry in registries.items():
        words = set(re.findall(r'[\w-]+', flag_values[flag].help))
        assert set(registry) <= words, (flag, flag_values[flag].help)
        assert all(name in text for name in registry), flag


def test_dotted_overrides_reach_the_loss_and_the_weighting():
    config = _parse('--config.loss_kwargs.margin=2.0')[0]
    assert cli.resolve(config).options.loss_kwargs == {'margin': 2.0}
    config = _parse('--weighting=static',
                    '--config.weighting_kwargs.weights=4,2,1,1,1')[0]
    assert cli.resolve(config).options.weighting_kwargs == {
        'weights': (4, 2, 1, 1, 1)}
    config = _parse('--method=dsh', '--weighting=gradnorm',
                    '--config.loss_kwargs.alpha=0.2',
                    '--config.weighting_kwargs.alpha=1.0')[0]
    options = cli.resolve(config).options
    assert (options.loss_kwargs, options.weighting_kwargs) == (
        {'alpha': 0.2}, {'alpha': 1.0})


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


@pytest.mark.parametrize('args, line', [
    (['--method=dspn'],
     (f"error: Unknown method 'dspn'; choose one of "
      f"{sorted(systems.methods())}.")),
    # ml_collections raises it while loading the config, before main().
    (['--config.nofield.sub=1'],
     ("error: unknown config field 'nofield.sub' (--config.nofield.sub); "
      'the valid fields are listed in nhl_jax/cli/configs/default.py.')),
])
def test_cli_error_is_one_line_without_traceback(args, line, tmp_path):
    workdir = tmp_path / 'run'
    result = _run(*args, f'--workdir={workdir}')
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == line, result.stderr
    assert not any('Traceback' in text for text in lines), result.stderr
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
    from nhl_jax.cli.config import check_config
    from nhl_jax.cli.configs import paper
    config = paper.get_config(name)
    assert (config.backbone, config.learning_rate, config.batch_size) == (
        'resnet50', 1e-5, 64)
    with pytest.raises(UsageError, match='pass --data_dir'):
        check_config(config)
