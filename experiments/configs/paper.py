"""The shipped ``paper`` config (``nhl_jax/cli/configs/paper.py``), by path.

``--config=experiments/configs/paper.py`` is the same as ``--config=paper``.
"""

from nhl_jax.cli.configs.paper import get_config

__all__ = ['get_config']
