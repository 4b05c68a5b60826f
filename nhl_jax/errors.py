"""The error types of bad input and of faults, below every other module."""

import errno
import re


class UsageError(ValueError):
    """A bad configuration, flag or workdir: the message says how to fix it.

    The command-line tools print it as one ``error:`` line and exit; only
    this type is caught there, so a bug still shows its traceback.
    """


class RunError(RuntimeError):
    """A fault of the run's surroundings (a full disk, a read-only folder).

    The message names the path, what survived and how to go on; the
    command line prints it as one ``error:`` line.
    """


# errno values of a write that the disk refused.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO,
                errno.EFBIG)


def disk_errno(error: BaseException) -> int | None:
    """The errno of a refused write behind ``error``, or None.

    Looks through the exception's causes and contexts: orbax and
    tensorstore re-raise an ``OSError`` of a background write as a
    ``ValueError`` whose text holds ``[os_error_code='28']``.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
            return error.errno
        found = re.search(r"os_error_code='(\d+)'", str(error))
        if found and int(found.group(1)) in _DISK_ERRNOS:
            return int(found.group(1))
        error = error.__cause__ or error.__context__
    return None
