"""The run's seed as a PRNG key (``RunSpec.key``)."""

import dataclasses

import jax
import numpy as np

from nhl_jax import cli
from tests.support.systems import tiny_config


def _key_data(seed):
    spec = cli.resolve(tiny_config('nhl', seed=0))
    return np.asarray(jax.random.key_data(
        dataclasses.replace(spec, seed=seed).key()))


def test_every_bit_of_the_seed_reaches_the_key():
    """jax.random.key keeps the low 32 bits without x64: 5 and 2**32 + 5
    drew the same run."""
    keys = [tuple(_key_data(s)) for s in (5, 2**32 + 5, 2**40 + 5, 2**63 - 1)]
    assert len(set(keys)) == 4
    assert keys[1] == (1, 5) and keys[3] == (2**31 - 1, 2**32 - 1)


def test_seeds_below_2_32_keep_their_key():
    for seed in (0, 1, 12345, 2**32 - 1):
        np.testing.assert_array_equal(
            _key_data(seed), jax.random.key_data(jax.random.key(seed)))
