"""The shipped ``mah`` config (``nhl_jax/cli/configs/mah.py``), by path.

``--config=experiments/configs/mah.py`` is the same as ``--config=mah``.
"""

from nhl_jax.cli.configs.mah import get_config

__all__ = ['get_config']
