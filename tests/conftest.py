"""JAX configuration shared by every test (set once, before any jax use)."""

import jax

# Implicit rank promotion hides shape bugs ([B] + [B, 1] -> [B, B]).
jax.config.update('jax_numpy_rank_promotion', 'raise')
