"""Worker processes that build batches for a whole run.

grain's ``mp_prefetch`` starts its processes for one iterator, so a run
that opens one iterator per epoch and per evaluated split pays an
interpreter start and the imports in every worker each time (about 1.5 s
on a 2-core machine, benchmarks/input_pipeline.py). A ``WorkerPool``
starts its processes once; every ``grain.MapDataset`` it iterates is sent
to them (pickled once per iterator) and built element by element, element
i by worker ``i % processes`` as grain assigns them, in order::

    with WorkerPool(4) as pool:
        for epoch in range(num_epochs):
            for batch in data.train_batches(ds, 64, seed=0, epoch=epoch,
                                            workers=pool):
                ...

An element is computed by ``dataset[i]`` in a worker, so the batches are
those of any other way of building them. Errors raised there (a file that
cannot be decoded) are raised again by the consumer's ``next()``.
"""

import collections
import multiprocessing
import os
import pickle
import queue
import signal
import traceback
import weakref

import cloudpickle

# How long the consumer waits for a result before checking that its
# worker is still alive.
_POLL_S = 1.0
_JOIN_S = 5.0


class WorkerPool:
    """Worker processes that build the elements of many datasets in order.

    Use a pool from one thread; several of its iterators may be open at
    once.

    Attributes:
      processes: the number of worker processes.
      pids: their process ids (to watch their CPU time, say).
    """

    def __init__(self, processes: int, *, buffer: int = 2):
        """Starts ``processes`` worker processes (spawned, as grain does).

        Args:
          processes: N >= 1 worker processes.
          buffer: elements each worker builds ahead of the consumer.

        Raises:
          ValueError: unless both are ints >= 1.
        """
        for name, value in (('processes', processes), ('buffer', buffer)):
            _check_size(name, value)
        context = multiprocessing.get_context('spawn')
        self._requests = [context.Queue() for _ in range(processes)]
        self._results = [context.Queue() for _ in range(processes)]
        self._procs = [
            context.Process(target=_serve, args=(r, o), daemon=True,
                            name=f'nhl_jax data worker {i}')
            for i, (r, o) in enumerate(zip(self._requests, self._results))]
        for process in self._procs:
            process.start()
        self.processes = processes
        self.pids = tuple(process.pid for process in self._procs)
        self._window = processes * buffer
        self._tokens = 0
        self._live = set()  # tokens of open iterators
        self._stash = {}  # (token, i) -> result read for another iterator
        self._closed = False

    def iterate(self, dataset):
        """An iterator over ``dataset`` (a ``grain.MapDataset``), in order.

        Building starts at once, ahead of the first ``next()``; close the
        iterator (or exhaust it) to stop the work it queued.
        """
        if self._closed:
            raise ValueError('this WorkerPool is closed; iterate inside its '
                             '`with` block.')
        self._tokens += 1
        token = self._tokens
        payload = cloudpickle.dumps(dataset)
        for requests in self._requests:
            requests.put(('load', token, payload))
        self._live.add(token)
        return _Elements(self, token, len(dataset))

    def close(self) -> None:
        """Stops the workers (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for requests in self._requests:
            requests.put(('stop', None, None))
        for process, requests in zip(self._procs, self._requests):
            process.join(_JOIN_S)
            if process.is_alive():
                process.kill()
                process.join()
            # Requests a dead worker never read must not block our exit.
            requests.cancel_join_thread()
        self._stash.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _request(self, token: int, i: int) -> None:
        self._requests[i % self.processes].put(('get', token, i))

    def _drop(self, token: int) -> None:
        if token not in self._live:
            return
        self._live.discard(token)
        for key in [k for k in self._stash if k[0] == token]:
            del self._stash[key]
        if not self._closed:
            for requests in self._requests:
                requests.put(('drop', token, None))

    def _receive(self, token: int, i: int):
        """Element i of iterator ``token``; raises what its worker raised."""
        if (token, i) in self._stash:
            return _unwrap(self._stash.pop((token, i)))
        w = i % self.processes
        while True:
            try:
                message = self._results[w].get(timeout=_POLL_S)
            except queue.Empty:
                self._check_alive(w)
                continue
            key = message[1:3]
            if key == (token, i):
                return _unwrap(message)
            if key[0] in self._live:  # another open iterator's element
                self._stash[key] = message

    def _check_alive(self, w: int) -> None:
        process = self._procs[w]
        if not process.is_alive():
            self.close()
            raise RuntimeError(
                f'data worker process {w} exited with code '
                f'{process.exitcode} (killed for memory?); use fewer '
                'data_workers or data_workers=0.')


def _check_size(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'WorkerPool {name} must be an int >= 1, got '
                         f'{value!r}.')


class _Elements:
    """The consumer's side of one ``WorkerPool.iterate``."""

    def __init__(self, pool: WorkerPool, token: int, length: int):
        self._pool, self._token, self._length = pool, token, length
        self._next = self._sent = 0
        self._finalizer = weakref.finalize(self, pool._drop, token)
        self._fill()

    def __iter__(self):
        return self

    def __next__(self):
        if self._next >= self._length:
            self.close()
            raise StopIteration
        try:
            element = self._pool._receive(self._token, self._next)
        except BaseException:
            self.close()
            raise
        self._next += 1
        self._fill()
        return element

    def close(self) -> None:
        """Stops the work queued for this iterator."""
        self._finalizer()
        self._next = self._sent = self._length

    def _fill(self) -> None:
        ahead = min(self._length, self._next + self._pool._window)
        while self._sent < ahead:
            self._pool._request(self._token, self._sent)
            self._sent += 1


def _unwrap(message):
    kind, _, _, payload = message
    if kind == 'error':
        raise payload
    return payload


def _serve(requests, results) -> None:
    """A worker: loads datasets, builds the elements asked for, in order."""
    # The parent handles Ctrl-C and preemption (a checkpoint, maybe from
    # batches still to come) and then closes the pool; should it die
    # instead, the worker notices below and exits.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain reads its absl flags
        flags.FLAGS.mark_as_parsed()
    datasets, inbox = {}, collections.deque()
    while True:
        if not inbox:
            try:
                inbox.append(requests.get(timeout=_POLL_S))
            except queue.Empty:
                if not parent.is_alive():
                    os._exit(0)
                continue
        _drain(requests, inbox, datasets)
        if not inbox:
            continue
        kind, token, arg = inbox.popleft()
        if kind == 'stop':
            # Nothing to save: skip the unread results' flush and the
            # interpreter's teardown (about 1 s with jax imported).
            results.cancel_join_thread()
            os._exit(0)
        if kind == 'load':
            datasets[token] = cloudpickle.loads(arg)
        elif kind == 'get':
            results.put(_build(datasets[token], token, arg))


def _drain(requests, inbox, datasets) -> None:
    """Moves waiting requests to ``inbox``, applying stops and drops at once.

    A drop cancels the requests of its iterator still waiting, so an
    iterator closed early leaves no work behind; a stop cancels all.
    """
    while True:
        try:
            message = requests.get_nowait()
        except queue.Empty:
            return
        kind, token = message[:2]
        if kind == 'stop':
            inbox.clear()
        elif kind == 'drop':
            datasets.pop(token, None)
            kept = [m for m in inbox if m[1] != token]
            inbox.clear()
            inbox.extend(kept)
            continue
        inbox.append(message)


def _build(dataset, token: int, i: int):
    try:
        return ('ok', token, i, dataset[i])
    except Exception as e:  # noqa: BLE001 (raised again by the consumer)
        if not _picklable(e):
            e = RuntimeError(f'{type(e).__name__}: {e}')
        e.add_note(f'In data worker, building element {i}:\n'
                   + ''.join(traceback.format_tb(e.__traceback__)))
        return ('error', token, i, e)


def _picklable(value) -> bool:
    try:
        pickle.dumps(value)
    except Exception:  # noqa: BLE001 (any failure means no)
        return False
    return True
