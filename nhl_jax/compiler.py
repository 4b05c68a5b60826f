"""``jax.jit`` with the XLA options this project measured on each platform.

On the CPU (jax 0.10.2), XLA hands convolutions to YNNPACK by default
(``xla_cpu_experimental_ynn_fusion_type``). For the small CNN that is the
slow path: the kernel gradient of its second convolution runs on one
thread for a large part of the step while the other cores idle, and its
forward is slower than XLA's own convolution. Keeping YNNPACK for dots
and reductions only makes the backbone's forward + backward and the full
NHL train step faster (``benchmarks/conv_paths.py``; the figures are in
``benchmarks/RESULTS.md``). The
library's jits that run networks (train steps and hooks, the evaluation
encoder, ODH's centre tables) go through ``jit`` below; a user's own
``jax.jit`` is unaffected, and can take the same options with
``nhl_jax.compiler.jit`` or ``options()``.
JAX takes compiler options on top-level jits only, so a function that
runs nested inside another jit (``train.compile_encode``) stays a plain
``jax.jit`` and gets the outer one's options.

The option is XLA-internal and may change name; it is therefore probed
once per process on a tiny function and dropped (with the default
compilation) where this XLA rejects it. The option in ``XLA_FLAGS``
(``--xla_cpu_experimental_ynn_fusion_type=...``) wins over ours.
"""

import concurrent.futures
import functools
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

YNN_FUSION = 'xla_cpu_experimental_ynn_fusion_type'

# YNNPACK for single dots and for reductions (the conv bias gradients:
# without it XLA's reduce-window form is slow; benchmarks/RESULTS.md),
# not for convolutions.
CPU_OPTIONS = {YNN_FUSION: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,'
                           'LIBRARY_FUSION_TYPE_REDUCE'}


def options(platform: str | None = None) -> dict:
    """The compiler options for ``platform`` (None: the default backend).

    Args:
      platform: 'cpu', 'gpu', 'tpu', ... as ``jax.Device.platform``.

    Returns:
      A dict for ``jax.jit(..., compiler_options=)``, possibly empty.
    """
    platform = platform or jax.default_backend()
    if platform != 'cpu' or YNN_FUSION in os.environ.get('XLA_FLAGS', ''):
        return {}
    return dict(CPU_OPTIONS) if _accepted(tuple(CPU_OPTIONS.items())) else {}


@functools.cache
def _accepted(items: tuple) -> bool:
    """Whether this XLA compiles with these options (probed once)."""
    try:
        # An abstract argument: an array would be one more program.
        jax.jit(jnp.sin, compiler_options=dict(items)).lower(
            jax.ShapeDtypeStruct((), jnp.float32)).compile()
    except Exception:  # noqa: BLE001 - any rejection means: do not use them
        return False
    return True


def jit(fun: Callable, *, mesh=None, **kwargs) -> Callable:
    """``jax.jit(fun, **kwargs)`` plus ``options`` for the mesh's platform.

    Args:
      fun: the function to compile.
      mesh: the ``jax.sharding.Mesh`` it runs on (None: default backend).
      **kwargs: ``jax.jit``'s keyword arguments (shardings, donation, ...).

    Returns:
      The jitted function.
    """
    platform = mesh.devices.flat[0].platform if mesh is not None else None
    return jax.jit(fun, compiler_options=options(platform) or None, **kwargs)


def compile_all(lowered: Sequence[jax.stages.Lowered]
                ) -> list[jax.stages.Compiled]:
    """Compiles several lowered programs side by side.

    XLA releases the interpreter while it compiles a program or reads it
    back from the persistent cache, so independent programs can compile
    at once: the first on the calling thread, the others on one thread
    per further core, in order. For a run's first programs, which nothing
    else can overlap (measured in benchmarks/RESULTS.md: concurrent loads
    slow each other, so the gain is less than their sum).

    Args:
      lowered: ``jax.jit(f).lower(...)`` of each program.

    Returns:
      Their ``Compiled`` programs, in order.
    """
    # One thread per core: more would only share them.
    workers = min(len(lowered), os.cpu_count() or 1) - 1
    if workers < 1:
        return [program.compile() for program in lowered]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        rest = [pool.submit(program.compile) for program in lowered[1:]]
        first = lowered[0].compile()
        return [first] + [future.result() for future in rest]


# The persistent compilation cache of the command line: XLA's programs
# are written to disk, so the next process that builds the same program
# (another seed, method option or a resume) loads it instead of compiling.
CACHE_ENV = 'NHL_JAX_COMPILATION_CACHE'
_CACHE_OFF = ('', '0', 'off', 'none', 'false')
# Least recently used entries beyond this are evicted (under a file lock,
# which also keeps processes sharing the folder from reading half-written
# entries).
CACHE_MAX_BYTES = 2 * 2**30


def default_cache_dir(setting: str | None = None) -> str | None:
    """The command line's cache folder.

    Args:
      setting: the config's ``compilation_cache``: a folder, or 'off'
        (none); None: ``$NHL_JAX_COMPILATION_CACHE`` (a folder, or '' /
        'off': none), else ``$XDG_CACHE_HOME/nhl_jax/xla`` (default
        ``~/.cache/nhl_jax/xla``).
    """
    value = os.environ.get(CACHE_ENV) if setting is None else setting
    if value is not None:
        return None if value.strip().lower() in _CACHE_OFF else value
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
        os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'nhl_jax', 'xla')


def use_persistent_cache(directory: str | None) -> str | None:
    """Turns on JAX's persistent compilation cache in ``directory``.

    Every program is cached, however quickly it compiled (most of a run's
    programs compile in under JAX's default threshold of a second, and
    together they are its largest fixed cost). A cache folder the user
    set for JAX (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) wins.
    Call before the first compilation.

    Args:
      directory: the folder (made if missing), or None: leave the cache
        as JAX has it (off by default).

    Returns:
      The folder in use, or None.
    """
    current = jax.config.jax_compilation_cache_dir
    if current or directory is None:
        return current or None
    os.makedirs(directory, exist_ok=True)
    settings = {'jax_compilation_cache_dir': directory,
                'jax_persistent_cache_min_compile_time_secs': 0.0,
                'jax_persistent_cache_min_entry_size_bytes': -1,
                'jax_compilation_cache_max_size': CACHE_MAX_BYTES}
    for name, value in settings.items():
        jax.config.update(name, value)
    return directory
