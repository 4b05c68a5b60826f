"""nhl_jax: deep supervised hashing with codes of several lengths, in JAX.

The public face, lowest layer first:

- ``nhl_jax.losses``: 22 base hashing losses as pure ``HashLoss`` factories;
- ``nhl_jax.models``: backbones, the nested hash layer, MAH's heads, BNNs;
- ``nhl_jax.retrieval``: codes, Hamming ranking, mAP and metrics, search;
- ``nhl_jax.nhl``: NHL's objective (weighting + cascade distillation);
- ``nhl_jax.mah``, ``nhl_jax.odh``: the other two systems' maths;
- ``nhl_jax.data``, ``nhl_jax.train``: pipelines and the generic trainer;
- ``nhl_jax.serving``: an exported bundle's encoder and search, with jax,
  numpy and faiss only;
- ``nhl_jax.cli``: the commands (``nhl-jax train``), configs and registry.

Every part is imported on first use (``nhl_jax.nhl_objective``, ``from
nhl_jax import train``), so that ``import nhl_jax.serving`` loads no flax,
optax or orbax.
"""

import importlib

from nhl_jax import _started  # noqa: F401 - first: the interpreter's clocks
from nhl_jax._version import __version__

# Re-exported name -> the module that defines it.
_NAMES = {
    'HashLoss': 'nhl_jax.types',
    'NestedHashLayer': 'nhl_jax.models.nested',
    'check_bits': 'nhl_jax.models.nested',
    'split_codes': 'nhl_jax.models.nested',
    'nhl_objective': 'nhl_jax.nhl.objective',
}
_PARTS = ('losses', 'models', 'nhl', 'retrieval')


def __getattr__(name):
    """A part or a re-exported name, imported on first access."""
    if name in _PARTS:
        return importlib.import_module(f'nhl_jax.{name}')
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted({*globals(), *_PARTS, *_NAMES})


__all__ = [
    'HashLoss',
    'NestedHashLayer',
    '__version__',
    'check_bits',
    'losses',
    'models',
    'nhl',
    'nhl_objective',
    'retrieval',
    'split_codes',
]
