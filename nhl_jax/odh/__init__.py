"""ODH: one-bit deep hashing (ACM MM 2024).

A binary-network hasher (``nhl_jax.models.bnn``) with learned, semantic
hash centres (``centers``), its losses (``losses``), model (``model``),
two-view data (``data``) and jitted steps (``step``), configured by
``config``; ``nhl_jax.odh.system`` is its training system (the warm-up,
exploration and aggregation stages), imported by the command layer.
"""
