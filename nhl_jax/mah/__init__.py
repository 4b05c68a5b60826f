"""MAH: multi-head asymmetric hashing (arXiv 1809.09329).

``nhl_jax.mah.adsh`` holds the maths (soft-balanced similarity, the ADSH loss
per head, the weighted joint loss, the DCC update of the database codes);
``nhl_jax.mah.step`` the state and jitted pieces; ``nhl_jax.mah.config``
its settings; ``nhl_jax.mah.system`` its training system (the outer loop,
evaluation and outputs; imported by the command layer, not here, so that
the maths imports without the trainer).
"""

from nhl_jax.mah.adsh import adsh_loss
from nhl_jax.mah.adsh import adsh_objective
from nhl_jax.mah.adsh import balance_ratio
from nhl_jax.mah.adsh import dcc_update
from nhl_jax.mah.adsh import init_codes
from nhl_jax.mah.adsh import joint_loss
from nhl_jax.mah.adsh import soft_balanced_similarity
from nhl_jax.mah.adsh import soft_similarity

__all__ = [
    'adsh_loss',
    'adsh_objective',
    'balance_ratio',
    'dcc_update',
    'init_codes',
    'joint_loss',
    'soft_balanced_similarity',
    'soft_similarity',
]
