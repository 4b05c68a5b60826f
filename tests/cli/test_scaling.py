"""--config.per_device_batch_size and --config.lr_scaling, in-process."""

import jax
import ml_collections
import pytest

from nhl_jax import cli
from nhl_jax.cli import train as run
from nhl_jax.cli.config import UsageError
from tests.support import command_line


@pytest.fixture
def devices(monkeypatch):
    """Pretends the process sees ``n`` devices (config checks only)."""
    def use(n):
        monkeypatch.setattr(jax, 'device_count', lambda: n)
    return use


def _spec(*args):
    config = run.parse(command_line.flags_of('--dataset=digits', *args))[0]
    return cli.resolve(config)


def test_default_run_has_no_scaling():
    spec = _spec()
    assert (spec.batch_size, spec.learning_rate) == (64, 1e-3)
    assert 'batch_scaling' not in spec.config
    assert (spec.config['per_device_batch_size'], spec.config['lr_scaling'],
            spec.config['lr_reference_batch']) == (None, 'none', None)


@pytest.mark.parametrize('flags, batch', [
    ([], 32),  # every device
    (['--devices=2'], 16),  # the devices the run uses
])
def test_global_batch_is_per_device_times_devices(devices, flags, batch):
    devices(4)
    spec = _spec('--config.per_device_batch_size=8', *flags)
    assert (spec.batch_size, spec.learning_rate) == (batch, 1e-3)
    # config.json: the explicit run, and the request.
    assert (spec.config['batch_size'], spec.config['per_device_batch_size'],
            spec.config['lr_scaling']) == (batch, None, 'none')
    assert spec.config['batch_scaling'] == {
        'per_device_batch_size': 8, 'devices': batch // 8,
        'lr_scaling': 'none', 'lr_reference_batch': None,
        'learning_rate': 1e-3, 'backbone_learning_rate': None}


def test_linear_scaling_multiplies_every_rate(devices):
    devices(4)
    spec = _spec('--config.per_device_batch_size=32',
                 '--config.lr_scaling=linear',
                 '--config.backbone_learning_rate=1e-4')
    # 4 x 32 = 128 = twice the library recipe's batch of 64.
    assert spec.batch_size == 128
    assert spec.learning_rate == pytest.approx(2e-3)
    assert spec.backbone_learning_rate == pytest.approx(2e-4)
    assert spec.recipe['learning_rate'] == pytest.approx(2e-3)
    assert spec.config['batch_scaling']['lr_reference_batch'] == 64


def test_linear_scaling_of_a_global_batch_and_a_given_reference():
    spec = _spec('--config.batch_size=32', '--config.lr_scaling=linear',
                 '--config.lr_reference_batch=128')
    assert (spec.batch_size, spec.learning_rate) == (32, pytest.approx(
        2.5e-4))


@pytest.mark.parametrize('flags, batch, rate', [
    # The per-device batch wins over the recipe's 128; its rate stays.
    ([], 16, 1e-5),
    # The recipe's rate was set for its batch of 128.
    (['--config.lr_scaling=linear'], 16, 1e-5 * 16 / 128),
    # An explicit rate wins over the recipe's, and is scaled from there.
    (['--config.lr_scaling=linear', '--config.learning_rate=1e-4'], 16,
     1e-4 * 16 / 128),
])
def test_per_device_batch_and_the_reference_recipe(flags, batch, rate):
    spec = _spec('--method=dpsh', '--config.recipe=reference',
                 '--config.per_device_batch_size=16', *flags)
    assert (spec.optimizer, spec.batch_size) == ('rmsprop', batch)
    assert spec.learning_rate == pytest.approx(rate)


def test_mah_scales_its_own_rate():
    spec = _spec('--method=mah', '--config.lr_scaling=linear',
                 '--config.batch_size=128')
    assert spec.options.learning_rate == pytest.approx(2e-3)
    assert spec.learning_rate == 1e-3  # not MAH's rate: left alone
    assert spec.config['batch_scaling']['learning_rate'] == 1e-3


def test_resolved_config_resolves_to_itself_on_other_devices(devices):
    devices(4)
    spec = _spec('--config.per_device_batch_size=8',
                 '--config.lr_scaling=linear')
    devices(1)  # as load_run re-resolves config.json
    again = cli.resolve(ml_collections.ConfigDict(spec.config))
    assert (again.batch_size, again.learning_rate) == (32, spec.learning_rate)
    assert again.config == spec.config


@pytest.mark.parametrize('flags, message', [
    (['--config.batch_size=32', '--config.per_device_batch_size=8'],
     'batch_size 32 and per_device_batch_size 8 are both set; pass one'),
    # Equal to the default: told apart on the command line.
    (['--config.batch_size=64', '--config.per_device_batch_size=8'],
     'batch_size 64 and per_device_batch_size 8 are both set; pass one'),
    (['--config.per_device_batch_size=0'],
     'per_device_batch_size must be a positive number, got 0'),
    (['--config.lr_scaling=sqrt'], "Unknown lr_scaling 'sqrt'"),
    (['--config.lr_reference_batch=256'],
     'lr_reference_batch is the batch of --config.lr_scaling=linear'),
])
def test_bad_batch_flags_are_one_line_usage_errors(flags, message):
    with pytest.raises(UsageError) as e:
        _spec(*flags)
    assert message in str(e.value) and '\n' not in str(e.value)


def test_both_batches_in_a_config_file_are_refused():
    config = run.parse(command_line.flags_of('--dataset=digits'))[0]
    config.update(batch_size=32, per_device_batch_size=8)
    with pytest.raises(UsageError, match='are both set'):
        cli.resolve(config)
