"""Tiny configs of every system, shared by tests/cli/test_systems.py and its
subprocess worker (tests/support/systems_worker.py)."""

from nhl_jax.cli.configs import default

# system -> (overrides of the default config, overrides of its sub-config).
TINY = {
    'nhl': ({'method': 'dpn', 'epochs': 3}, {}),
    'mah': ({'method': 'mah', 'head': 'cascade'},
            {'epochs': 1, 'outer_iterations': 3, 'num_samples': 128,
             'eval_every': 1}),
    'odh': ({'method': 'odh', 'epochs': 2, 'batch_size': 100},
            {'warmup_epochs': 1, 'transition_epoch': 1}),
}


def tiny_config(system: str, **overrides):
    """A run of ``system`` on digits with the MLP that trains in seconds."""
    config = default.get_config()
    fields, sub = TINY[system]
    config.update({'dataset': 'digits', 'backbone': 'mlp', 'bits': (8, 16),
                   'epochs': 3, 'eval_every': 1, 'batch_size': 32, **fields})
    config.backbone_kwargs = {'hidden': (32,)}
    if system in ('mah', 'odh'):
        config[system].update(sub)
    config.update(overrides)
    return config
