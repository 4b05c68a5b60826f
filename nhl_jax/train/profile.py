"""``--config.profile_steps=10,20``: a ``jax.profiler`` trace of those steps.

The trace of global steps ``start..stop`` (1-based, inclusive) is written
to ``workdir/profile`` (TensorBoard / XProf layout, ``plugins/profile/<run>
/*.xplane.pb``); every step is annotated with its number
(``StepTraceAnnotation``), so the viewer splits the timeline by step. View
it with the ``xprof`` extra: ``pip install -e '.[xprof]'``, then ``xprof
--logdir=workdir/profile``.
"""

import contextlib
import os

import jax


class Profiler:
    """Starts and stops one trace around a window of steps."""

    def __init__(self, steps, workdir: str):
        """Args: steps: (start, stop) global steps, or None; workdir."""
        self.window = None if steps is None else tuple(int(s) for s in steps)
        self.directory = os.path.join(workdir, 'profile')
        self.active = False

    def step(self, step: int):
        """Context for running global step ``step`` (1-based).

        Starts the trace before the window's first step; ``after`` stops it.
        """
        if self.window is None or not self.window[0] <= step <= self.window[1]:
            return contextlib.nullcontext()
        if not self.active:
            jax.profiler.start_trace(self.directory)
            self.active = True
        return jax.profiler.StepTraceAnnotation('train', step_num=step)

    def after(self, step: int, state) -> None:
        """Stops the trace once ``step`` closes the window."""
        if self.active and step >= self.window[1]:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False

    def close(self) -> None:
        """Stops a trace the run ended inside of."""
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
