"""The error type of bad input, below every other module."""


class UsageError(ValueError):
    """A bad configuration, flag or workdir: the message says how to fix it.

    The command-line tools print it as one ``error:`` line and exit; only
    this type is caught there, so a bug still shows its traceback.
    """
