"""Orbax checkpoints of a run: train state, best parameters per length, meta.

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a run killed while saving leaves no checkpoint that
``latest_step`` would pick up.
"""

import json
import os

import jax
import orbax.checkpoint as ocp

from nhl_jax.errors import UsageError

ITEMS = ('state', 'best', 'meta')


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
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), 'checkpoints'),
        options=options,
        item_names=ITEMS,
    )


def save(mngr: ocp.CheckpointManager, step: int, state, best, meta) -> None:
    """Starts saving one checkpoint and returns once the arrays are copied.

    Orbax writes asynchronously: the device arrays are copied to the host
    before this returns (so the next step may donate them), and the files
    are written in the background. The manager waits for a pending save
    before it starts the next one, on ``wait``, before a restore and when
    it is closed; a save that never completes leaves no checkpoint.

    Args:
      mngr: from ``manager``.
      step: the global train step (the checkpoint's name).
      state: the ``TrainState`` pytree.
      best: pytree of the best model per length.
      meta: JSON-serialisable dict (epoch, best mAP, early-stop counter).
    """
    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            # Copies: the loop goes on changing both while orbax writes.
            best=ocp.args.StandardSave(dict(best)),
            meta=ocp.args.JsonSave(json.loads(json.dumps(meta))),
        ),
    )


def wait(mngr: ocp.CheckpointManager) -> None:
    """Blocks until every pending save is complete on disk."""
    mngr.wait_until_finished()


def restore_latest(mngr: ocp.CheckpointManager, state, best):
    """Restores the latest checkpoint onto templates of the same structure.

    Args:
      mngr: from ``manager``.
      state: a ``TrainState`` with the target structure, shapes and dtypes.
      best: a best-parameters pytree with the target structure.

    Returns:
      ``(state, best, meta)``, or None when there is no checkpoint.
    """
    wait(mngr)  # a save of this process may still be in flight
    step = mngr.latest_step()
    if step is None:
        return None
    try:
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(state)),
                best=ocp.args.StandardRestore(_abstract(best)),
                meta=ocp.args.JsonRestore(),
            ),
        )
    except Exception as e:  # orbax/tensorstore raise many types
        reason = str(e).strip().splitlines()[0][:200] if str(e) else ''
        raise UsageError(
            f'checkpoint {step} in {mngr.directory} cannot be read '
            f'({type(e).__name__}: {reason}); delete that step directory to '
            'resume from the previous checkpoint, or use another --workdir.'
        ) from e
    return restored.state, restored.best, restored.meta


def restore_or_start(mngr: ocp.CheckpointManager, state, best, new_meta, *,
                     resume: bool, workdir: str):
    """``(state, best, meta)`` of a new run, or of the latest checkpoint.

    Args:
      mngr: from ``manager``.
      state: the initial state (also the restore template).
      best: the initial best-parameters pytree (also a template).
      new_meta: ``() -> meta`` of a run that starts now.
      resume: whether continuing a run is wanted.
      workdir: the run directory (for the message).

    Raises:
      UsageError: a checkpoint exists but ``resume`` is False.
    """
    if mngr.latest_step() is None:
        return state, best, new_meta()
    if not resume:
        raise UsageError(
            f'{workdir} already holds a run; pass --resume to continue it or '
            'choose another --workdir.'
        )
    return restore_latest(mngr, state, best)


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
