"""Programs lowered for a TPU: which 64-bit array types they hold.

A TPU has no float64, and int64 is emulated in 32-bit halves, so the
programs meant to run there are lowered with ``jax.export`` (no TPU
needed) and their StableHLO text is read for 64-bit array types.
Attributes (``padding = dense<...> : tensor<3x2xi64>``, ``array<i64:
...>``) are not arrays and do not count, nor is JAX's own threefry
counter: ``jax.random`` lowers it, on every platform, as a uint64 iota
split at once into two uint32 halves (``iota_2x32_shape``).
"""

import re

import jax

# The element type of a ranked tensor type: tensor<16x8xf32> -> f32.
_ELEMENT = re.compile(r'tensor<(?:[0-9?]+x)*([a-z0-9]+(?:<[a-z0-9]+>)?)>')
# A named attribute holding a dense constant (not an array of the program).
_ATTRIBUTE = re.compile(r'\b\w+ = dense<[^>]*> : tensor<[^>]*>')
_LOCATION = re.compile(r'^(#loc\d+) = (.*)$', re.MULTILINE)
_USE = re.compile(r'loc\((#loc\d+)\)\s*$')
WIDE = frozenset({'f64', 'i64', 'ui64', 'complex<f64>'})
JAX_INTERNAL = ('iota_2x32_shape',)


def tpu_module(fn, *args, **kwargs) -> str:
    """The StableHLO text of jitted ``fn`` lowered for a TPU.

    Args:
      fn: a ``jax.jit`` function.
      *args, **kwargs: its arguments, concrete or ``jax.ShapeDtypeStruct``.
    """
    exported = jax.export.export(fn, platforms=('tpu',))(*args, **kwargs)
    return exported.mlir_module()


def wide_types(module: str) -> set[str]:
    """The 64-bit element types of the arrays of a StableHLO module.

    Args:
      module: ``tpu_module``'s text (with its debug locations).

    Returns:
      The types, outside ``JAX_INTERNAL`` locations; empty if none.
    """
    names = dict(_LOCATION.findall(module))
    found = set()
    for line in module.splitlines():
        types = set(_ELEMENT.findall(_ATTRIBUTE.sub('', line))) & WIDE
        use = _USE.search(line)
        where = names.get(use.group(1), '') if use else ''
        if not any(name in where for name in JAX_INTERNAL):
            found |= types
    return found
