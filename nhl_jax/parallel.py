"""Data parallelism with ``jax.jit`` over a device mesh, one or many hosts.

The train step is written for ONE global batch; under ``jax.jit`` with the
batch sharded ``P('data')`` and everything else replicated ``P()``, XLA
(GSPMD) partitions it and inserts the collectives. Every quantity that spans
the batch therefore keeps its single-device meaning, with no extra code: the
DSH memory-bank scatter writes every device's rows into every replica, the
dominance weights come from the all-reduced head gradients (the same weights
on every device), the distillation compares GLOBAL [B, B] Gram matrices over
the whole batch (not per-device blocks), and the batch statistics are the
whole batch's (unless ``sync_batch_stats=False``). The tests check a
sharded step against a single-device step. Where the single-device
computation would pair rows of different devices (the [B, B] Gram matrices
of the weighting's products and of the distillation), the step traced over
several devices (``batch_shards``) takes sums over rows instead, which the
devices all-reduce without gathering any row.

Multi-host runs use JAX's multi-controller runtime: every process runs the
same program, calls ``initialize`` first, feeds only its slice of each
global batch (``process_slice``), and ``global_batch`` assembles the global
array without moving data between hosts.
"""

import os
import re
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nhl_jax.errors import UsageError

DATA_AXIS = 'data'
# host:port, the host a name, an IPv4 address or a bracketed IPv6 one.
_ADDRESS = re.compile(r'(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})')


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Starts JAX's multi-process runtime (no-op for a single process).

    Arguments left as None are read from the environment
    (``NHL_COORDINATOR_ADDRESS``, ``NHL_NUM_PROCESSES``, ``NHL_PROCESS_ID``);
    with none of them set, nothing happens, so single-host runs need no
    flags. On TPU pods and SLURM clusters ``jax.distributed.initialize()``
    detects everything by itself: set ``NHL_NUM_PROCESSES=auto`` for that.
    On CPU, collectives across processes use gloo.

    Args:
      coordinator_address: ``host:port`` of process 0.
      num_processes: number of processes (an int, or a string of one).
      process_id: this process's rank in [0, num_processes).

    Raises:
      UsageError: for settings that do not describe a run (see
        ``check_processes``), before JAX is touched.
    """
    env = os.environ
    # Unset or empty: the environment's (empty there too: unset). Not
    # ``or``: num_processes=0 is refused, not taken for unset.
    if coordinator_address in (None, ''):
        coordinator_address = env.get('NHL_COORDINATOR_ADDRESS') or None
    if num_processes in (None, ''):
        num_processes = env.get('NHL_NUM_PROCESSES') or None
    if process_id is None:
        process_id = env.get('NHL_PROCESS_ID') or None
    num_processes, process_id = check_processes(
        coordinator_address, num_processes, process_id)
    if num_processes is None:
        return
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    if num_processes == 'auto':
        jax.distributed.initialize()
        return
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)


def _int(value, flag: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f'{flag} must be an integer, got {value!r}.') \
            from None


def check_processes(coordinator_address, num_processes, process_id):
    """Validates the multi-host settings; ``(num_processes, process_id)``.

    Every combination that ``jax.distributed.initialize`` would refuse late
    (or hang on) is refused here, with the flag (or environment variable)
    to fix.

    Args:
      coordinator_address: ``host:port`` of process 0, or None.
      num_processes: None, 'auto', or a number of processes (int or str).
      process_id: None or this process's rank (int or str).

    Returns:
      ``(num_processes, process_id)``: None (a single process), 'auto',
      or ints.

    Raises:
      UsageError: a count below 1 or not an integer, a rank out of range,
        a malformed address, or an incomplete combination.
    """
    nproc = '--num_processes (or NHL_NUM_PROCESSES)'
    rank = '--process_id (or NHL_PROCESS_ID)'
    addr = '--coordinator_address (or NHL_COORDINATOR_ADDRESS)'
    if num_processes is None:
        if coordinator_address is not None or process_id is not None:
            raise UsageError(
                f'{addr} and {rank} need {nproc}; pass all three for a '
                'multi-host run, or none for one process.')
        return None, None
    if num_processes == 'auto':
        if coordinator_address is not None or process_id is not None:
            raise UsageError(
                f'{nproc}=auto detects the coordinator and the ranks itself; '
                f'leave {addr} and {rank} unset.')
        return 'auto', None
    count = _int(num_processes, nproc)
    if count < 1:
        raise UsageError(
            f'{nproc} must be >= 1 (or auto), got {count}; pass the number '
            'of processes of the run.')
    if coordinator_address is None or process_id is None:
        raise UsageError(
            f'--num_processes={count} needs {addr} (host:port of process 0) '
            f'and {rank} (0 to {count - 1}); or use --num_processes=auto on '
            'TPU pods / SLURM.')
    match = _ADDRESS.fullmatch(str(coordinator_address))
    if not match or not 0 < int(match.group(2)) < 65536:
        raise UsageError(
            f'{addr} must be host:port with a port in 1..65535, got '
            f'{coordinator_address!r}; pass e.g. 10.0.0.1:1234.')
    rank_value = _int(process_id, rank)
    if not 0 <= rank_value < count:
        raise UsageError(
            f'{rank} must be in [0, {count}) for {count} processes, got '
            f'{rank_value}.')
    return count, rank_value


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D ``('data',)`` mesh over the first ``num_devices`` devices.

    Devices are in ``jax.devices()`` order, which groups them by process, so
    each process's slice of a global batch lands on its own devices. The
    axis type is Auto (classic GSPMD propagation).

    Args:
      num_devices: devices to use; None means all (of every process).

    Returns:
      The mesh.

    Raises:
      ValueError: if more devices are asked for than exist, or a
        multi-process run does not use every device.
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(
            f'--devices={n} but {len(devices)} device(s) exist; pass a number '
            f'in [1, {len(devices)}] or leave it unset for all.'
        )
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(
            'multi-process runs use every device; leave --devices unset.'
        )
    return Mesh(np.array(devices[:n]), (DATA_AXIS,),
                axis_types=(jax.sharding.AxisType.Auto,))


def batch_shards() -> int:
    """Devices the batch is split over in the step being traced.

    The size of the ``'data'`` axis of the abstract mesh that the trace
    runs under (``train.compile_step`` traces a step over a mesh of
    several devices within ``jax.sharding.use_abstract_mesh``), else 1.
    Static: it picks, at trace time, a computation whose sums over the
    batch's rows need no row of another device (``nhl_jax.nhl.weighting``,
    ``nhl_jax.nhl.distill``).
    """
    return dict(jax.sharding.get_abstract_mesh().shape).get(DATA_AXIS, 1)


def check_batch_shards(shards) -> None:
    """Raises unless ``shards`` is a device count (an int >= 1)."""
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f'batch_shards must be an int >= 1 (the devices the '
                         f'batch is split over), got {shards!r}.')


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of the state: a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch: split along its leading axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises unless the global batch splits evenly over devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f'batch_size {batch_size} does not split over {n} devices; use a '
            f'multiple of {n}.'
        )


def replicate(tree, mesh: Mesh):
    """Places a host or single-device pytree on every device of ``mesh``."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(
            sharding, np.asarray(x)), tree)


def process_slice(batch_size: int) -> slice:
    """Rows of each global batch that this process loads."""
    per_process = batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh,
                 batch_size: int) -> dict[str, jax.Array]:
    """Assembles this process's rows into the global sharded batch.

    Args:
      local: this process's rows (``process_slice`` of the global batch).
      mesh: the data mesh.
      batch_size: the global batch size B.

    Returns:
      The batch as global arrays of leading size B, sharded ``P('data')``.
    """
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(
            sharding, v, (batch_size, *v.shape[1:]))
        for k, v in local.items()
    }


def to_host(tree):
    """A fully replicated pytree as host NumPy arrays (any process)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))
                        if isinstance(x, jax.Array) else x, tree)


def is_main_process() -> bool:
    """True on the process that writes logs and results."""
    return jax.process_index() == 0
