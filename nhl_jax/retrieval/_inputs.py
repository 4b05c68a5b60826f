"""Validated retrieval inputs and options, shared by every ranking backend.

``check_inputs`` turns ±1 codes and 0/1 labels into ``Inputs``: float32
codes and the cheapest operands of the relevance rel(q, b) = 1[y_q . y_b >
0] (class ids when every row is one-hot, else a multi-hot matmul). A
``Plan`` says which per-query statistics a backend computes. Every check
raises a one-line ``ValueError`` that names the fix.
"""

import functools
from typing import NamedTuple

import jax
import numpy as np

from nhl_jax.checks import is_int
from nhl_jax.errors import UsageError

ZERO_RELEVANT_POLICIES = ('zero', 'skip')
TIE_POLICIES = ('stable', 'random', 'expected')
BACKENDS = ('auto', 'numpy', 'jax')


def host_only(fn):
    """``fn`` refusing traced arguments in one line.

    The retrieval functions compute in NumPy on the host, so under
    ``jax.jit`` (or ``vmap``, ``grad``) NumPy would meet a tracer and fail
    deep inside with a ``TracerArrayConversionError``; this says why at
    the entry instead.
    """
    @functools.wraps(fn)
    def checked(*args, **kwargs):
        if any(isinstance(a, jax.core.Tracer)
               for a in (*args, *kwargs.values())):
            raise UsageError(
                f'{fn.__name__} is host-only (NumPy) and cannot be traced: '
                'call it outside jax.jit / vmap / grad, on concrete arrays '
                '(e.g. jax.device_get(x)).')
        return fn(*args, **kwargs)

    return checked


class Plan(NamedTuple):
    """What ``query_stats`` computes for every query.

    Attributes:
      map_k: cutoffs of AP, each in 1..N.
      count_k: cutoffs of hit counts (precision@k, recall@k), in 1..N.
      radii: counts within every radius 0..K.
      relevant: the number R of relevant items.
    """

    map_k: tuple[int, ...] = ()
    count_k: tuple[int, ...] = ()
    radii: bool = False
    relevant: bool = False

class Inputs(NamedTuple):
    """Validated retrieval inputs (see ``check_inputs``)."""
    q_codes: np.ndarray  # [Q, K] float32 ±1
    db_codes: np.ndarray  # [N, K] float32 ±1
    q_side: np.ndarray  # [Q] class ids or [Q, C] float32 multi-hot
    db_side: np.ndarray  # [N] class ids or [C, N] float32 multi-hot


def check_inputs(q_codes, q_labels, db_codes, db_labels):
    """Checks codes and labels; returns them as ``Inputs``."""
    q = as_codes(q_codes, 'q_codes')
    db = as_codes(db_codes, 'db_codes')
    check_same_bits(q, db)
    q_y = as_labels(q_labels, 'q_labels', 'q_codes', len(q))
    db_y = as_labels(db_labels, 'db_labels', 'db_codes', len(db))
    if q_y.shape[1] != db_y.shape[1]:
        raise ValueError(
            f'q_labels has C={q_y.shape[1]} classes but db_labels has '
            f'C={db_y.shape[1]}; use the same label space for both')
    return Inputs(q, db, *relevance_operands(q_y, db_y))

def relevance_operands(q_y, db_y):
    """Cheapest operands for rel = 1[y_q . y_b > 0].

    Args:
      q_y: [Q, C] 0/1 labels.
      db_y: [N, C] 0/1 labels.

    Returns:
      ([Q], [N]) class ids when every row is one-hot (an id comparison is
      faster than the matmul), else ([Q, C], [C, N]) float32
      multi-hot operands of a matmul (exact for 0/1 values).
    """
    if np.all(q_y.sum(axis=1) == 1) and np.all(db_y.sum(axis=1) == 1):
        ids = np.min_scalar_type(q_y.shape[1] - 1)
        return q_y.argmax(axis=1).astype(ids), db_y.argmax(axis=1).astype(ids)
    return (q_y.astype(np.float32),
            np.ascontiguousarray(db_y.T, dtype=np.float32))

def check_run_options(chunk_size, num_threads, devices=None):
    if chunk_size is not None:
        check_positive_int(chunk_size, 'chunk_size')
    if num_threads is not None:
        check_positive_int(num_threads, 'num_threads')
    if devices is not None:
        check_devices(devices)


def check_devices(devices):
    """Checks the JAX backend's devices: distinct ones of this process."""
    import jax  # only here: the NumPy path never starts JAX's runtime
    ok = (isinstance(devices, (list, tuple)) and len(devices) > 0
          and all(isinstance(d, jax.Device) for d in devices)
          and len(set(devices)) == len(devices)
          and all(d.process_index == jax.process_index() for d in devices))
    if not ok:
        raise ValueError(f'devices must be a non-empty list of distinct '
                         f'devices of this process, got {devices!r}; pass '
                         f'e.g. jax.local_devices(), or None for all of them')

def as_codes(codes, name):
    """Checks [N, K] ±1 codes and returns them as float32."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f'{name} must be a 2-D [N, K] array of ±1 codes, got '
                         f'shape {codes.shape}; for one code use {name}[None]')
    if codes.shape[0] == 0 or codes.shape[1] == 0:
        raise ValueError(f'{name} is empty (shape {codes.shape}); pass at '
                         f'least one code of at least one bit')
    if not is_real(codes.dtype):
        raise ValueError(f'{name} must be real ±1 codes, got dtype '
                         f'{codes.dtype}; binarise outputs with sign_codes(h) '
                         f'and map bool bits with 2 * bits - 1')
    codes = codes.astype(np.float32)
    if not np.all(np.abs(codes) == 1):
        raise ValueError(f'{name} must contain only -1 and +1; binarise '
                         f'continuous outputs with sign_codes(h), and map '
                         f'0/1 bits with 2 * bits - 1')
    return codes


def is_real(dtype):
    """Integer or float, including JAX's bfloat16 (not a NumPy float)."""
    return dtype.kind in 'iuf' or dtype.name == 'bfloat16'


def check_same_bits(q, db):
    if q.shape[1] != db.shape[1]:
        raise ValueError(f'q_codes has K={q.shape[1]} bits but db_codes has '
                         f'K={db.shape[1]}; encode both with the same length')


def as_labels(labels, name, codes_name, count):
    """Checks [count, C] 0/1 labels and returns them as an array."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f'{name} must be a 2-D multi-hot [N, C] array, got '
                         f'shape {labels.shape}; one-hot encode class ids, '
                         f'e.g. np.eye(C)[ids]')
    if labels.shape[0] != count:
        raise ValueError(f'{name} has {labels.shape[0]} rows but '
                         f'{codes_name} has {count}; pass one label row per '
                         f'code')
    if not (is_real(labels.dtype) or labels.dtype == np.bool_):
        raise ValueError(f'{name} must be real or bool multi-hot labels, '
                         f'got dtype {labels.dtype}')
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError(f'{name} must be multi-hot (only 0 and 1); '
                         f'binarise soft labels first, e.g. labels > 0')
    return labels


def check_top_k(top_k):
    if top_k is not None and not (is_int(top_k) and top_k > 0):
        raise ValueError(f'top_k must be a positive int or None (all N '
                         f'items), got {top_k!r}; for mAP@all pass None, '
                         f'not -1')


def check_ties(ties, seed):
    if ties not in TIE_POLICIES:
        raise ValueError(f'ties must be one of {TIE_POLICIES}, got {ties!r}')
    if not (is_int(seed) and seed >= 0):
        raise ValueError(f'seed must be a non-negative int, got {seed!r}')


def check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got '
                         f'{backend!r}')


def check_zero_relevant(zero_relevant):
    if zero_relevant not in ZERO_RELEVANT_POLICIES:
        raise ValueError(f'zero_relevant must be one of '
                         f'{ZERO_RELEVANT_POLICIES}, got {zero_relevant!r}')


def check_positive_int(value, name):
    if not (is_int(value) and value > 0):
        raise ValueError(f'{name} must be a positive int, got {value!r}')
