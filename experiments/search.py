"""``nhl-jax search`` from a clone, with the same flags (a thin shim)."""

from nhl_jax.cli import search

if __name__ == '__main__':
    search.cli()
