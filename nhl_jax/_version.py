"""The version of nhl_jax, in one place (read by setup.cfg and __init__)."""

__version__ = '0.2.0'
