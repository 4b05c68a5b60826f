"""nhl_jax: deep supervised hashing with codes of several lengths, in JAX.

The public face, lowest layer first:

- ``nhl_jax.losses``: 22 base hashing losses as pure ``HashLoss`` factories;
- ``nhl_jax.models``: backbones, the nested hash layer, MAH's heads, BNNs;
- ``nhl_jax.retrieval``: codes, Hamming ranking, mAP and metrics, search;
- ``nhl_jax.nhl``: NHL's objective (weighting + cascade distillation);
- ``nhl_jax.mah``, ``nhl_jax.odh``: the other two systems' maths;
- ``nhl_jax.data``, ``nhl_jax.train``: pipelines and the generic trainer;
- ``nhl_jax.cli``: the commands (``nhl-jax train``), configs and registry.

``data``, ``train`` and ``cli`` are imported on demand:
``from nhl_jax import train``.
"""

from nhl_jax import losses
from nhl_jax import models
from nhl_jax import nhl
from nhl_jax import retrieval
from nhl_jax._version import __version__
from nhl_jax.models.nested import NestedHashLayer
from nhl_jax.models.nested import check_bits
from nhl_jax.models.nested import split_codes
from nhl_jax.nhl.objective import nhl_objective
from nhl_jax.types import HashLoss

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
