"""The run directory's policy: where a run may write, and what it may resume.

Checked before anything is written: ``check_workdir`` (a writable
directory, or one that can be made), ``check_workdir_policy`` (never
overwrite an earlier run; resume only one whose config.json is there) and
``check_same_config`` (a resumed run keeps its config), which then stores
config.json.
"""

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import socket

import jax

from nhl_jax import parallel, runlog
from nhl_jax.errors import UsageError
from nhl_jax.train.checkpoint import identity_diff, leaf_name
from nhl_jax.train.system import RunSpec


def check_workdir(workdir: str, *, create_parents: bool = False) -> None:
    """Raises unless ``workdir`` can be a run directory.

    It must be a directory that this process can write to, or not exist
    yet, in a parent directory that exists and that it can write to. With
    ``create_parents`` (the command line's) missing parents are allowed;
    the nearest existing one must be a directory it can write to.
    """
    if not workdir:
        raise UsageError(
            'workdir is empty; pass --workdir=<directory> or leave it unset.'
        )
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UsageError(
            f'workdir {workdir!r} is a file, not a directory; choose another '
            '--workdir.'
        )
    parent = os.path.dirname(os.path.abspath(workdir))
    while create_parents and not os.path.exists(parent):
        workdir, parent = parent, os.path.dirname(parent)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise UsageError(
            f'workdir parent {parent!r} is a file, not a directory; choose '
            'another --workdir.'
        )
    if not os.path.isdir(parent):
        raise UsageError(
            f'workdir parent {parent!r} does not exist; create it or choose '
            'another --workdir.'
        )
    # The run writes config.json first and its results last: a directory it
    # cannot write to would fail after the training, not before.
    exists = os.path.isdir(workdir)
    if not os.access(workdir if exists else parent, os.W_OK | os.X_OK):
        what = (f'workdir {workdir!r}' if exists
                else f'workdir parent {parent!r}')
        raise UsageError(
            f'{what} is not writable; fix its permissions or choose another '
            '--workdir.'
        )


LOCK = '.lock'


@contextlib.contextmanager
def owned(workdir: str):
    """Holds the run directory's exclusive lock while the run lasts.

    An ``flock`` on ``workdir/.lock``, which the kernel releases when the
    process ends however it ends, so a killed run never blocks its resume.
    Only process 0 takes it (the processes of one run share the
    directory). ``workdir`` and its missing parents are made here; if the
    body fails while the lock file is all they hold (bad input found
    before anything was written), they are removed again.

    Raises:
      UsageError: another process holds the lock (its pid and host named).
    """
    if not parallel.is_main_process():
        yield
        return
    made = _missing_dirs(workdir)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _lock(fd, workdir, path)
        try:
            yield
        except BaseException:
            if os.listdir(workdir) == [LOCK]:  # nothing of the run yet
                if made:
                    shutil.rmtree(made[0])
                else:
                    os.unlink(path)
            raise
    finally:
        os.close(fd)  # releases the lock


def _missing_dirs(workdir: str) -> list[str]:
    """``workdir`` and its parents that do not exist yet, outermost first."""
    missing, path = [], os.path.abspath(workdir)
    while not os.path.exists(path):
        missing.insert(0, path)
        path = os.path.dirname(path)
    return missing


def _lock(fd: int, workdir: str, path: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors='replace').strip()
        raise UsageError(
            f'{workdir} is in use by another run (process '
            f'{holder or "unknown"}, holding {path}); wait for it to end or '
            'choose another --workdir.') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'{os.getpid()} on {socket.gethostname()}\n'.encode(), 0)


def _holds_run(workdir: str) -> bool:
    """Whether ``workdir`` (or a ``len_<b>`` run in it) has checkpoints."""
    found = glob.glob(os.path.join(workdir, 'checkpoints', '*'))
    return bool(found or glob.glob(
        os.path.join(workdir, 'len_*', 'checkpoints', '*')))


def saved_steps(workdir: str) -> list[int]:
    """The finished checkpoints' steps of ``workdir`` and its len_* runs."""
    found = glob.glob(os.path.join(workdir, 'checkpoints', '*')) + glob.glob(
        os.path.join(workdir, 'len_*', 'checkpoints', '*'))
    return sorted(int(os.path.basename(p)) for p in found
                  if os.path.basename(p).isdigit())


def _outputs(workdir: str) -> list[str]:
    """The results and logs of an earlier run in ``workdir`` (relative)."""
    found = [name for name in ('results.json', 'metrics.jsonl')
             if os.path.exists(os.path.join(workdir, name))]
    return found + sorted(os.path.relpath(p, workdir) for p in glob.glob(
        os.path.join(workdir, 'len_*', 'metrics.jsonl')))


# Fields a resumed run may change: they do not change what is computed
# (patience only when the run stops; a run stopped early goes on with a
# larger one).
_FREE = frozenset({'epochs', 'log_every', 'profile_steps', 'patience',
                   'writers', 'compilation_cache', 'plots',
                   'eval_batch_size'})


def run_identity(spec: RunSpec, bits, state) -> dict:
    """What makes a checkpoint's state what it is, saved with each one.

    The config fields a resumed run may not change, the lengths of this
    training run and a digest of the state's leaf names, shapes and
    dtypes; ``nhl_jax.train.checkpoint`` compares it on restore, so a run
    whose config.json was edited cannot continue another's checkpoint.
    """
    shapes = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        shapes.update(f'{leaf_name(path)}:{jax.numpy.shape(leaf)}:'
                      f'{jax.numpy.result_type(leaf)};'.encode())
    identity = {k: v for k, v in spec.config.items() if k not in _FREE}
    identity.update(train_bits=[int(b) for b in bits],
                    state_shapes=shapes.hexdigest())
    return json.loads(json.dumps(identity))


def check_workdir_policy(workdir: str, resume: bool) -> None:
    """Refuses to overwrite, or to resume unchecked, an earlier run.

    Without ``resume`` a workdir that holds checkpoints, results or a
    metrics log is refused (a new run would truncate the log and replace
    the results). With it, the run's config.json must be there (it is what
    the new config is checked against), and so must its checkpoints when it
    has results: a finished run without checkpoints cannot be continued.
    A log without checkpoints is a run stopped before its first one:
    ``resume`` starts it again. Writes nothing.

    Raises:
      UsageError: naming the workdir, what it holds and the fix.
    """
    checkpoints, outputs = _holds_run(workdir), _outputs(workdir)
    if not resume:
        if checkpoints:
            raise UsageError(
                f'{workdir} already holds a run; pass --resume to continue '
                'it or choose another --workdir.')
        if 'results.json' in outputs:
            raise UsageError(
                f'{workdir} already holds a run ({", ".join(outputs)}) whose '
                'checkpoints are gone, so it cannot be continued; choose '
                'another --workdir.')
        if outputs:
            raise UsageError(
                f'{workdir} already holds a run ({", ".join(outputs)}) that '
                'stopped before its first checkpoint; pass --resume to start '
                'it again with the same config, or choose another --workdir.')
        return
    if not (checkpoints or outputs):
        return  # nothing to resume: a new run
    if not os.path.exists(os.path.join(workdir, 'config.json')):
        held = 'checkpoints' if checkpoints else ', '.join(outputs)
        raise UsageError(
            f'workdir {workdir} has {held} but no config.json, so this '
            "config cannot be checked against the run's; restore its "
            'config.json or choose another --workdir.')
    if not checkpoints and 'results.json' in outputs:
        raise UsageError(
            f'workdir {workdir} holds results.json but no checkpoints, so '
            'there is nothing to resume (a new run would replace the '
            'results); choose another --workdir.')


def _read_config(path: str) -> dict:
    """A run's saved config.json; a one-line error if it is corrupt."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        saved = e
    if not isinstance(saved, dict):
        raise UsageError(
            f'{path} cannot be read as a run config ({saved}); restore it or '
            'choose another --workdir.')
    return saved


def check_same_config(workdir: str, spec: RunSpec, resume: bool) -> None:
    """Stores config.json, after refusing to overwrite or mix runs.

    Without ``resume`` a workdir that already holds a run is refused (before
    its config.json is touched); with it, a run made with another config
    (only ``epochs``, ``log_every`` and ``profile_steps`` may change); see
    ``check_workdir_policy``.
    """
    check_workdir_policy(workdir, resume)
    path = os.path.join(workdir, 'config.json')
    current = {k: v for k, v in spec.config.items() if k not in _FREE}
    if resume and os.path.exists(path):
        saved = {k: v for k, v in _read_config(path).items()
                 if k not in _FREE}
        diff = identity_diff(saved, current)
        if diff:
            raise UsageError(
                f'{workdir} holds a run with a different config (fields '
                f'{diff}); resume with the same config or use another '
                '--workdir.'
            )
    os.makedirs(workdir, exist_ok=True)
    if parallel.is_main_process():
        runlog.write_json_atomic(path, dict(spec.config))
