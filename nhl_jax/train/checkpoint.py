"""Orbax checkpoints of a run: train state, best parameters per length, meta.

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a run killed while saving leaves no checkpoint that
``latest_step`` would pick up.

Orbax keeps no checksum of the array data, so a flipped bit on disk would
restore silently. Each checkpoint's meta therefore carries an integrity
record (``meta['_integrity']``): the SHA-256 of every saved array (taken
from the host copies before the write starts), of the meta itself, and the
run's identity (config fields and parameter shapes). A restore compares all
three; a checkpoint that fails is set aside in ``checkpoints.unverified/``
and the newest one that verifies is restored instead, in one line.

The lengths of a nested run that improved at one evaluation share one
snapshot (``distinct_best``): the ``best`` item holds it once, and the
meta's ``_best_aliases`` names the lengths saved under another's entry
(``stored_best``); a restore hands them back as one object. Checkpoints
written before that have no aliases and read as before.

On one process with the arrays in host memory (the CPU backend), a save
copies the arrays and hands the rest (checksums, orbax's own start of the
write) to a thread, so that the next round need not wait for it; any other
use of the manager waits for that thread first (``_Manager``).
"""

import contextlib
import errno
import functools
import gc
import hashlib
import json
import os
import pathlib
import shutil
import sys
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from nhl_jax import parallel
from nhl_jax.errors import UsageError, disk_errno

ITEMS = ('state', 'best', 'meta')
INTEGRITY = '_integrity'
# The meta's {length: length} of best entries saved once under another
# length (``distinct_best``); absent in checkpoints written before it.
ALIASES = '_best_aliases'
# Where checkpoints that fail verification go (beside checkpoints/): kept
# for inspection, out of the manager's way (a resumed run saves their
# steps again).
UNVERIFIED = 'checkpoints.unverified'


class Unverified(Exception):
    """A checkpoint whose data do not match its checksums (or unreadable)."""


def _settled(method):
    """``method`` of ``CheckpointManager``, called once ``settle`` has
    waited for the thread starting a save (``_Manager``)."""

    @functools.wraps(method)
    def settled(self, *args, **kwargs):
        self.settle()
        return method(self, *args, **kwargs)

    return settled


class _Manager(ocp.CheckpointManager):
    """A ``CheckpointManager`` whose saves may start on a thread.

    ``start_save`` runs a save's start (``_start_save``) on a thread of its
    own; every other use of the manager here first waits for that thread
    (``settle``) and raises what it raised, so that the manager looks as
    if the save had started synchronously: steps, restores and waits see
    the checkpoint, and a failure is reported at the next use.
    """

    def __init__(self, *args, **kwargs):
        self._starting = None  # the thread starting the latest save
        self._failure = None  # what it raised, until reported
        super().__init__(*args, **kwargs)

    def start_save(self, start) -> None:
        """Runs ``start()`` on a thread, after the previous one finished."""
        self.settle()

        def run():
            try:
                start()
            except BaseException as e:  # noqa: BLE001 (raised by settle)
                self._failure = e

        self._starting = threading.Thread(target=run,
                                          name='nhl_jax checkpoint save')
        self._starting.start()

    def settle(self) -> None:
        """Waits for the thread starting a save; raises what it raised."""
        thread = self._starting
        # Orbax's save calls the methods below from that thread itself.
        if thread is None or thread is threading.current_thread():
            return
        thread.join()
        self._starting = None
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    all_steps = _settled(ocp.CheckpointManager.all_steps)
    latest_step = _settled(ocp.CheckpointManager.latest_step)
    reload = _settled(ocp.CheckpointManager.reload)
    restore = _settled(ocp.CheckpointManager.restore)
    delete = _settled(ocp.CheckpointManager.delete)
    wait_until_finished = _settled(ocp.CheckpointManager.wait_until_finished)

    def close(self):
        try:
            self.settle()
        finally:
            super().close()


def manager(workdir: str, *, keep: int = 2) -> ocp.CheckpointManager:
    """A ``CheckpointManager`` under ``workdir/checkpoints``.

    Args:
      workdir: the run directory.
      keep: number of latest checkpoints kept.

    Returns:
      The manager (close it, or use it as a context manager).
    """
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        create=True,
    )
    return _Manager(
        os.path.join(os.path.abspath(workdir), 'checkpoints'),
        options=options,
        item_names=ITEMS,
    )


@contextlib.contextmanager
def opened(workdir: str, *, keep: int = 2):
    """``manager(workdir)`` as a context that closes it on the way out.

    After a write the disk refused, orbax's writer threads print their
    own failures while the manager shuts down; they are muted (the error
    itself is re-raised, for one line), and every checkpoint on disk is
    complete or absent.
    """
    mngr = manager(workdir, keep=keep)
    try:
        yield mngr
        wait(mngr)
    except BaseException as e:
        quiet = disk_errno(e) is not None
        with (_muted_stderr() if quiet else contextlib.nullcontext(),
              contextlib.suppress(Exception)):
            mngr.close()
        raise
    mngr.close()


@contextlib.contextmanager
def _muted_stderr():
    """File descriptor 2 to /dev/null: threads of C++ code write there too."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def leaf_name(path) -> str:
    """'params/head/kernel' for a pytree key path (dicts, tuples, fields).

    One spelling for a leaf however its tree is held (a NamedTuple state or
    the dict a partial restore builds), so checksums match across both.
    """
    return '/'.join(str(getattr(k, 'key', getattr(k, 'name',
                                                  getattr(k, 'idx', k))))
                    for k in path)


def array_checksums(tree, prefix: str) -> dict[str, str]:
    """SHA-256 of every array leaf's bytes: ``{'<prefix>/<leaf>': hex}``.

    Args:
      tree: a pytree of NumPy or fully replicated JAX arrays.
      prefix: the item's name ('state', 'best').
    """
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = np.ascontiguousarray(parallel.to_host(leaf))
        digest = hashlib.sha256(value.dtype.str.encode())
        digest.update(repr(value.shape).encode())
        digest.update(memoryview(value).cast('B'))
        out[f'{prefix}/{leaf_name(path)}'] = digest.hexdigest()
    return out


def _meta_checksum(meta) -> str:
    body = {k: v for k, v in meta.items() if k != INTEGRITY}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def save(mngr: ocp.CheckpointManager, step: int, state, best, meta, *,
         identity=None) -> None:
    """Starts saving one checkpoint and returns once the arrays are copied.

    Orbax writes asynchronously: the device arrays are copied to the host
    before its save returns (so the next step may donate them), and the
    files are written in the background. The manager waits for a pending
    save before it starts the next one, on ``wait``, before a restore and
    when it is closed; a save that never completes leaves no checkpoint.
    With the arrays in host memory (``_on_host``) and a manager from
    ``manager``, this returns earlier still: once the arrays are copied,
    the checksums and orbax's save run on the manager's thread.

    Args:
      mngr: from ``manager``.
      step: the global train step (the checkpoint's name).
      state: the ``TrainState`` pytree.
      best: pytree of the best model per length.
      meta: JSON-serialisable dict (epoch, best mAP, early-stop counter).
      identity: JSON-serialisable dict of what makes the state what it is
        (``nhl_jax.train.workdir.run_identity``); compared on restore.

    Raises:
      OSError: ENOSPC, when the disk cannot hold the checkpoint.
    """
    best, aliases = distinct_best(best)
    _check_space(mngr, (state, best))
    meta = json.loads(json.dumps(meta))  # a copy: the loop goes on with it
    if aliases:
        meta[ALIASES] = aliases
    if isinstance(mngr, _Manager) and _on_host((state, best)):
        # Copies, as the loop donates the state and replaces best's entries
        # while the thread reads them.
        state, best = _copied(state), _copied(best)
        mngr.start_save(functools.partial(_start_save, mngr, step, state,
                                          best, meta, identity))
    else:
        _start_save(mngr, step, state, best, meta, identity)


def distinct_best(best) -> tuple[dict, dict]:
    """``best`` without the entries that repeat an earlier one, and
    ``{dropped key: kept key}``.

    An entry repeats another when its leaves are the very same arrays:
    the lengths that improved at one evaluation share one snapshot of a
    nested model (``loop.update_best``), which a checkpoint then holds
    once instead of once per length. Equal arrays that are not the same
    objects stay apart, so nothing is compared but identities.
    """
    kept, aliases, seen = {}, {}, {}
    for key, entry in best.items():
        leaves, treedef = jax.tree.flatten(entry)
        ident = (treedef, tuple(id(x) for x in leaves))
        if leaves and ident in seen:
            aliases[key] = seen[ident]
        else:
            seen[ident] = key
            kept[key] = entry
    return kept, aliases


def stored_best(meta: dict, keys) -> dict[str, str]:
    """``{key: the key its entry was saved under}`` for best's ``keys``."""
    aliases = meta.get(ALIASES, {})
    return {key: aliases.get(key, key) for key in keys}


def _start_save(mngr, step, state, best, meta, identity) -> None:
    """Checksums the arrays into ``meta`` and starts orbax's save."""
    checksums = {**array_checksums(state, 'state'),
                 **array_checksums(best, 'best')}
    meta[INTEGRITY] = {'checksums': checksums, 'identity': identity,
                       'meta': _meta_checksum(meta)}
    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            # A copy: the loop goes on changing it while orbax writes.
            best=ocp.args.StandardSave(dict(best)),
            meta=ocp.args.JsonSave(meta),
        ),
    )


def _on_host(trees) -> bool:
    """Whether a save may start on a thread: one process, and every JAX
    array in host memory, where a copy costs no accelerator memory."""
    return jax.process_count() == 1 and all(
        device.platform == 'cpu' for x in jax.tree.leaves(trees)
        if isinstance(x, jax.Array) for device in x.devices())


def _copied(tree):
    """``tree`` with copies of its arrays (same types, shardings)."""
    leaves, treedef = jax.tree.flatten(tree)
    on_device = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array)]
    copies = jax.block_until_ready(jax.device_put(
        [leaves[i] for i in on_device], may_alias=False))
    for i, copy in zip(on_device, copies):
        leaves[i] = copy
    leaves = [np.array(x) if isinstance(x, np.ndarray) else x
              for x in leaves]
    return jax.tree.unflatten(treedef, leaves)


def _check_space(mngr, trees) -> None:
    """Refuses a save the disk cannot hold, before orbax starts writing.

    A write that fails in orbax's background threads makes each of them
    print its failure; a full disk is found here instead, at the cost of
    a ``statvfs``, by the arrays' uncompressed size.

    Raises:
      OSError: ENOSPC, naming the directory and the bytes needed.
    """
    need = sum(np.asarray(x).nbytes if not isinstance(x, jax.Array)
               else x.nbytes for x in jax.tree.leaves(trees))
    directory = str(mngr.directory)
    if shutil.disk_usage(directory).free < need:
        raise OSError(errno.ENOSPC, f'{os.strerror(errno.ENOSPC)}: a '
                      f'checkpoint needs {need / 2**20:.1f} MiB', directory)


def wait(mngr: ocp.CheckpointManager) -> None:
    """Blocks until every pending save is complete on disk."""
    mngr.wait_until_finished()


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
    """The meta item of checkpoint ``step`` (with its integrity record).

    Raises:
      Unverified: unreadable, or not matching its own checksum.
    """
    try:
        meta = mngr.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta
    except Exception as e:  # noqa: BLE001 (orbax raises many types)
        raise Unverified(f'meta cannot be read ({_reason(e)})') from None
    record = meta.get(INTEGRITY) if isinstance(meta, dict) else None
    if record is not None and record.get('meta') != _meta_checksum(meta):
        raise Unverified('meta does not match its checksum')
    return meta


def verify(meta: dict, restored: dict) -> None:
    """Compares restored items with the checksums saved in ``meta``.

    Args:
      meta: the checkpoint's meta (``read_meta``).
      restored: {item name: restored pytree}; a partial tree checks just
        its leaves.

    Raises:
      Unverified: naming the first leaf that differs.
    """
    record = meta.get(INTEGRITY)
    if record is None:
        return  # written before checksums existed: nothing to compare
    saved = record['checksums']
    for item, tree in restored.items():
        for name, digest in array_checksums(tree, item).items():
            if saved.get(name) != digest:
                raise Unverified(f'{name} does not match its checksum')


def _drop_pending_reads() -> None:
    """Collects the reads a failed orbax restore leaves behind, quietly.

    Orbax abandons the read coroutines of the other arrays when one fails;
    Python would report each as never awaited whenever the garbage
    collector happens to meet it, long after the one-line error.
    """
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
    return f'{type(e).__name__}: {text}' if text else type(e).__name__


# Config fields added since runs were first written, with the value that
# does what those runs did: a config.json or checkpoint identity without
# the field matches a run that has it at this value.
ADDED_FIELDS = {
    'head_init': 'normal',
    'per_device_batch_size': None,
    'lr_scaling': 'none',
    'lr_reference_batch': None,
    'stack_lengths': False,
}


def identity_diff(saved, current) -> list[str]:
    """Fields in which a saved config or identity differs from the run's
    (a field of ``ADDED_FIELDS`` missing from ``saved`` reads as its value
    there)."""
    if saved is None or current is None:
        return []
    saved = {**{k: v for k, v in ADDED_FIELDS.items() if k in current},
             **saved}
    return sorted(k for k in set(saved) | set(current)
                  if saved.get(k) != current.get(k))


def _restore_step(mngr, step, state, best, identity, where):
    meta = read_meta(mngr, step)
    diff = identity_diff(meta.get(INTEGRITY, {}).get('identity'), identity)
    if diff:
        raise UsageError(
            f'checkpoint {step} of {where} was written by a different run '
            f'(fields {diff}); resume it with the config it was trained '
            'with (its checkpoints are intact), or use another --workdir.')
    # The meta is read_meta's: read and checked once.
    where_saved = stored_best(meta, best)
    saved = {key: best[key] for key in set(where_saved.values())}
    restored = restore_items(mngr, step,
                             state=ocp.args.StandardRestore(_abstract(state)),
                             best=ocp.args.StandardRestore(_abstract(saved)))
    verify(meta, restored)
    # Entries saved once come back as one object, so they stay shared
    # (and saved once) in the resumed run's checkpoints.
    best = {key: restored['best'][where_saved[key]] for key in best}
    meta = {k: v for k, v in meta.items() if k not in (INTEGRITY, ALIASES)}
    return restored['state'], best, meta


def restore_items(mngr: ocp.CheckpointManager, step: int, **items) -> dict:
    """{name: restored item} of checkpoint ``step``, e.g. ``state=`` args.

    Raises:
      Unverified: orbax cannot read them (the reads it leaves behind are
        collected here, quietly).
    """
    failure = None
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 (orbax/tensorstore raise many)
        failure = _reason(e)
    if failure is not None:
        _drop_pending_reads()
        raise Unverified(f'its arrays cannot be read ({failure})')
    return {name: restored[name] for name in items}


def restore_latest(mngr: ocp.CheckpointManager, state, best, *,
                   identity=None, log=print):
    """Restores the newest checkpoint that verifies, onto templates.

    Checkpoints that fail (unreadable, or data that do not match their
    checksums) are moved to ``checkpoints.unverified/`` beside the
    checkpoints, and ``log`` says which step is restored instead.

    Args:
      mngr: from ``manager``.
      state: a ``TrainState`` with the target structure, shapes and dtypes.
      best: a best-parameters pytree with the target structure.
      identity: the resuming run's identity (``save``); None skips the
        comparison.
      log: where the one-line note of a skipped checkpoint goes.

    Returns:
      ``(state, best, meta)``, or None when there is no checkpoint.

    Raises:
      UsageError: the checkpoints belong to another run, or none verifies.
    """
    wait(mngr)  # a save of this process may still be in flight
    where = os.path.dirname(str(mngr.directory))
    failed = []
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            restored = _restore_step(mngr, step, state, best, identity, where)
        except Unverified as e:
            failed.append((step, str(e)))
            continue
        if failed:
            _set_aside(mngr, [s for s, _ in failed])
            log(f'{_failures(failed)} of {where} failed verification and '
                f'moved to {UNVERIFIED}/; resuming from step {step}, the '
                'newest that verifies.')
        return restored
    if failed:
        raise UsageError(
            f'no checkpoint of {where} verifies ({_failures(failed)}); '
            'nothing was changed: start the run again in another --workdir.')
    return None


def _failures(failed) -> str:
    return '; '.join(f'checkpoint {s} ({why})' for s, why in failed)


def _set_aside(mngr, steps) -> None:
    """Moves failed step directories out of the manager's way (kept)."""
    directory = pathlib.Path(str(mngr.directory))
    if parallel.is_main_process():
        aside = directory.parent / UNVERIFIED
        aside.mkdir(exist_ok=True)
        for step in steps:
            target = aside / str(step)
            if target.exists():
                shutil.rmtree(target)
            os.replace(directory / str(step), target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices('nhl_jax.checkpoint.set_aside')
    mngr.reload()


def restore_or_start(mngr: ocp.CheckpointManager, state, best, new_meta, *,
                     resume: bool, workdir: str, identity=None, log=print):
    """``(state, best, meta)`` of a new run, or of the latest checkpoint.

    Args:
      mngr: from ``manager``.
      state: the initial state (also the restore template).
      best: the initial best-parameters pytree (also a template).
      new_meta: ``() -> meta`` of a run that starts now.
      resume: whether continuing a run is wanted.
      workdir: the run directory (for the message).
      identity, log: as in ``restore_latest``.

    Raises:
      UsageError: a checkpoint exists but ``resume`` is False, or it
        belongs to another run, or none verifies.
    """
    if mngr.latest_step() is None:
        return state, best, new_meta()
    if not resume:
        raise UsageError(
            f'{workdir} already holds a run; pass --resume to continue it or '
            'choose another --workdir.'
        )
    return restore_latest(mngr, state, best, identity=identity, log=log)


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
