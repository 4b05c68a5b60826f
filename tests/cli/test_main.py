"""``nhl-jax <command>``: the dispatcher, shipped configs by name, -m."""

import os
import shutil
import subprocess
import sys

import pytest

from nhl_jax import cli
from nhl_jax.cli import configs
from nhl_jax.cli import train as train_command
from tests.support import command_line


def test_help_lists_every_command(capsys):
    cli.main(['nhl-jax', '--help'])
    out = capsys.readouterr().out
    assert out.startswith('usage: nhl-jax <command>')
    for name in cli.COMMANDS:
        assert f'\n  {name} ' in out


def test_unknown_command_is_one_line():
    with pytest.raises(SystemExit) as e:
        cli.main(['nhl-jax', 'trian', '--method=dpn'])
    assert str(e.value) == (
        "error: unknown command 'trian'; choose one of train, encode, "
        'search, export, plot, export-splits, make-lists (nhl-jax --help).')


def test_the_dispatcher_hands_a_command_its_flags(tmp_path):
    """``python -m nhl_jax <command>`` runs the command's own parser (each
    command's module defines absl flags, so each runs in its process)."""
    out = tmp_path / 'split.npz'
    result = subprocess.run(
        [sys.executable, '-m', 'nhl_jax', 'export-splits',
         '--dataset=digits', '--seed=0', f'--out={out}'],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f'wrote {out}' in result.stdout and out.is_file()


@pytest.mark.parametrize('name', configs.SHIPPED)
def test_shipped_configs_are_files_of_the_package(name):
    assert os.path.isfile(configs.path(name))


@pytest.mark.parametrize('arg,method,dataset', [
    ('--config=mah', 'mah', 'cifar10-1'),
    ('--config=odh', 'odh', 'mnist5k'),
    ('--config=paper:imagenet100', 'dpn', 'imagenet100'),
    ('--config=default', 'dpn', 'mnist5k'),
])
def test_config_takes_the_name_of_a_shipped_config(arg, method, dataset):
    config, _, _ = train_command.parse(command_line.flags_of(arg))
    assert (config.method, config.dataset) == (method, dataset)


def test_a_file_of_a_shipped_name_wins_over_the_shipped_config(tmp_path,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'mah').write_text('')  # a file named like a shipped config
    assert train_command.expand_config_path(['x', '--config=mah']) == [
        'x', '--config=mah']
    assert train_command.expand_config_path(['x', '--config', 'odh']) == [
        'x', '--config', configs.path('odh')]


def test_unknown_shipped_name_is_an_error():
    with pytest.raises(ValueError, match='no shipped config'):
        configs.path('nope')


def test_the_console_script_is_installed():
    script = shutil.which('nhl-jax', path=os.path.dirname(sys.executable))
    assert script, 'pip install -e . installs the nhl-jax command'
    result = subprocess.run([script, '--help'], capture_output=True,
                            text=True, check=True, timeout=120)
    assert result.stdout.startswith('usage: nhl-jax <command>')
