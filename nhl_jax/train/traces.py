"""Traced programs kept across processes: a sweep's later runs skip tracing.

JAX's persistent compilation cache (``nhl_jax.compiler``) saves XLA's
work, but its key is the lowered program, so every fresh process still
traces its Python to a jaxpr and lowers it. A nested NHL step (M base
losses, M vjps for the gradient weighting rules, the distillation) is the
largest such trace of a run. ``cached(fun, name, context, directory)``
returns a function to call inside ``jax.jit`` in place of ``fun``: it
calls ``fun``'s program as ``jax.export`` saved it under a key of all that
determines it, and traces and saves it where no entry is there:

- the source of this package, the versions of Python, JAX, jaxlib, flax,
  optax, chex, numpy and ml_dtypes;
- JAX's configuration, ``XLA_FLAGS``, the backend's platform and devices;
- the caller's ``context`` (a run's config less the fields no program
  reads, the data's shapes, the lengths);
- the program's name and its arguments' tree, shapes and dtypes.

A caller may leave a field out of ``context`` only where no program
depends on it (``tests/train/test_traces.py`` checks the seed for NHL's
step). Either way ``fun``'s program reaches the outer ``jit`` through the
same saved bytes, so a process computes the same numbers whether the entry
was there or not. An unreadable entry is traced and written again; a
program ``jax.export`` refuses is traced in place, uncached, as without
this module. The cache is off until ``use`` names its folder, as the
command line does.
"""

import contextlib
import functools
import hashlib
import json
import os
import pathlib
import pickle
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata

import jax
from jax import export

# Bump when an entry's layout changes: older entries are then misses.
_FORMAT = 1
# Oldest entries beyond this many are removed when one is written.
MAX_ENTRIES = 256
_PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'chex', 'numpy', 'ml_dtypes')
# Config fields left out of a run's context: no step reads them (the seed
# reaches a step only through its arguments: the state's key and arrays,
# the batches), so a sweep over them reuses its programs.
UNTRACED = frozenset({'seed', 'log_every', 'profile_steps', 'patience',
                      'writers', 'compilation_cache', 'plots',
                      'eval_batch_size'})


_folder: list[str | None] = [None]  # set by ``use``


def use(directory: str | None) -> None:
    """Turns the cache on in ``directory`` (None: off) for this process.

    The command line does, in JAX's persistent compilation cache folder
    (``nhl_jax.cli.train``), where every traced function is this package's
    and chosen by the config. A program of one's own code (a loss added to
    ``nhl_jax.losses.LOSSES``, a patched step) is not part of the key: turn
    it on there only while that code does not change.
    """
    _folder[0] = None if directory is None else os.fspath(directory)


def default_dir() -> str | None:
    """The folder given to ``use``; None while the cache is off, or when
    the run spans several processes (a saved program is one process's)."""
    return _folder[0] if jax.process_count() == 1 else None


@jax.tree_util.register_static
class Static:
    """A value a cached function returns beside its arrays (an NNX
    graphdef): a pytree node without leaves, so it is saved with the
    program's output tree."""

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Static) and self.value == other.value

    def __hash__(self):
        return hash(self.value)


def run_context(config, bits, info) -> dict:
    """The context of a run's steps: its config less ``UNTRACED``, the
    lengths it trains and its ``DataInfo`` (image shape, classes, split
    sizes)."""
    return {'config': {k: v for k, v in config.items()
                       if k not in UNTRACED},
            'bits': [int(b) for b in bits],
            'data': [list(info.image_shape), int(info.num_classes),
                     dict(info.sizes)]}


def cached(fun: Callable, name: str, context: dict,
           directory: str | None) -> Callable:
    """``fun``, calling its saved program when traced.

    Args:
      fun: a pure function of arrays (pytrees of them) to pytrees of
        arrays, to be called inside ``jax.jit``.
      name: the program's name (part of the key).
      context: JSON-able values that determine ``fun``'s program besides
        its arguments' shapes (and this package's source).
      directory: the cache folder (``default_dir()``); None: ``fun``.

    Returns:
      A function with ``fun``'s signature and results.
    """
    if directory is None:
        return fun

    @functools.wraps(fun)
    def traced(*args):
        leaves, in_tree = jax.tree.flatten(args)
        avals = [jax.typeof(x) for x in leaves]
        key = _key(name, context, in_tree, avals)
        entry = _read(directory, key) or _write(directory, key,
                                                _export(fun, in_tree, avals))
        if entry is None:  # jax.export refused it: trace in place
            return fun(*args)
        program, out_tree = entry
        return jax.tree.unflatten(out_tree, program.call(*leaves))

    return traced


@functools.cache
def environment() -> str:
    """sha256 of this process's package source, versions, JAX config,
    ``XLA_FLAGS`` and devices: what a saved program depends on besides
    the caller's context."""
    h = hashlib.sha256()
    root = pathlib.Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob('*.py')):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    versions = {name: _version(name) for name in _PACKAGES}
    devices = jax.devices()
    h.update(json.dumps({
        'format': _FORMAT, 'python': sys.version, 'versions': versions,
        'jax_config': sorted((k, repr(v))
                             for k, v in jax.config.values.items()),
        'xla_flags': os.environ.get('XLA_FLAGS', ''),
        'devices': [devices[0].platform, devices[0].device_kind,
                    len(devices), jax.process_count()],
    }, sort_keys=True).encode())
    return h.hexdigest()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package.replace('_', '-'))
    except metadata.PackageNotFoundError:
        return None


def _key(name, context, in_tree, avals) -> str:
    return hashlib.sha256(json.dumps(
        [environment(), name, context, str(in_tree),
         [str(a) for a in avals]], sort_keys=True, default=str).encode()
    ).hexdigest()


def _export(fun, in_tree, avals):
    """(serialized ``jax.export.Exported``, out tree) of ``fun``, or None
    where ``jax.export`` refuses it (host callbacks, ...)."""
    out_trees = []

    def flat(*leaves):
        out, out_tree = jax.tree.flatten(fun(*jax.tree.unflatten(in_tree,
                                                                 leaves)))
        out_trees.append(out_tree)
        return out

    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type)
             for a in avals]
    try:
        program = export.export(jax.jit(flat))(*specs)
        return program.serialize(), out_trees[0]
    except Exception:  # noqa: BLE001 - anything it refuses: trace in place
        return None


def _path(directory: str, key: str) -> str:
    return os.path.join(directory, f'{key}.trace')


def _read(directory, key):
    """(Exported, out tree) of ``key``, or None if absent or unreadable."""
    path = _path(directory, key)
    try:
        with open(path, 'rb') as f:
            fmt, data, out_tree = pickle.load(f)
        if fmt != _FORMAT:
            return None
        program = export.deserialize(bytearray(data))
    except Exception:  # noqa: BLE001 - a bad entry is a miss, rewritten
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: evicted last
    return program, out_tree


def _write(directory, key, exported):
    """Saves ``exported`` (from ``_export``) atomically; returns it as
    ``_read`` would, or None for None. A folder that refuses the write
    leaves the program uncached, not the run failed."""
    if exported is None:
        return None
    data, out_tree = exported
    temp = None
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, suffix='.tmp',
                                         delete=False) as f:
            temp = f.name
            pickle.dump((_FORMAT, data, out_tree), f)
        os.replace(temp, _path(directory, key))
        temp = None
        _evict(directory)
    except (OSError, pickle.PicklingError):
        pass
    finally:
        if temp is not None:  # nothing half-written is left
            with contextlib.suppress(OSError):
                os.unlink(temp)
    return export.deserialize(bytearray(data)), out_tree


def _evict(directory: str) -> None:
    """Removes the oldest entries beyond ``MAX_ENTRIES``."""
    entries = sorted(pathlib.Path(directory).glob('*.trace'),
                     key=lambda p: p.stat().st_mtime)
    for path in entries[:max(0, len(entries) - MAX_ENTRIES)]:
        path.unlink(missing_ok=True)
