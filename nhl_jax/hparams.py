"""Checks of a factory's keyword hyperparameters: names and value types.

One checker for the command line (``--config.loss_kwargs.margin=x``) and
the Python API (``losses.get('dpn', margin='x')``): names are checked
against the factory's signature, values against its annotations (or the
default's type), before the factory runs.
"""

import inspect
import numbers
import types
import typing

from nhl_jax.errors import UsageError


def _hyperparameters(factory) -> dict[str, inspect.Parameter]:
    """The keywords with defaults, less those a ``functools.partial`` binds.

    The weighting rules' leading ``bits`` has no default: it is the run's.
    """
    bound = getattr(factory, 'keywords', {})
    return {name: p
            for name, p in inspect.signature(factory).parameters.items()
            if p.default is not p.empty and name not in bound}


def _accepted_types(param: inspect.Parameter) -> tuple[type, ...] | None:
    """The plain types a keyword's annotation names; None: any value."""
    annotation = param.annotation
    if annotation is param.empty:
        # Unannotated: the default's type, unless it is None (e.g. centres,
        # static weights: arrays the factory checks itself).
        return None if param.default is None else (type(param.default),)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = typing.get_args(annotation)
    else:
        annotation = (annotation,)
    accepted = tuple(a for a in annotation if isinstance(a, type))
    return accepted or None


def _type_ok(value, accepted: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # a bool is an int, but not a number here
        return bool in accepted
    # NumPy scalars too; an int where a float is expected (margin=2).
    if float in accepted and isinstance(value, numbers.Real):
        return True
    if int in accepted and isinstance(value, numbers.Integral):
        return True
    return isinstance(value, accepted)


def _type_names(accepted: tuple[type, ...]) -> str:
    names = {bool: 'a bool', int: 'an int', float: 'a number', str: 'a str',
             type(None): 'None'}
    return ' or '.join(names.get(t, t.__name__) for t in accepted)


def check_kwargs(what: str, factory, kwargs, field: str | None) -> None:
    """Names and value types of ``kwargs`` against ``factory``'s keywords.

    Args:
      what: the factory in messages, e.g. ``"loss 'dpn'"``.
      factory: the loss or weighting factory.
      kwargs: the hyperparameters for it.
      field: the config field, e.g. ``'loss_kwargs'``, named in the fix
        as a flag; None: the fix names the Python keyword.

    Raises:
      UsageError: an unknown name, or a value of the wrong type.
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
        param = params[name]
        accepted = _accepted_types(param)
        if accepted is None or _type_ok(value, accepted):
            continue
        flag = f'--config.{field}.{name}' if field else name
        fix = (f'fix {flag}' if param.default is None
               else f'pass e.g. {flag}={param.default!r}')
        raise UsageError(
            f'{what} hyperparameter {name} must be {_type_names(accepted)}, '
            f'got {value!r}; {fix}.'
        )
