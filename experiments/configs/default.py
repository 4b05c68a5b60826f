"""The shipped ``default`` config (``nhl_jax/cli/configs/default.py``), by path.

``--config=experiments/configs/default.py`` is the same as ``--config=default``.
"""

from nhl_jax.cli.configs.default import get_config

__all__ = ['get_config']
