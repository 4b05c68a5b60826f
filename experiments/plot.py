"""``nhl-jax plot`` from a clone, with the same flags (a thin shim)."""

from nhl_jax.cli import plot

if __name__ == '__main__':
    plot.cli()
