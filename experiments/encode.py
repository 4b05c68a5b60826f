"""``nhl-jax encode`` from a clone, with the same flags (a thin shim)."""

from nhl_jax.cli import encode

if __name__ == '__main__':
    encode.cli()
