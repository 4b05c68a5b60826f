"""The shipped run configs, Python files that ``--config`` names.

``--config=default`` (the default), ``--config=paper:cifar10``,
``--config=mah:cifar10`` and ``--config=odh``; each file's docstring gives
its command and what it trains. Copy one to start your own.
"""

import os

SHIPPED = ('default', 'paper', 'mah', 'odh')


def path(name: str) -> str:
    """The file of the shipped config ``name`` (a key of ``SHIPPED``)."""
    if name not in SHIPPED:
        raise ValueError(f'no shipped config {name!r}; choose one of '
                         f'{list(SHIPPED)}')
    return os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        f'{name}.py')
