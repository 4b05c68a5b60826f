"""NHL, the Nested Hash Layer (arXiv 2412.08922): its objective and parts.

One linear hash layer of the longest width (``nhl_jax.models.nested``);
the code of length b_k is its first b_k outputs. Each length gets an
unmodified copy of a base loss (``nhl_jax.losses``), weighted by a
dominance-aware rule (``weighting``, or a baseline rule of ``baselines``)
and joined by a long-to-short cascade self-distillation (``distill``):
``nhl_objective`` (``objective``) puts them together. NHL's training
system (``nhl_jax.nhl.system``) is imported by the command layer, not
here, so that the maths imports without the trainer.
"""

from nhl_jax.nhl.distill import TOPOLOGIES
from nhl_jax.nhl.distill import cascade_distill
from nhl_jax.nhl.distill import similarity_distill
from nhl_jax.nhl.objective import WEIGHTINGS
from nhl_jax.nhl.objective import get_weighting
from nhl_jax.nhl.objective import nhl_objective
from nhl_jax.nhl.weighting import dominance_weighting
from nhl_jax.nhl.weighting import dominance_weights

__all__ = [
    'TOPOLOGIES',
    'WEIGHTINGS',
    'cascade_distill',
    'dominance_weighting',
    'dominance_weights',
    'get_weighting',
    'nhl_objective',
    'similarity_distill',
]
