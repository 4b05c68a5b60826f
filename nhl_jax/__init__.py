"""nhl_jax: deep supervised hashing with nested codes of several lengths.

``nhl_jax.data`` (grain pipelines, offline datasets) and ``nhl_jax.train``
(the trainer) are imported on demand: ``from nhl_jax import train``.
"""

from nhl_jax import baselines
from nhl_jax import distill
from nhl_jax import evaluate
from nhl_jax import losses
from nhl_jax import metrics
from nhl_jax import models
from nhl_jax import nested
from nhl_jax import objective
from nhl_jax import weighting
from nhl_jax.nested import NestedHashLayer
from nhl_jax.nested import check_bits
from nhl_jax.nested import split_codes
from nhl_jax.types import HashLoss

__version__ = '0.1.0'

__all__ = [
    'HashLoss',
    'NestedHashLayer',
    'baselines',
    'check_bits',
    'distill',
    'evaluate',
    'losses',
    'metrics',
    'models',
    'nested',
    'objective',
    'split_codes',
    'weighting',
]
