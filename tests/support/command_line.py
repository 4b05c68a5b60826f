"""experiments/run.py's flags in-process, for the CLI tests."""

import warnings

from absl import flags

from nhl_jax.cli import train as run


def flags_of(*args) -> flags.FlagValues:
    """run.py's flags, defined on a fresh ``FlagValues`` and parsed from
    ``run.py *args``."""
    argv = ['run.py', *args]
    flag_values = flags.FlagValues()
    with warnings.catch_warnings():
        # ml_collections loads the config file with importlib's deprecated
        # load_module(); the command line does too, there unseen.
        warnings.filterwarnings('ignore', 'the load_module', DeprecationWarning)
        run.define_flags(flag_values, argv)
        run.parse_flags(argv, flag_values)
    return flag_values
