"""The round loop's resume decisions: what a restored run goes on with."""

import types

from nhl_jax.train import loop


def _meta(**fields):
    return dict(loop.new_meta((8,), ('symmetric',)), **fields)


def test_a_larger_patience_continues_a_run_that_stopped_early(capsys):
    spec = types.SimpleNamespace(patience=3)
    meta = loop._continued(_meta(epoch=5, counter=2, stopped_early=True),
                           spec, 10, 'runs/x')
    assert not meta['stopped_early'] and capsys.readouterr().out == ''
    spec.patience = 2
    meta = loop._continued(_meta(epoch=5, counter=2, stopped_early=True),
                           spec, 10, 'runs/x')
    assert meta['stopped_early']
    assert ('runs/x stopped early after 5 rounds (2 evaluations without '
            'improvement, patience 2); nothing to train: pass a larger '
            '--config.patience') in capsys.readouterr().out


def test_a_finished_run_says_how_to_train_on(capsys):
    spec = types.SimpleNamespace(patience=5)
    loop._continued(_meta(epoch=10), spec, 10, 'runs/x')
    assert 'pass a larger --config.epochs' in capsys.readouterr().out
    loop._continued(_meta(epoch=4), spec, 10, 'runs/x')  # goes on: silent
    loop._continued(_meta(), spec, 10, 'runs/x')  # a new run: silent
    assert capsys.readouterr().out == ''
