"""The global batch from a per-device one, and the linear rate scaling.

``--config.per_device_batch_size=B`` trains with a global batch of B times
the devices the run uses (``--devices``, else every device of every
process); it and a ``batch_size`` set away from its default are refused
together. ``--config.lr_scaling=linear`` multiplies the learning rates by
global batch / ``lr_reference_batch`` (the batch the rates were set for;
None: the recipe's batch, 64 for ``library``), the linear scaling rule
of Goyal et al., arXiv 1706.02677, Sec. 2.1.

The resolved config is explicit: its ``batch_size`` and rates are the ones
the run trains with, ``per_device_batch_size`` and ``lr_scaling`` are
unset, and ``batch_scaling`` records the request, so that config.json
resolves to itself on any device count (``load_run``, ``--resume``).
"""

import jax
import ml_collections

from nhl_jax.errors import UsageError

LR_SCALINGS = ('none', 'linear')
# Systems that train with a rate of their own instead of learning_rate.
_OWN_RATE = {'mah': 'mah.learning_rate'}


def requested(config) -> bool:
    """Whether ``config`` asks for a per-device batch or a rate scaling."""
    return (config.get('per_device_batch_size') is not None
            or config.get('lr_scaling', 'none') != 'none')


def _rates(config) -> tuple[str, ...]:
    """The dotted fields of the rates ``config.method`` trains with."""
    rate = _OWN_RATE.get(config.method, 'learning_rate')
    return rate, 'backbone_learning_rate'


def _get(config, path: str):
    holder, _, name = path.rpartition('.')
    return (config[holder] if holder else config).get(name)


def _set(config, path: str, value) -> None:
    holder, _, name = path.rpartition('.')
    (config[holder] if holder else config)[name] = value


def both_batches(batch_size, per_device_batch_size) -> UsageError:
    """The error of a run given a global and a per-device batch."""
    return UsageError(
        f'batch_size {batch_size} and per_device_batch_size '
        f'{per_device_batch_size} are both set; pass one of them.')


def _global_batch(config, default_batch: int) -> int:
    per_device = config.get('per_device_batch_size')
    if per_device is None:
        return config.batch_size
    if config.batch_size != default_batch:
        raise both_batches(config.batch_size, per_device)
    return per_device * (config.get('devices') or jax.device_count())


def apply(config, defaults, reference_batch: int):
    """A copy of ``config`` with the global batch and rates resolved.

    Args:
      config: a run's ConfigDict, its recipe applied (``recipes.apply``
        leaves ``batch_size`` alone under a per-device batch).
      defaults: the shipped default config (``configs/default.py``).
      reference_batch: the batch the rates were set for when
        ``lr_reference_batch`` is None (the recipe's).

    Returns:
      The explicit ConfigDict (``config`` itself when nothing is asked).

    Raises:
      UsageError: ``per_device_batch_size`` with a ``batch_size`` set away
        from its default.
    """
    if not requested(config):
        return config
    batch = _global_batch(config, defaults.batch_size)
    resolved = ml_collections.ConfigDict(config.to_dict())
    reference = config.get('lr_reference_batch') or reference_batch
    factor = batch / reference if config.lr_scaling == 'linear' else 1.0
    record = {'per_device_batch_size': config.get('per_device_batch_size'),
              'devices': config.get('devices') or jax.device_count(),
              'lr_scaling': config.lr_scaling, 'lr_reference_batch':
              reference if config.lr_scaling == 'linear' else None}
    # The rates before scaling, by their last name (ConfigDict keys take
    # no dots): 'learning_rate' is mah.learning_rate for MAH.
    for path in _rates(config):
        rate = _get(config, path)
        record[path.rpartition('.')[2]] = rate
        if rate is not None:
            _set(resolved, path, rate * factor)
    resolved.update(batch_size=batch, per_device_batch_size=None,
                    lr_scaling='none', lr_reference_batch=None,
                    batch_scaling=record)
    return resolved
