"""What every ``nhl-jax`` command shares: absl's run, its flags defined late.

A command module defines no flag at import (``nhl_jax.cli.main`` imports
only the command it runs, and tests define a command's flags on a fresh
``FlagValues``); its flags go onto the global ``FLAGS`` when it runs.
"""

import atexit
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from absl import app, flags


def run(main: Callable, define_flags: Callable[[], None], argv=None, *,
        defines: str) -> None:
    """``app.run(main)``, defining the command's flags first, once.

    Args:
      main: absl's ``main(argv)``.
      define_flags: defines the command's flags on the global ``FLAGS``.
      argv: the command line (default: ``sys.argv``).
      defines: a flag ``define_flags`` defines: present means done (a
        second run in one process must not define them again).
    """
    def parse(args):
        if defines not in flags.FLAGS:
            define_flags()
        return app.parse_flags_with_usage(args)

    app.run(main, argv=argv, flags_parser=parse)


def as_process(call: Callable[[], None]) -> NoReturn:
    """Runs a command that is the whole process, then ends the process.

    After the command returns (or exits), the exit handlers run (logging,
    writers), the output is flushed and the process ends at once: Python's
    own shutdown would then tear down the XLA client, its thread pools and
    every module one by one, seconds on a small machine after the run's
    last line, with nothing left to write (every file a command writes is
    closed before it returns). Only for a process's own command line:
    library calls and tests return as usual.

    Args:
      call: runs the command; may raise ``SystemExit`` as absl's ``run``
        does. Other exceptions propagate (with Python's usual shutdown).
    """
    try:
        call()
        code = 0
    except SystemExit as e:
        code = e.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)  # sys.exit('message'), as Python does
        code = 1
    # What Python's shutdown does first: wait for non-daemon threads (an
    # asynchronous checkpoint or writer still finishing), then run the
    # exit handlers.
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
