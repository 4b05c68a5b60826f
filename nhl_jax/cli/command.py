"""What every ``nhl-jax`` command shares: absl's run, its flags defined late.

A command module defines no flag at import (``nhl_jax.cli.main`` imports
only the command it runs, and tests define a command's flags on a fresh
``FlagValues``); its flags go onto the global ``FLAGS`` when it runs.
"""

from collections.abc import Callable

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
