"""When this interpreter reached the package, on its own clocks.

``nhl_jax/__init__.py`` imports this module first, so ``WALL`` and ``CPU``
(``time.time()`` and ``time.process_time()``) are read before anything
heavy is imported: ``WALL - CPU`` is when the interpreter started, give or
take its boot's waits for the disk (``nhl_jax.train.phases.process_start``).
"""

import time

WALL, CPU = time.time(), time.process_time()
