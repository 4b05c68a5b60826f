"""Training systems other than NHL, chosen by ``config.method``.

A base-loss name (``dpn``, ``csq``, ...) trains NHL (``nhl_jax.train``);
the names here select another system's ``train_and_evaluate(config,
workdir, *, resume=False) -> results``. Modules are imported on first use so
that NHL runs never import them.
"""

import importlib
from collections.abc import Callable

from nhl_jax import heads

# method name -> module that defines train_and_evaluate.
SYSTEMS = {
    'mah': 'nhl_jax.mah.train',
    'odh': 'nhl_jax.odh.train',
}

HEADS = tuple(heads.HEADS)  # for --head; MAH uses all, NHL 'nested'


def get_trainer(method: str) -> Callable | None:
    """The system's ``train_and_evaluate``, or None for an NHL base loss."""
    if method not in SYSTEMS:
        return None
    return importlib.import_module(SYSTEMS[method]).train_and_evaluate
