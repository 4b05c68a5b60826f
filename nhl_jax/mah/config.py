"""MAH's settings (``config.mah``) and their checks, run before any work.

Fields (defaults in nhl_jax/cli/configs/default.py, the paper's in
nhl_jax/cli/configs/mah.py):

- ``outer_iterations``: outer iterations (paper: 41 on CIFAR-10);
- ``epochs``: epochs over Omega per outer iteration (3);
- ``num_samples``: S = |Omega|, rows sampled per outer iteration (2,000);
- ``gamma``: quantisation weight (200);
- ``weights``: one weight per length, shortest first, e.g. (4, 2, 1); None
  gives 2^(M-1-k), i.e. 4 : 2 : 1 for three lengths;
- ``optimizer``: 'sgd' (paper) or 'adam'; ``learning_rate`` and
  ``weight_decay`` (coupled, torch style) are its settings (paper: SGD,
  1e-3, 5e-4);
- ``lr_decay_after``: 0-based outer iterations after which the rate is
  multiplied by ``lr_decay_factor`` (paper: 10, 20, 30, 40 and 0.1);
- ``eval_every``: outer iterations between evaluations (and the last);
- ``v_split``: the split whose rows own a database code V ('database' or
  'train'; see ``nhl_jax.mah.train``).

``config.batch_size`` is the batch, ``config.epochs`` is not used.
"""

import math

from nhl_jax.checks import is_int
from nhl_jax.errors import UsageError
from nhl_jax.train.step import OPTIMIZERS

V_SPLITS = ('database', 'train')


def _is_number(x) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)
            and math.isfinite(x))


# Field -> (test, what it must be).
_FIELDS = {
    'outer_iterations': (lambda x: is_int(x) and x > 0, 'a positive int'),
    'epochs': (lambda x: is_int(x) and x > 0, 'a positive int'),
    'num_samples': (lambda x: is_int(x) and x > 0, 'a positive int'),
    'gamma': (lambda x: _is_number(x) and x >= 0, 'a number >= 0'),
    'weights': (lambda x: x is None or (
        isinstance(x, (tuple, list)) and len(x) > 0
        and all(_is_number(w) and w > 0 for w in x)),
        'None or a tuple of positive numbers, shortest code first'),
    'optimizer': (lambda x: x in OPTIMIZERS, f'one of {sorted(OPTIMIZERS)}'),
    'learning_rate': (lambda x: _is_number(x) and x > 0, 'a positive number'),
    'weight_decay': (lambda x: _is_number(x) and x >= 0, 'a number >= 0'),
    'lr_decay_after': (lambda x: isinstance(x, (tuple, list)) and all(
        is_int(d) and d >= 0 for d in x),
        'a tuple of outer iterations (ints >= 0)'),
    'lr_decay_factor': (lambda x: _is_number(x) and x > 0,
                        'a positive number'),
    'eval_every': (lambda x: is_int(x) and x > 0, 'a positive int'),
    'v_split': (lambda x: x in V_SPLITS, f'one of {list(V_SPLITS)}'),
}


def check(config) -> None:
    """Validates ``config.mah`` and the fields MAH cannot honour.

    Raises:
      UsageError: one line naming the field, its value and the fix.
    """
    mah = config.get('mah') or {}
    unknown = sorted(set(mah) - set(_FIELDS))
    missing = sorted(set(_FIELDS) - set(mah))
    if unknown or missing:
        raise UsageError(
            f'config.mah has unknown field(s) {unknown} and lacks {missing}; '
            f'its fields are {sorted(_FIELDS)} (see '
            'nhl_jax/cli/configs/default.py).'
        )
    for name, (test, want) in _FIELDS.items():
        if not test(mah[name]):
            raise UsageError(
                f'mah.{name} must be {want}, got {mah[name]!r}.'
            )
    _check_run_fields(config)


def _check_run_fields(config) -> None:
    bits = tuple(config.bits)
    weights = config.mah.weights
    if weights is not None and len(weights) != len(bits):
        raise UsageError(
            f'mah.weights has {len(weights)} entries but bits {bits} has '
            f'{len(bits)}; pass one weight per length (shortest first) or '
            'leave it None for 2^(M-1-k).'
        )
    if config.single_length:
        raise UsageError(
            'single_length is not supported by --method=mah (its heads are '
            'trained jointly); drop --single_length.'
        )


def check_splits(spec, splits) -> None:
    """Raises if Omega does not fit in the split that owns V.

    Args:
      spec: the resolved run (``nhl_jax.cli.registry.RunSpec``).
      splits: its loaded ``data.Splits``.
    """
    opts = spec.options
    n = len(getattr(splits, opts.v_split).labels)
    if opts.num_samples > n:
        raise UsageError(
            f'mah.num_samples={opts.num_samples} exceeds the {n} rows of the '
            f'{spec.dataset} {opts.v_split} split; use at most {n}.'
        )


def head_weights(mah, bits) -> tuple[float, ...]:
    """The per-length weights: ``mah.weights`` or 2^(M-1-k) (4 : 2 : 1)."""
    if mah.weights is not None:
        return tuple(float(w) for w in mah.weights)
    return tuple(float(2 ** (len(bits) - 1 - k)) for k in range(len(bits)))
