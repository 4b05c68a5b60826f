"""The run directory: one owner at a time, the identity of its state."""

import dataclasses
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from nhl_jax.cli import config as config_lib
from nhl_jax.errors import UsageError
from nhl_jax.train import workdir
from tests.support import systems


def test_a_held_workdir_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / 'run'
    with workdir.owned(str(run)):
        assert (run / workdir.LOCK).read_text().startswith(f'{os.getpid()} ')
        # flock conflicts between two open files, even in one process.
        with (pytest.raises(UsageError, match=rf'in use by another run '
                                              rf'\(process {os.getpid()} '),
              workdir.owned(str(run))):
            pass
    with workdir.owned(str(run)):  # released when its owner is done
        pass


def test_the_lock_dies_with_its_process(tmp_path):
    """A killed run never blocks its resume: the kernel drops the lock."""
    run = tmp_path / 'run'
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, '-c', _HOLD, str(run / workdir.LOCK)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == 'locked\n'
        with pytest.raises(UsageError, match='in use'), \
                workdir.owned(str(run)):
            pass
    finally:
        holder.kill()
        holder.communicate()
    with workdir.owned(str(run)):
        pass


# A process that takes the lock and would hold it for a minute.
_HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print('locked', flush=True)
time.sleep(60)
"""


def test_a_failure_before_any_output_leaves_no_directory(tmp_path):
    run = tmp_path / 'a' / 'b' / 'run'
    with pytest.raises(UsageError), workdir.owned(str(run)):
        raise UsageError('bad input found after the lock')
    assert not (tmp_path / 'a').exists()
    os.makedirs(run)
    with pytest.raises(UsageError), workdir.owned(str(run)):
        raise UsageError('bad input')
    assert os.listdir(run) == []


def test_the_identity_changes_with_config_bits_and_shapes():
    spec = config_lib.resolve(systems.tiny_config('nhl'))
    state = {'w': jnp.zeros((4, 8))}
    base = workdir.run_identity(spec, (8,), state)
    assert base == workdir.run_identity(spec, (8,), {'w': jnp.ones((4, 8))})
    assert workdir.run_identity(spec, (16,), state) != base
    assert workdir.run_identity(spec, (8,), {'w': jnp.zeros((4, 9))}) != base
    epochs = dict(spec.config, epochs=spec.config['epochs'] + 5)
    assert workdir.run_identity(dataclasses.replace(spec, config=epochs),
                                (8,), state) == base  # a free field
    encode = dict(spec.config, eval_batch_size=100)
    assert workdir.run_identity(dataclasses.replace(spec, config=encode),
                                (8,), state) == base  # changes no number
    method = dict(spec.config, method='csq')
    assert workdir.run_identity(dataclasses.replace(spec, config=method),
                                (8,), state) != base
