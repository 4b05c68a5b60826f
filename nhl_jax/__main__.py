"""``python -m nhl_jax <command>``: the same as ``nhl-jax <command>``."""

from nhl_jax.cli import main

if __name__ == '__main__':
    main()
