"""Orbax checkpoints: asynchronous saves, checksums, identity, full disks."""

import errno
import os
import shutil
import threading
import types

import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax.errors import UsageError
from nhl_jax.train import checkpoint

# A restore that fails on a corrupted file can leave one of tensorstore's
# read callbacks to land after orbax closed its asyncio loop ("Event loop
# is closed", reported by Python as unraisable, at garbage collection):
# a race inside orbax / tensorstore, after nhl_jax has handled the
# failure; seen once in three CI runs of the byte-flipping test.
pytestmark = pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning')


def test_save_does_not_wait_for_the_disk(tmp_path):
    calls = []
    mngr = types.SimpleNamespace(
        directory=tmp_path,
        save=lambda step, args: calls.append(('save', step)),
        wait_until_finished=lambda: calls.append(('wait',)))
    checkpoint.save(mngr, 3, {'x': jnp.zeros(2)}, {}, {'epoch': 1})
    assert calls == [('save', 3)]
    checkpoint.wait(mngr)
    assert calls[-1] == ('wait',)


def test_state_changed_after_save_is_saved_as_it_was(tmp_path):
    """The loop mutates meta and best and donates the state right after."""
    state = {'w': jnp.arange(4.0)}
    best, meta = {'8': {'w': np.ones(2)}}, {'epoch': 1, 'best_map': {}}
    with checkpoint.manager(str(tmp_path)) as mngr:
        checkpoint.save(mngr, 1, state, best, meta)
        meta['epoch'], meta['best_map']['8'] = 2, 0.5
        best['8'] = {'w': np.zeros(2)}
        state = {'w': state['w'] + 1}
        restored = checkpoint.restore_latest(
            mngr, {'w': jnp.zeros(4)}, {'8': {'w': np.zeros(2)}})
    saved_state, saved_best, saved_meta = restored
    np.testing.assert_array_equal(saved_state['w'], np.arange(4.0))
    np.testing.assert_array_equal(saved_best['8']['w'], np.ones(2))
    assert saved_meta == {'epoch': 1, 'best_map': {}}


def test_a_save_started_on_its_thread_keeps_the_arrays_as_they_were(
        tmp_path):
    """The next step donates the state (deleting its arrays) while the
    manager's thread still reads them; best's arrays are its snapshots."""
    state = {'w': jnp.arange(4.0)}
    best = {'8': {'w': np.ones(2)}}
    with checkpoint.manager(str(tmp_path)) as mngr:
        checkpoint.save(mngr, 1, state, best, {'epoch': 1})
        state['w'].delete()
        best['8']['w'][:] = 0.0
        restored = checkpoint.restore_latest(
            mngr, {'w': jnp.zeros(4)}, {'8': {'w': np.zeros(2)}})
    np.testing.assert_array_equal(restored[0]['w'], np.arange(4.0))
    np.testing.assert_array_equal(restored[1]['8']['w'], np.ones(2))


def test_save_returns_before_its_thread_and_reports_its_failure(
        tmp_path, monkeypatch):
    started, release = threading.Event(), threading.Event()

    def blocked_save(self, step, args):
        started.set()
        release.wait(10)
        raise RuntimeError('orbax failed')

    monkeypatch.setattr(checkpoint.ocp.CheckpointManager, 'save',
                        blocked_save)
    with checkpoint.manager(str(tmp_path)) as mngr:
        checkpoint.save(mngr, 1, {'w': jnp.zeros(2)}, {}, {})
        assert started.wait(10) and not release.is_set()
        release.set()
        with pytest.raises(RuntimeError, match='orbax failed'):
            checkpoint.wait(mngr)
        assert mngr.latest_step() is None  # reported once


def _two_checkpoints(directory):
    """Steps 1 and 2 of a small state (values differ), with an identity."""
    with checkpoint.manager(str(directory)) as mngr:
        for step in (1, 2):
            state = {'w': jnp.arange(64.0) * step, 'n': jnp.int32(step)}
            best = {'8': {'w': np.full(3, float(step))}}
            checkpoint.save(mngr, step, state, best, {'epoch': step},
                            identity={'method': 'dpn', 'bits': [8]})
    return directory / 'checkpoints'


def _restore(directory, identity=None, notes=None):
    template = {'w': jnp.zeros(64), 'n': jnp.int32(0)}
    with checkpoint.manager(str(directory)) as mngr:
        return checkpoint.restore_latest(
            mngr, template, {'8': {'w': np.zeros(3)}},
            identity=identity or {'method': 'dpn', 'bits': [8]},
            log=[].append if notes is None else notes.append)


def test_a_flipped_byte_in_any_file_is_skipped_or_harmless(tmp_path):
    """Whatever byte of the newest checkpoint flips, the restore gives the
    data that step 2 saved or falls back to step 1, never anything else."""
    clean = _two_checkpoints(tmp_path / 'clean')
    files = sorted(p.relative_to(clean / '2') for p in (clean / '2').rglob('*')
                   if p.is_file() and p.stat().st_size)
    skipped = 0
    for n, name in enumerate(files):
        run = tmp_path / str(n)
        shutil.copytree(clean.parent, run)
        path = run / 'checkpoints' / '2' / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
        notes = []
        state, best, meta = _restore(run, notes=notes)
        step = meta['epoch']
        np.testing.assert_array_equal(state['w'], np.arange(64.0) * step)
        np.testing.assert_array_equal(best['8']['w'], np.full(3, step))
        if step == 1:
            skipped += 1
            assert len(notes) == 1 and 'checkpoint 2' in notes[0], notes
            assert (run / checkpoint.UNVERIFIED / '2' / name).exists()
            assert not (run / 'checkpoints' / '2').exists()
        else:
            assert notes == []
    # The array data and the meta are among the files: some flips must be
    # caught, and a flip in a data chunk is never restored.
    assert skipped >= 3, (skipped, files)


def test_changed_data_is_named_by_its_leaf():
    state, best = {'w': np.arange(4.0)}, {'8': {'w': np.ones(2)}}
    meta = {'_integrity': {'checksums': {
        **checkpoint.array_checksums(state, 'state'),
        **checkpoint.array_checksums(best, 'best')}}}
    checkpoint.verify(meta, {'state': state, 'best': best})
    best['8']['w'][1] = np.nextafter(1.0, 2.0)  # one bit
    with pytest.raises(checkpoint.Unverified, match='best/8/w does not'):
        checkpoint.verify(meta, {'state': state, 'best': best})


def test_another_runs_checkpoint_is_refused_naming_the_fields(tmp_path):
    _two_checkpoints(tmp_path)
    with pytest.raises(UsageError, match=r"different run \(fields "
                                         r"\['bits', 'method'\]\).*intact"):
        _restore(tmp_path, identity={'method': 'csq', 'bits': [16]})
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2']


def test_a_full_disk_is_refused_before_orbax_writes(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(checkpoint.shutil, 'disk_usage',
                        lambda path: usage._replace(free=100))
    with (checkpoint.manager(str(tmp_path)) as mngr,
          pytest.raises(OSError, match=r'checkpoint needs 0\.0 MiB') as e):
        checkpoint.save(mngr, 1, {'w': jnp.zeros(64)}, {}, {})
    assert e.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path / 'checkpoints') == []


def test_identity_of_an_older_run_lacks_only_fields_at_their_old_value():
    current = {'method': 'dpn', 'head_init': 'normal', 'lr_scaling': 'none'}
    older = {'method': 'dpn'}  # written before the two fields existed
    assert checkpoint.identity_diff(older, current) == []
    assert checkpoint.identity_diff(
        older, {**current, 'head_init': 'torch'}) == ['head_init']
    assert checkpoint.identity_diff(
        older, {**current, 'seed': 1}) == ['seed']  # not an added field


def _saved_best_keys(mngr, step):
    handler = checkpoint.ocp.PyTreeCheckpointHandler()
    try:
        return set(handler.metadata(mngr.directory / str(step) / 'best').tree)
    finally:
        handler.close()


def test_lengths_sharing_one_snapshot_are_saved_once(tmp_path):
    """The lengths improved at one evaluation share its snapshot: saved
    once, restored as one object (so the resumed run saves it once too);
    equal arrays that are not the same objects stay apart."""
    shared = {'w': np.arange(3.0)}
    best = {'8': shared, '16': {'w': shared['w']}, '32': {'w': np.arange(3.0)},
            '64': shared}
    assert checkpoint.distinct_best(best)[1] == {'16': '8', '64': '8'}
    template = {k: {'w': np.zeros(3)} for k in best}
    with checkpoint.manager(str(tmp_path)) as mngr:
        checkpoint.save(mngr, 1, {'w': jnp.ones(2)}, best, {'epoch': 1})
        checkpoint.wait(mngr)
        assert _saved_best_keys(mngr, 1) == {'8', '32'}
        _, restored, meta = checkpoint.restore_latest(
            mngr, {'w': jnp.zeros(2)}, template)
        assert meta == {'epoch': 1}
        assert restored['16'] is restored['8'] is restored['64']
        assert restored['32'] is not restored['8']
        for k in best:
            np.testing.assert_array_equal(restored[k]['w'], np.arange(3.0))
        checkpoint.save(mngr, 2, {'w': jnp.ones(2)}, restored, meta)
        checkpoint.wait(mngr)
        assert _saved_best_keys(mngr, 2) == {'8', '32'}


def test_a_checkpoint_without_aliases_names_every_length():
    assert checkpoint.stored_best({}, ['8', '16']) == {'8': '8', '16': '16'}
    meta = {checkpoint.ALIASES: {'16': '8'}}
    assert checkpoint.stored_best(meta, ['8', '16']) == {'8': '8', '16': '8'}
