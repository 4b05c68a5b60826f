"""Where a run's wall clock goes: seconds by phase, compilation split out.

A run is a sequence of phases (``startup``, ``data``, ``setup``,
``train``, ``evaluate``, ``checkpoint``, ``results``, ``plots``), timed
as they happen. JAX reports every tracing, lowering and XLA compilation
(or persistent-cache load) as a time span (``jax.monitoring``); the union
of those spans inside a phase is moved from that phase to ``trace`` and
``compile``, so the phases add up to the wall clock without counting
anything twice. The XLA compilations inside the phases are counted too,
apart from the programs read back from the persistent compilation cache
(``Phases.programs``): a run whose programs were all built before
compiles none.
"""

import contextlib
import os
import time

import jax

from nhl_jax import _started

# The spans of one compilation: tracing to a jaxpr and lowering to
# StableHLO ('trace', which the persistent cache cannot save: its key is
# the lowered program), then XLA's compile or the cache's load ('compile').
_EVENTS = {
    '/jax/core/compile/jaxpr_trace_duration': 'trace',
    '/jax/core/compile/jaxpr_to_mlir_module_duration': 'trace',
    '/jax/core/compile/backend_compile_duration': 'compile',
}
_spans: dict[str, list[tuple[float, float]]] = {'trace': [], 'compile': []}
# A 'compile' span that JAX found in the persistent cache also reports this
# event, at its end.
_CACHE_HIT = '/jax/compilation_cache/cache_hits'
_hits: list[float] = []  # time.time() of each
_listening: list[bool] = []  # one entry once the listeners are registered


def _on_span(event: str, start: float, end: float, **kwargs) -> None:
    del kwargs
    if event in _EVENTS:
        _spans[_EVENTS[event]].append((start, end))


def _on_event(event: str, **kwargs) -> None:
    del kwargs
    if event == _CACHE_HIT:
        _hits.append(time.time())


def _listen() -> None:
    if not _listening:
        jax.monitoring.register_event_time_span_listener(_on_span)
        jax.monitoring.register_event_listener(_on_event)
        _listening.append(True)


def spent(kind: str, start: float, end: float) -> float:
    """Wall seconds in ``[start, end]`` (``time.time``) spent on ``kind``
    ('trace' or 'compile').

    The union of its spans: a jit traced inside another's trace counts
    once.
    """
    clipped = sorted((max(a, start), min(b, end)) for a, b in _spans[kind]
                     if b > start and a < end)
    total, reach = 0.0, start
    for a, b in clipped:
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total


def process_start() -> float:
    """``time.time()`` at which this process's interpreter started.

    The later of the process's start (Linux's /proc) and the interpreter's
    (its clock at the package's first import less the CPU seconds it had
    spent by then, ``nhl_jax._started``): a shell may run a command in the
    process it forked for an earlier one (``pip install -e . && python
    experiments/run.py`` in a subshell execs python there), whose start
    would count the earlier command as this one's start-up.
    """
    interpreter = _started.WALL - _started.CPU
    forked = _forked()
    return interpreter if forked is None else max(forked, interpreter)


def _forked() -> float | None:
    """``time.time()`` at which this process was forked (Linux), else None."""
    try:
        with open('/proc/self/stat') as f:
            ticks = int(f.read().rsplit(')', 1)[1].split()[19])
        with open('/proc/uptime') as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - uptime + ticks / os.sysconf('SC_CLK_TCK')


# The order of the phase table.
ORDER = ('startup', 'data', 'setup', 'trace', 'compile', 'train', 'evaluate',
         'checkpoint', 'results', 'plots')


class Phases:
    """Wall seconds by phase of one run; phases do not nest."""

    def __init__(self):
        _listen()
        self.seconds: dict[str, float] = {}
        self._windows: list[tuple[float, float]] = []

    def add(self, name: str, start: float, end: float) -> None:
        """Books ``[start, end]`` to ``name``, less its tracing and
        compilation, which go to 'trace' and 'compile'."""
        split = {kind: spent(kind, start, end) for kind in _spans}
        split[name] = end - start - sum(split.values())
        for key, value in split.items():
            self.seconds[key] = self.seconds.get(key, 0.0) + value
        self._windows.append((start, end))

    def programs(self) -> dict[str, int]:
        """XLA programs that ended in the booked phases: ``compiled`` by
        XLA, or ``loaded`` from the persistent compilation cache."""
        def inside(t):
            return any(a <= t <= b for a, b in self._windows)
        built = sum(inside(end) for _, end in _spans['compile'])
        loaded = sum(inside(t) for t in _hits)
        return {'compiled': built - loaded, 'loaded': loaded}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.time()
        try:
            yield
        finally:
            self.add(name, start, time.time())

    def rounded(self) -> dict[str, float]:
        """The seconds as results.json holds them (ms), with the total."""
        order = {name: i for i, name in enumerate(ORDER)}
        out = {k: round(self.seconds[k], 3) for k in sorted(
            self.seconds, key=lambda k: order.get(k, len(order)))}
        out['total'] = round(sum(self.seconds.values()), 3)
        return out


def format_phases(seconds: dict, programs: dict | None = None) -> str:
    """One line: 'wall seconds: startup 2.1, data 0.4, ... (total 31.0)',
    and where ``programs`` (``Phases.programs``) is given, '; XLA
    programs: 0 compiled, 9 loaded from the compilation cache'."""
    parts = ', '.join(f'{k} {v:.1f}' for k, v in seconds.items()
                      if k != 'total')
    line = f'wall seconds: {parts} (total {seconds["total"]:.1f})'
    if programs is not None:
        line += (f'; XLA programs: {programs["compiled"]} compiled, '
                 f'{programs["loaded"]} loaded from the compilation cache')
    return line
