"""The NHL system: its options (``--config.head_init``), its initial state."""

import jax
import numpy as np
import pytest
from flax import nnx

from nhl_jax import cli, losses, models
from nhl_jax.cli import train as run
from nhl_jax.cli.config import UsageError
from nhl_jax.nhl import system as nhl_system
from nhl_jax.train import traces
from nhl_jax.train.system import DataInfo
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


@pytest.mark.parametrize('saved', [False, True])
def test_state_drawn_by_its_programs_equals_the_eager_draw(
        saved, tmp_path, monkeypatch):
    # orthohash: loss parameters on the model too; the nested layer's
    # N(0, 0.01) kernel is the draw XLA would round differently in a jit.
    # saved: the two programs as jax.export saved them (the second create
    # reads them back).
    if saved:
        monkeypatch.setattr(traces, '_folder', [str(tmp_path)])
    config = cli.configs.default.get_config()
    config.update({'method': 'orthohash', 'backbone': 'mlp',
                   'bits': (8, 16)})
    spec = cli.resolve(config)
    info = DataInfo((28, 28, 1), 10, {'train': 40, 'query': 8,
                                      'database': 16})
    setup, state = nhl_system.create_train_state(spec, info)
    if saved:
        assert len(list(tmp_path.glob('*.trace'))) == 2
        setup, state = nhl_system.create_train_state(spec, info)
    objective = nhl_system.nhl_objective(
        losses.get(spec.options.loss), setup.bits,
        weighting=spec.options.weighting)
    _, eager = nhl_system._initial_state(
        spec, info, setup.bits, objective, setup.tx,
        jax.random.key(spec.seed))
    assert jax.tree.structure(state) == jax.tree.structure(eager)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(eager)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
