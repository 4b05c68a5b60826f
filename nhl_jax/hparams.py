"""Checks of a factory's keyword hyperparameters: names, types and ranges.

One checker for the command line (``--config.loss_kwargs.margin=x``) and
the Python API (``losses.get('dpn', margin='x')``): names are checked
against the factory's signature, values against its annotations (or the
default's type), before the factory runs. Every real value must be
finite. An annotation may say more:

- ``Literal['bank', 'batch']``: the allowed values of an option;
- ``Annotated[float, Range(0, 1)]`` (or an alias below: ``Weight``,
  ``Margin``, ``Scale``, ``Fraction``, ``Count``): the allowed interval.
"""

import inspect
import math
import numbers
import types
import typing
from typing import Annotated, NamedTuple

from nhl_jax.errors import UsageError

# The largest weight of a loss term (or of the distillation) accepted: far
# above every published value (at most 55, DSDH's eta), so that a larger
# one is a typo (1e30) rather than a setting, and the total stays well
# inside float32.
MAX_WEIGHT = 1000.0


class Range(NamedTuple):
    """The allowed interval of a number: ``low <= x <= high``.

    Attributes:
      low: the smallest value, None: no lower bound.
      high: the largest value, None: no upper bound.
      open_low: ``low < x`` instead (a scale that must be positive).
    """

    low: float | None = None
    high: float | None = None
    open_low: bool = False

    def holds(self, value) -> bool:
        """Whether ``value`` lies in the interval."""
        if self.low is not None and (value <= self.low if self.open_low
                                     else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        """The interval in words, e.g. 'lie in [0, 1]', 'be > 0'."""
        if self.low is not None and self.high is not None:
            left = '(' if self.open_low else '['
            return f'lie in {left}{self.low:g}, {self.high:g}]'
        if self.low is not None:
            return f'be {">" if self.open_low else ">="} {self.low:g}'
        return f'be <= {self.high:g}'


# A term's weight: 0 turns the term off.
Weight = Annotated[float, Range(0, MAX_WEIGHT)]
# A hinge or likelihood margin (of a distance, or a score): never negative.
Margin = Annotated[float, Range(0)]
# A scale or a step size: positive.
Scale = Annotated[float, Range(0, open_low=True)]
# A fraction or a probability.
Fraction = Annotated[float, Range(0, 1)]
# A number of steps, epochs or tries: at least one.
Count = Annotated[int, Range(1)]


def _hyperparameters(factory) -> dict[str, inspect.Parameter]:
    """The keywords with defaults, less those a ``functools.partial`` binds.

    The weighting rules' leading ``bits`` has no default: it is the run's.
    """
    bound = getattr(factory, 'keywords', {})
    return {name: p
            for name, p in inspect.signature(factory).parameters.items()
            if p.default is not p.empty and name not in bound}


class _Spec(NamedTuple):
    """What a keyword's annotation allows."""

    types: tuple[type, ...] | None  # None: any type
    choices: tuple  # the Literal values, () for none
    bounds: Range | None


def _spec(param: inspect.Parameter) -> _Spec:
    annotation, bounds = param.annotation, None
    if annotation is param.empty:
        # Unannotated: the default's type, unless it is None (e.g. centres,
        # static weights: arrays the factory checks itself).
        accepted = None if param.default is None else (type(param.default),)
        return _Spec(accepted, (), None)
    if typing.get_origin(annotation) is Annotated:
        annotation, *extras = typing.get_args(annotation)
        bounds = next((e for e in extras if isinstance(e, Range)), None)
    members = (typing.get_args(annotation)
               if typing.get_origin(annotation) in (typing.Union,
                                                    types.UnionType)
               else (annotation,))
    choices = tuple(v for m in members
                    if typing.get_origin(m) is typing.Literal
                    for v in typing.get_args(m))
    accepted = tuple(m for m in members if isinstance(m, type))
    return _Spec(accepted or None, choices, bounds)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _type_ok(value, accepted: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # a bool is an int, but not a number here
        return bool in accepted
    # NumPy scalars too; an int where a float is expected (margin=2).
    if float in accepted and isinstance(value, numbers.Real):
        return True
    if int in accepted and isinstance(value, numbers.Integral):
        return True
    return isinstance(value, accepted)


def _is_choice(value, choices: tuple) -> bool:
    # Only scalars compare: a table (centers=) is not a choice, nor is True 1.
    return (isinstance(value, (str, numbers.Number))
            and not isinstance(value, bool) and value in choices)


def _type_names(types: tuple[type, ...]) -> str:
    names = {bool: 'a bool', int: 'an int', float: 'a number', str: 'a str',
             type(None): 'None'}
    return ' or '.join(names.get(t, t.__name__) for t in types)


def _problem(value, spec: _Spec) -> str | None:
    """Why ``value`` does not fit ``spec`` ('must ...'), or None."""
    if spec.choices and _is_choice(value, spec.choices):
        return None
    # A string can only be one of the choices (centers='nested' or a table).
    if spec.choices and (isinstance(value, str) or spec.types is None):
        return f'must be one of {list(spec.choices)}'
    if spec.types is not None and not _type_ok(value, spec.types):
        return f'must be {_type_names(spec.types)}'
    if _is_real(value) and not math.isfinite(value):
        return 'must be finite'
    if spec.bounds is not None and _is_real(value) and not (
            spec.bounds.holds(value)):
        return f'must {spec.bounds.describe()}'
    return None


def check_hyperparameter(what: str, factory, name: str, value,
                         flag: str | None = None) -> None:
    """One keyword's value against ``factory``'s annotation of it.

    Args:
      what: the factory in messages, e.g. ``"loss 'dpn'"``.
      factory: a function with a keyword ``name`` that has a default.
      name: the keyword.
      value: its value.
      flag: the command-line flag the fix names, e.g. ``'--distill_weight'``;
        None: the Python keyword.

    Raises:
      UsageError: a value of the wrong type, not one of the choices, not
        finite or out of range, naming a valid one.
    """
    param = _hyperparameters(factory)[name]
    problem = _problem(value, _spec(param))
    if problem is None:
        return
    default = param.default
    shown = default if flag and isinstance(default, str) else repr(default)
    fix = (f'fix {flag or name}' if default is None
           else f'pass e.g. {flag or name}={shown}')
    raise UsageError(
        f'{what} hyperparameter {name} {problem}, got {value!r}; {fix}.'
    )


def check_kwargs(what: str, factory, kwargs, field: str | None) -> None:
    """Names, types and ranges of ``kwargs`` against ``factory``'s keywords.

    Args:
      what: the factory in messages, e.g. ``"loss 'dpn'"``.
      factory: the loss or weighting factory.
      kwargs: the hyperparameters for it.
      field: the config field, e.g. ``'loss_kwargs'``, named in the fix
        as a flag; None: the fix names the Python keyword.

    Raises:
      UsageError: an unknown name, or a value that does not fit
        (``check_hyperparameter``).
    """
    params = _hyperparameters(factory)
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        valid = (f'valid: {sorted(params)}' if params
                 else f'it takes none, leave {field or "them"} empty')
        raise UsageError(
            f'{what} has no hyperparameter(s) {unknown}; {valid}.'
        )
    for name, value in kwargs.items():
        flag = f'--config.{field}.{name}' if field else None
        check_hyperparameter(what, factory, name, value, flag)
