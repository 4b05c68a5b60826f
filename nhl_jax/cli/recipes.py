"""Training recipes: ``--config.recipe=library|reference``.

``library`` (the default) trains every base loss alike: Adam 1e-3, weight
decay 1e-5, batch 64, no decay (``configs/default.py``). ``reference``
trains each base loss as its reference code does: optimizer, learning
rate, weight decay, batch size and step decay, one ``Recipe`` per loss in
``REFERENCE``, each naming the file it comes from.

A field that the run sets away from ``configs/default.py``'s value (a flag,
a ``--config.<field>`` override, a config file) wins over the recipe;
a field left at the default takes the recipe's value. So an override equal
to the default (``--config.batch_size=64`` when the recipe says 128) is
not told apart from no override: pass a config file instead. A
``per_device_batch_size`` sets the global batch itself: the recipe's
batch size is then only the reference of ``--config.lr_scaling=linear``
(``nhl_jax.cli.scaling``).
"""

import ml_collections

from nhl_jax.errors import UsageError

RECIPES = ('library', 'reference')


def _recipe(optimizer, learning_rate, weight_decay, batch_size,
            lr_decay_every=None, lr_decay_epochs=()):
    return {'optimizer': optimizer, 'learning_rate': learning_rate,
            'weight_decay': weight_decay, 'batch_size': batch_size,
            'lr_decay_every': lr_decay_every,
            'lr_decay_epochs': tuple(lr_decay_epochs)}


# torch.optim.RMSprop(lr=1e-5, weight_decay=1e-5): DeepHash-pytorch's
# usual setting; batch 128 or 64 as each file's get_config says.
_RMS_128 = _recipe('rmsprop', 1e-5, 1e-5, 128)
_RMS_64 = _recipe('rmsprop', 1e-5, 1e-5, 64)
# hly1998/NHL bit_length.py: argparse defaults Adam, lr 1e-5, weight decay
# 1e-5, batch 64 for every loss it trains, no schedule.
_NHL = _recipe('adam', 1e-5, 1e-5, 64)

# Base loss -> its reference code's training recipe (the file named).
REFERENCE = {
    'dpsh': _RMS_128,  # DeepHash-pytorch DPSH.py
    'dhn': _RMS_128,  # DeepHash-pytorch DHN.py
    'idhn': _RMS_128,  # DeepHash-pytorch IDHN.py
    'isdh': _RMS_128,  # DeepHash-pytorch ISDH.py
    # DeepHash-pytorch DBDH.py: the rate / 10 at epoch 50.
    'dbdh': _recipe('rmsprop', 1e-5, 1e-5, 128, lr_decay_epochs=(50,)),
    'dsdh': _RMS_64,  # DeepHash-pytorch DSDH.py
    'hashnet': _RMS_64,  # DeepHash-pytorch HashNet.py
    'dfh': _RMS_64,  # DeepHash-pytorch DFH.py
    'qsmih': _RMS_64,  # DeepHash-pytorch QSMIH.py
    'pcdh': _RMS_64,  # DeepHash-pytorch PCDH.py
    # DeepHash-pytorch GreedyHash.py: SGD momentum 0.9, lr * 0.1 **
    # (epoch // 30).
    'greedyhash': _recipe('sgd', 1e-3, 5e-4, 64, lr_decay_every=30),
    # DeepHash-pytorch DSHSD.py: Adam 1e-5, no weight decay.
    'dshsd': _recipe('adam', 1e-5, 0.0, 64),
    'daph': _recipe('adam', 1e-4, 1e-5, 128),  # DeepHash-pytorch DAPH.py
    # CISiPLab orthohash (configs: Adam 1e-4, weight decay 5e-4, batch 256).
    'orthohash': _recipe('adam', 1e-4, 5e-4, 256),
    'dsh': _NHL,  # hly1998/NHL bit_length.py (bit_length/DSH.py)
    'dtsh': _NHL,  # hly1998/NHL bit_length.py (bit_length/DTSH.py)
    'lcdsh': _NHL,  # hly1998/NHL bit_length.py (bit_length/LCDSH.py)
    'dch': _NHL,  # hly1998/NHL bit_length.py (bit_length/DCH.py)
    'csq': _NHL,  # hly1998/NHL bit_length.py (bit_length/CSQ.py)
    'dpn': _NHL,  # hly1998/NHL bit_length.py (bit_length/DPN.py)
    'mdsh': _NHL,  # hly1998/NHL bit_length.py (bit_length/MDSH.py)
    'shcir': _NHL,  # hly1998/NHL bit_length.py (bit_length/SHCIR.py)
}


def fields(config, defaults) -> dict:
    """The recipe's field -> value of a run (empty for ``library``).

    Raises:
      UsageError: ``reference`` for a method without a reference recipe
        (mah and odh: their paper configs are ``--config=mah`` / ``odh``).
    """
    name = config.get('recipe', defaults.recipe)
    if name != 'reference':
        return {}
    if config.method not in REFERENCE:
        raise UsageError(
            f'recipe {name!r} covers the base losses only, not '
            f'{config.method!r}; leave --config.recipe unset (its own '
            'settings live in its config section).')
    return dict(REFERENCE[config.method])


def apply(config, defaults):
    """A copy of ``config`` with the recipe in every field left at default.

    Args:
      config: a run's ConfigDict.
      defaults: the shipped default config (``configs/default.py``).

    Returns:
      The resolved ConfigDict (``config`` itself for ``library``).
    """
    recipe = fields(config, defaults)
    if not recipe:
        return config
    if config.get('per_device_batch_size') is not None:
        del recipe['batch_size']  # the run sets its global batch
    resolved = ml_collections.ConfigDict(config.to_dict())
    for name, value in recipe.items():
        if resolved.get(name, defaults[name]) == defaults[name]:
            resolved[name] = value
    return resolved


def batch_size(config, defaults) -> int:
    """The batch the recipe's learning rate was set for."""
    return fields(config, defaults).get('batch_size', defaults.batch_size)
