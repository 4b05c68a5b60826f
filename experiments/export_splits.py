"""``nhl-jax export-splits`` from a clone, with the same flags (a thin shim)."""

from nhl_jax.cli import export_splits

if __name__ == '__main__':
    export_splits.cli()
