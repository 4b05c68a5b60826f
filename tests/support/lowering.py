"""Programs lowered for a TPU: which array types they hold.

A TPU has no float64, and int64 is emulated in 32-bit halves, so the
programs meant to run there are lowered with ``jax.export`` (no TPU
needed) and their StableHLO text is read for 64-bit array types.
Attributes such as ``array<i64: 0, 1>`` are not arrays and do not count.
"""

import re

import jax

# The element type of a ranked tensor type: tensor<16x8xf32> -> f32.
_ELEMENT = re.compile(r'tensor<(?:[0-9?]+x)*([a-z0-9]+(?:<[a-z0-9]+>)?)>')
WIDE = frozenset({'f64', 'i64', 'ui64', 'complex<f64>'})


def tpu_module(fn, *args, **kwargs) -> str:
    """The StableHLO text of jitted ``fn`` lowered for a TPU.

    Args:
      fn: a ``jax.jit`` function.
      *args, **kwargs: its arguments, concrete or ``jax.ShapeDtypeStruct``.
    """
    exported = jax.export.export(fn, platforms=('tpu',))(*args, **kwargs)
    return exported.mlir_module()


def wide_types(module: str) -> set[str]:
    """The 64-bit element types of the arrays in a StableHLO module."""
    return set(_ELEMENT.findall(module)) & WIDE
