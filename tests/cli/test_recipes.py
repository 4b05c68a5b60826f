"""--config.recipe: every base loss has a reference recipe; flags win."""

import pytest

from nhl_jax import cli, losses
from nhl_jax.cli import recipes
from nhl_jax.cli import train as run
from nhl_jax.cli.config import UsageError
from tests.support import command_line


def _spec(*args):
    config = run.parse(command_line.flags_of('--dataset=digits', *args))[0]
    return cli.resolve(config)


def test_every_base_loss_has_a_reference_recipe():
    assert set(recipes.REFERENCE) == set(losses.LOSSES)


def test_library_recipe_is_the_default_config():
    spec = _spec('--method=dpsh')
    assert (spec.optimizer, spec.learning_rate, spec.weight_decay,
            spec.batch_size, spec.lr_decay_epochs) == (
        'adam', 1e-3, 1e-5, 64, ())
    assert spec.recipe['name'] == 'library'


def test_reference_recipe_reaches_the_spec_and_config_json():
    spec = _spec('--method=dpsh', '--config.recipe=reference')
    want = {'optimizer': 'rmsprop', 'learning_rate': 1e-5,
            'weight_decay': 1e-5, 'batch_size': 128}
    assert {k: getattr(spec, k) for k in want} == want
    assert {k: spec.config[k] for k in want} == want  # config.json
    assert spec.recipe == {**want, 'name': 'reference',
                           'lr_decay_every': None, 'lr_decay_epochs': [],
                           'lr_decay_factor': 0.1}


def test_fields_set_away_from_the_default_win_over_the_recipe():
    spec = _spec('--method=dpsh', '--config.recipe=reference',
                 '--config.learning_rate=3e-4', '--config.optimizer=sgd')
    assert (spec.optimizer, spec.learning_rate, spec.batch_size) == (
        'sgd', 3e-4, 128)


@pytest.mark.parametrize('method, epochs, drops', [
    ('dbdh', 60, (50,)),  # DBDH.py: / 10 at epoch 50
    ('dbdh', 40, ()),  # never reached
    ('greedyhash', 100, (30, 60, 90)),  # GreedyHash.py: every 30 epochs
])
def test_reference_step_decay(method, epochs, drops):
    spec = _spec(f'--method={method}', '--config.recipe=reference',
                 f'--epochs={epochs}')
    assert spec.lr_decay_epochs == drops


@pytest.mark.parametrize('args, message', [
    (['--method=mah', '--config.recipe=reference'], 'base losses only'),
    (['--config.recipe=paper'], "Unknown recipe 'paper'"),
    (['--config.optimizer=adagrad'], "Unknown optimizer 'adagrad'"),
    (['--config.momentum=1.0'], 'momentum must be in [0, 1)'),
    (['--config.lr_decay_factor=0.0'], 'lr_decay_factor must be in (0, 1]'),
    (['--config.lr_decay_every=0'], 'lr_decay_every must be a positive'),
    (['--config.lr_decay_epochs=0,5'], 'lr_decay_epochs must be positive'),
])
def test_bad_recipe_fields_are_one_line_usage_errors(args, message):
    with pytest.raises(UsageError) as e:
        _spec(*args)
    assert message in str(e.value) and '\n' not in str(e.value)
