"""The shipped ``odh`` config (``nhl_jax/cli/configs/odh.py``), by path.

``--config=experiments/configs/odh.py`` is the same as ``--config=odh``.
"""

from nhl_jax.cli.configs.odh import get_config

__all__ = ['get_config']
