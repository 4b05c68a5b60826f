"""The NHL system's options: ``--config.head_init``."""

import numpy as np
import pytest
from flax import nnx

from nhl_jax import cli, models
from nhl_jax.cli import train as run
from nhl_jax.cli.config import UsageError
from tests.support import command_line
from tests.support.systems import tiny_config


def test_head_init_is_an_nhl_option_normal_by_default():
    assert cli.resolve(tiny_config('nhl')).options.head_init == 'normal'
    spec = cli.resolve(tiny_config('nhl', head_init='torch'))
    assert spec.options.head_init == 'torch'
    assert spec.config['head_init'] == 'torch'  # config.json


class _Features(nnx.Module):
    """A stand-in backbone: HashNet reads only its feature width."""

    features = 16


def test_hashnet_passes_head_init_to_the_nested_layer():
    def kernel(**head_init):
        net = models.HashNet(_Features(), (8, 16), rngs=nnx.Rngs(0),
                             **head_init)
        return np.asarray(net.head.linear.kernel[...])

    default, torch = kernel(), kernel(head_init='torch')
    np.testing.assert_array_equal(kernel(head_init='normal'), default)
    assert np.abs(torch).max() <= 1 / np.sqrt(default.shape[0])
    assert torch.std() > 2 * default.std()


def test_unknown_head_init_is_a_one_line_usage_error():
    config = run.parse(command_line.flags_of(
        '--dataset=digits', '--config.head_init=xavier'))[0]
    with pytest.raises(UsageError, match=r"Unknown head_init 'xavier'; "
                       r"choose one of \['normal', 'torch'\]"):
        cli.resolve(config)
