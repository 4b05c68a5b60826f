"""Trains hash codes: ``nhl-jax train`` from a clone, with the same flags.

    python experiments/run.py --method=dpn [--dataset=mnist5k] [--bits=8,16]

A thin shim of ``nhl_jax.cli.train``, kept so that this command works as
written in the papers' recipes.
"""

from nhl_jax.cli import train

if __name__ == '__main__':
    train.cli()
