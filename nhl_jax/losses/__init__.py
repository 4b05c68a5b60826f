"""The seven NHL base losses, selected by name through one registry.

Every entry is a factory taking the method's hyperparameters as keyword
arguments (paper defaults) and returning a ``HashLoss(init, apply)``::

    from nhl_jax import losses
    loss = losses.get('dpn', margin=1.0)
    state = loss.init(key, num_train=5000, num_classes=10, bits=16)
    value, state = loss.apply(state, codes, labels, index)
"""

from nhl_jax.losses._common import CentersState
from nhl_jax.losses._common import hadamard_centers
from nhl_jax.losses._common import label_targets
from nhl_jax.losses.csq import csq
from nhl_jax.losses.dch import dch
from nhl_jax.losses.dpn import dpn
from nhl_jax.losses.dsh import DSHState
from nhl_jax.losses.dsh import dsh
from nhl_jax.losses.dtsh import dtsh
from nhl_jax.losses.lcdsh import lcdsh
from nhl_jax.losses.mdsh import mdsh
from nhl_jax.types import EmptyState, HashLoss

LOSSES = {
    'csq': csq,
    'dch': dch,
    'dpn': dpn,
    'dsh': dsh,
    'dtsh': dtsh,
    'lcdsh': lcdsh,
    'mdsh': mdsh,
}


def get(name: str, **hparams) -> HashLoss:
    """Builds the loss registered as ``name`` with the given hyperparameters.

    Args:
      name: a key of ``LOSSES``.
      **hparams: keyword arguments of that loss's factory.

    Returns:
      The ``HashLoss``.

    Raises:
      ValueError: for an unknown name (the message lists the valid ones).
    """
    if name not in LOSSES:
        raise ValueError(
            f'Unknown loss {name!r}; choose one of {sorted(LOSSES)}.'
        )
    return LOSSES[name](**hparams)


__all__ = [
    'LOSSES',
    'CentersState',
    'DSHState',
    'EmptyState',
    'HashLoss',
    'csq',
    'dch',
    'dpn',
    'dsh',
    'dtsh',
    'get',
    'hadamard_centers',
    'label_targets',
    'lcdsh',
    'mdsh',
]
