"""Batches over in-memory ``ArrayDataset`` objects, built with grain.

Training order is a pure function of (seed, epoch): resuming at an epoch
boundary replays exactly the batches an uninterrupted run would have seen,
with no iterator state to save. Batches are gathered from the arrays one
index batch at a time, which is much faster than gathering per record.
Only the host side is covered: batches are numpy arrays::

    for epoch in range(num_epochs):
        for batch in train_batches(splits.train, 64, seed=0, epoch=epoch):
            ...  # batch['image'], batch['label'], batch['index']

Image files are decoded ahead of the consumer, by threads of this process
or by worker processes (``resolve_workers``), started per iterator or once
for a whole run (``run_workers``, which ``fit`` uses); the batches and
their order are the same whichever builds them.
"""

import contextlib
import os
from collections.abc import Iterator
from typing import NamedTuple

import grain
import numpy as np
from absl import flags

from nhl_jax.data import files
from nhl_jax.data.datasets import ArrayDataset, check_dataset
from nhl_jax.data.workers import WorkerPool

# grain's default reads with 16 threads and a 500-element buffer. For a
# numpy gather that is slower than reading inline (benchmarks/RESULTS.md)
# and can hold 500 batches in memory; callers who want
# prefetching can add it to ``train_dataset(...)`` themselves.
_READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)

# Decoding threads the automatic default starts for image files. Pillow
# releases the GIL while it decodes, resizes and crops; timing the parts
# of one JPEG, a small share of its time (opening the file, the crop's
# random draws, numpy copies) holds it, so threads stop scaling after a
# few, and 4 leave the GIL free most of the time for the main thread's
# step dispatch. Threads decode faster than none and, over an epoch,
# faster than worker processes (benchmarks/input_pipeline.py; figures in
# benchmarks/RESULTS.md): each process starts an interpreter and imports
# jax before its first batch, and copies every batch back.
AUTO_THREADS = 4


class Workers(NamedTuple):
    """Who builds the batches (``resolve_workers``).

    Attributes:
      processes: worker processes (grain ``mp_prefetch``); 0 for none.
      threads: threads of this process decoding batches ahead of the
        consumer; 0 builds each batch when it is asked for.
    """

    processes: int
    threads: int


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where known)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_workers(ds, workers: int | Workers | WorkerPool | None,
                    ) -> Workers:
    """The processes and threads that build ``ds``'s batches.

    The default (``workers=None``, ``config.data_workers = None``) suits
    the dataset: in-memory arrays are built inline (a batch is one numpy
    gather, which threads and processes only slow down), image files by
    ``min(available_cpus(), AUTO_THREADS)`` threads of this process, which
    start at once and need no copies. Worker processes scale past the GIL
    on hosts with many cores but cost an interpreter start per iterator
    (each epoch, each evaluated split) unless a ``WorkerPool`` serves the
    run (``run_workers``), so they are opt-in.

    Args:
      ds: the dataset (``ArrayDataset``, ``FileDataset``), or None when
        unknown (then None builds inline).
      workers: None for the default above; 0 to build every batch inline
        in the calling thread (no threads: plain tracebacks, no
        background work); N > 0 for N worker processes; a ``Workers``
        for both explicitly (threads then decode inside each process); or
        a ``WorkerPool`` whose processes outlive the iterator
        (``run_workers``).

    Returns:
      The ``Workers`` to use.

    Raises:
      ValueError: unless ``workers`` is None, an int >= 0 or a
        ``Workers`` of ints >= 0.
    """
    if isinstance(workers, WorkerPool):
        return Workers(workers.processes, 0)
    if isinstance(workers, Workers):
        for name, value in zip(workers._fields, workers):
            _check_count(value, f'Workers.{name}')
        return Workers(int(workers.processes), int(workers.threads))
    if workers is None:
        if isinstance(ds, files.FileDataset):
            return Workers(0, min(available_cpus(), AUTO_THREADS))
        return Workers(0, 0)
    _check_count(workers, 'data workers', ' (None: automatic)')
    return Workers(int(workers), 0)


def _check_count(value, name: str, hint: str = '') -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
            or value < 0):
        raise ValueError(f'{name} must be an int >= 0{hint}, got {value!r}.')


def epoch_seed(seed: int, epoch: int) -> int:
    """Shuffle seed of one epoch, derived from (seed, epoch) only.

    ``np.random.SeedSequence([seed, epoch])`` decorrelates neighbouring
    seeds and epochs; the result also fits grain's 32-bit seed range, for
    callers who shuffle with grain directly.

    Args:
      seed: non-negative run seed.
      epoch: non-negative epoch number.

    Returns:
      An int in [0, 2**32).
    """
    for name, value in (('seed', seed), ('epoch', epoch)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(
                f'{name} must be a non-negative int, got {value!r}; pass '
                f'e.g. {name}=0.'
            )
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def steps_per_epoch(n: int, batch_size: int,
                    drop_remainder: bool = True) -> int:
    """Number of batches ``train_batches`` yields for n samples."""
    _check_batch_size(batch_size)
    if drop_remainder:
        return n // batch_size
    return -(-n // batch_size)


def _check_batch_size(batch_size: int) -> None:
    if (not isinstance(batch_size, (int, np.integer))
            or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(
            f'batch_size must be a positive int, got {batch_size!r}.'
        )


def _index_batches(order: np.ndarray, batch_size: int,
                   drop_remainder: bool) -> list[np.ndarray]:
    """Cuts a row order [n] into index batches [B] (the last maybe shorter)."""
    n = len(order)
    stop = n - n % batch_size if drop_remainder else n
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def _array_images(ds: ArrayDataset, index, augment_seed) -> np.ndarray:
    del augment_seed  # in-memory images are used as they are
    return ds.images[index]


# How each dataset type is checked and turns rows into images.
_KINDS = {
    ArrayDataset: (check_dataset, _array_images),
    files.FileDataset: (files.check_file_dataset, files.gather),
}


def _kind(ds):
    if type(ds) not in _KINDS:
        raise ValueError(
            f'unsupported dataset type {type(ds).__name__}; use one of '
            f'{[t.__name__ for t in _KINDS]}.'
        )
    return _KINDS[type(ds)]


def check_source(ds) -> None:
    """Raises unless the batch functions accept ``ds`` (type and contents)."""
    _kind(ds)[0](ds)


def image_shape(ds) -> tuple[int, ...]:
    """(H, W, C) of the images a dataset's batches carry."""
    if isinstance(ds, files.FileDataset):
        return (ds.crop, ds.crop, 3)
    return tuple(ds.images.shape[1:])


def gather_batch(ds, index: np.ndarray,
            augment_seed=None) -> dict[str, np.ndarray]:
    """The batch ``{image, label, index}`` of rows ``index`` of ``ds``."""
    return {
        'image': _kind(ds)[1](ds, index, augment_seed),
        'label': ds.labels[index],
        'index': index.astype(np.int32),
    }


# The batch functions are closures rather than functools.partial because
# grain names each transform by its repr, and a partial's repr prints the
# arrays, a cost on every pipeline built (benchmarks/RESULTS.md).
def _batch_fn(ds, augment_seed):
    return lambda index: gather_batch(ds, index, augment_seed)


def _padded_batch_fn(ds: ArrayDataset, batch_size: int):
    def gather(index):
        batch = gather_batch(ds, np.pad(index, (0, batch_size - index.size),
                                   mode='edge'))
        batch['valid'] = int(index.size)
        return batch

    return gather


def train_dataset(ds: ArrayDataset, batch_size: int, *, seed: int,
                  epoch: int, drop_remainder: bool = True,
                  rows: slice = slice(None)) -> grain.MapDataset:
    """The grain dataset behind ``train_batches`` (to add prefetching).

    The epoch's order is one numpy permutation seeded by ``epoch_seed``,
    cut into index batches that grain maps to gathered batches. grain's own
    per-record ``shuffle`` (``index_shuffle``) is slower than this on CPU
    (benchmarks/RESULTS.md).

    Args and returns: as ``train_batches``, but a ``grain.MapDataset`` of
    the batch dicts (``len`` is the number of steps).
    """
    check_source(ds)
    n = len(ds.labels)
    _check_batch_size(batch_size)
    if drop_remainder and batch_size > n:
        raise ValueError(
            f'batch_size {batch_size} exceeds the {n} samples, so '
            'drop_remainder=True would yield no batch; lower batch_size or '
            'pass drop_remainder=False.'
        )
    order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(n)
    batches = [b[rows] for b in _index_batches(order, batch_size,
                                               drop_remainder)]
    return grain.MapDataset.source(batches).map(_batch_fn(ds, (seed, epoch)))


def train_batches(
    ds: ArrayDataset, batch_size: int, *, seed: int, epoch: int,
    drop_remainder: bool = True, rows: slice = slice(None), start: int = 0,
    workers: int | Workers | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One shuffled epoch of training batches.

    Every row appears once per epoch (minus the dropped remainder), in an
    order that depends on (seed, epoch) only.

    Args:
      ds: the training set.
      batch_size: B.
      seed: non-negative run seed.
      epoch: non-negative epoch number.
      drop_remainder: drop the last, smaller batch (keeps one jit shape).
      rows: the rows of every global batch to load, e.g. this process's
        share in a multi-host run (``parallel.process_slice``); images are
        gathered for these rows only.
      start: batches of the epoch to skip (resuming mid-epoch).
      workers: who builds the batches (``resolve_workers``): None for the
        default (threads for image files), 0 inline, N > 0 for N worker
        processes, or a ``Workers``. The batches are the same for every
        choice.

    Yields:
      {'image': [B, H, W, C] uint8, 'label': [B, C] float32,
       'index': [B] int32 row within ``ds`` (the losses' memory-bank index)}.

    Raises:
      ValueError: for a bad dataset, a non-positive batch_size, a
        batch_size above len(ds) with drop_remainder=True, or bad workers.
    """
    dataset = train_dataset(ds, batch_size, seed=seed, epoch=epoch,
                            drop_remainder=drop_remainder, rows=rows)
    return iterate(dataset[start:], workers, source=ds)


def eval_batches(ds, batch_size: int, *,
                 workers: int | Workers | None = None,
                 ) -> Iterator[dict[str, np.ndarray]]:
    """All rows of ``ds`` in order, in batches of one fixed shape.

    The last batch is padded with copies of the last row, so that a jitted
    encoder compiles once. Strip the padding with ``valid``::

        codes = np.concatenate([
            np.asarray(encode(b['image']))[:b['valid']]
            for b in eval_batches(ds, 256)])  # [N, K], rows in ds order

    Args:
      ds: the dataset to encode.
      batch_size: B.
      workers: who builds the batches, as in ``train_batches``.

    Yields:
      {'image': [B, H, W, C] uint8, 'label': [B, C] float32,
       'index': [B] int32 row within ``ds``, 'valid': int, the number of
       leading real rows (B except in the last batch)}.
    """
    check_source(ds)
    _check_batch_size(batch_size)
    batches = _index_batches(np.arange(len(ds.labels)), batch_size, False)
    dataset = grain.MapDataset.source(batches).map(
        _padded_batch_fn(ds, batch_size))
    return iterate(dataset, workers, source=ds)


def iterate(dataset: grain.MapDataset,
            workers: int | Workers | None = None, *,
            source=None) -> Iterator:
    """Iterates ``dataset`` in order, however its elements are built.

    Args:
      dataset: a ``grain.MapDataset`` (of batches).
      workers: as ``resolve_workers``: None for the default of ``source``,
        0 inline, N > 0 for N worker processes (started for this iterator),
        a ``Workers``, or a ``WorkerPool``.
      source: the dataset the elements are read from, which picks the
        default (None: unknown, built inline).

    Returns:
      An iterator over the elements of ``dataset``, in its order.
    """
    plan = resolve_workers(source, workers)
    if isinstance(workers, WorkerPool):
        return workers.iterate(dataset)
    options = _READ_OPTIONS
    if plan.threads:
        # One ready batch beyond those being decoded: enough to hide the
        # decoding, and memory stays (threads + 1) batches.
        options = grain.ReadOptions(num_threads=plan.threads,
                                    prefetch_buffer_size=plan.threads + 1)
    iterable = dataset.to_iter_dataset(options)
    if plan.processes:
        # grain's worker processes read absl flags; outside an absl app
        # (notebooks, tests) nothing parsed them, so take the defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iterable = iterable.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=plan.processes))
    return iter(iterable)


@contextlib.contextmanager
def run_workers(workers: int | Workers | WorkerPool | None, source):
    """``workers`` for a whole run: its worker processes started once.

    A plan with worker processes (and no threads in them) becomes one
    ``WorkerPool`` that every epoch and evaluation reuses, instead of new
    processes per iterator; any other plan is yielded unchanged, so runs
    without worker processes start none.

    Args:
      workers: as ``resolve_workers``.
      source: the dataset that picks the default (the training set).

    Yields:
      What to pass as ``workers`` for the rest of the run.
    """
    plan = resolve_workers(source, workers)
    if (isinstance(workers, WorkerPool) or not plan.processes
            or plan.threads):
        yield workers
        return
    with WorkerPool(plan.processes) as pool:
        yield pool
