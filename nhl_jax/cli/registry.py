"""The training systems, one registry: ``SYSTEMS = {'nhl', 'mah', 'odh'}``.

``--method`` names a base loss of ``nhl_jax.losses.LOSSES`` (NHL with that
loss, the default system) or a system of its own (``mah``, ``odh``)::

    system = registry.system_of('dpn')   # the NHL system
    system = registry.SYSTEMS['mah']

Each system implements ``nhl_jax.train.system.System``; the trainer
(``nhl_jax.train``) runs every one of them the same way.
"""

from nhl_jax import losses
from nhl_jax.errors import UsageError
from nhl_jax.mah import system as mah
from nhl_jax.nhl import system as nhl
from nhl_jax.odh import system as odh
from nhl_jax.train.system import System

SYSTEMS: dict[str, System] = {
    'nhl': nhl.SYSTEM,
    'mah': mah.SYSTEM,
    'odh': odh.SYSTEM,
}

def methods() -> dict[str, str]:
    """What --method accepts: a base loss (NHL) or a system's own name.

    Read at call time, so that a loss registered in ``losses.LOSSES`` after
    import is a method too.
    """
    return {**dict.fromkeys(losses.LOSSES, 'nhl'),
            **{name: name for name in SYSTEMS if name != 'nhl'}}


def system_of(method: str) -> System:
    """The system that trains ``--method=<method>``.

    Raises:
      UsageError: for an unknown method, listing the valid ones.
    """
    known = methods()
    if method not in known:
        raise UsageError(
            f'Unknown method {method!r}; choose one of {sorted(known)} (a '
            'base loss trains NHL with it; mah and odh are systems).')
    return SYSTEMS[known[method]]


def create_train_state(spec, info, bits=None):
    """``(Setup, TrainState)`` of ``spec``'s system for lengths ``bits``.

    Args:
      spec: a resolved ``RunSpec`` (``nhl_jax.cli.config.resolve``).
      info: image shape, classes and split sizes (``DataInfo.of(splits)``).
      bits: lengths (default: ``spec.bits``).
    """
    return SYSTEMS[spec.system].create(spec, info, bits)


__all__ = [
    'SYSTEMS',
    'create_train_state',
    'methods',
    'system_of',
]
