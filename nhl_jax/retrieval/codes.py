"""Binary codes: signs, packed bits, nested prefixes and the codes file.

Every packed code in nhl_jax has one layout. ±1 codes [N, K] become bits,
+1 -> 1 and -1 -> 0, packed eight to a byte by ``numpy.packbits``
(big-endian within a byte: code bit 0 is the most significant bit of byte
0), so one code takes ceil(K / 8) bytes and the bits past K are 0
(``pack``; ``pack_jax`` is the same on a device). The Hamming engines read
those bytes as machine words (``words``).

**Nested codes.** NHL's code of length b is the first b bits of the longest
code, so one export of the longest codes serves every length:
``prefix_codes(packed, b)`` keeps the first ceil(b / 8) bytes and clears
the bits past b in the last one. When b % 8 == 0 (8, 16, 32, 64, ...) it is
a plain byte slice, a view that copies nothing.

**The codes file.** A ``CodeSet`` (packed codes of one split with labels
and ids) is written by ``save_codes`` and read by ``load_codes``. It may
say where its codes came from (``source``: the run's config digest and the
dataset, ``code_source``), so that the queries and the database of a
search are checked to be codes of one run and one dataset
(``check_compatible``). The functions here run on the host (NumPy); under
``jax.jit`` they say so in one line (``pack_jax`` packs on a device).
"""

import hashlib
import json
from collections.abc import Mapping
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from nhl_jax import checks, runlog
from nhl_jax.errors import UsageError
from nhl_jax.retrieval._inputs import host_only

# Which parameters encoded a CodeSet: the final ones or each length's best.
PARAMS = ('last', 'best')


@host_only
def sign_codes(h) -> np.ndarray:
    """Binarises continuous hash outputs to ±1 codes.

    Zero maps to +1: ``torch.sign(0) = 0`` would be a third code value that
    is neither bit and shifts every Hamming distance by 1/2.

    Args:
      h: [N, K] continuous outputs (NumPy or JAX array, any real dtype).

    Returns:
      [N, K] int8 array of -1 and +1, the same shape as ``h``.

    Raises:
      ValueError: if ``h`` contains NaN.
    """
    h = np.asarray(h)
    # h != h finds NaN in every float dtype, bfloat16 from JAX included.
    if np.any(h != h):  # noqa: PLR0124
        raise ValueError('h contains NaN, so it has no sign; check the model '
                         'outputs (a diverged training run?) before binarising')
    return np.where(h >= 0, 1, -1).astype(np.int8)


def pack(codes) -> np.ndarray:
    """Packs ±1 codes into bits, +1 -> 1 (callers check the values).

    Args:
      codes: [N, K] codes of -1 and +1 (any real dtype).

    Returns:
      [N, ceil(K / 8)] uint8, big-endian within a byte (code bit 0 is the
      high bit of byte 0); the bits past K are 0.
    """
    return np.packbits(np.asarray(codes) > 0, axis=1)


def pack_jax(h):
    """``pack(sign_codes(h))`` on a device, with the rows that hold NaN.

    h >= 0 maps 0 to +1, as ``sign_codes``.

    Args:
      h: [B, K] continuous outputs (a JAX array).

    Returns:
      ([B, ceil(K / 8)] uint8 bits in ``pack``'s layout, [B] bool: the row
      holds NaN and has no sign).
    """
    bits = jnp.pad(h >= 0, ((0, 0), (0, -h.shape[1] % 8)))
    bits = bits.reshape(h.shape[0], -1, 8).astype(jnp.uint8)
    weights = (1 << jnp.arange(7, -1, -1)).astype(jnp.uint8)  # big-endian
    return (jnp.sum(bits * weights[None, None, :], axis=2, dtype=jnp.uint8),
            jnp.any(jnp.isnan(h), axis=1))


def words(packed, dtype=np.uint64) -> np.ndarray:
    """Packed codes as machine words, so XOR and popcount go wider.

    Args:
      packed: [N, B] uint8 codes (``pack``).
      dtype: the unsigned word type (uint64 on the host, uint32 in JAX).

    Returns:
      [N, W] words of ``dtype``, W = ceil(B / word bytes), zero padded.
    """
    packed = np.asarray(packed)
    size = np.dtype(dtype).itemsize
    padded = np.pad(packed, ((0, 0), (0, -packed.shape[1] % size)))
    return np.ascontiguousarray(padded).view(dtype)


def _num_bytes(bits: int) -> int:
    return -(-bits // 8)


def _check_length(bits) -> None:
    """A code length is an int >= 1 (8.0 would not slice)."""
    if not (checks.is_int(bits) and bits >= 1):
        raise UsageError(f'bits must be an int >= 1 (a code length), got '
                         f'{bits!r}')


@host_only
def pack_codes(codes) -> np.ndarray:
    """Packs ±1 codes into bits (+1 -> 1, -1 -> 0).

    Args:
      codes: [N, K] codes of -1 and +1 (e.g. ``sign_codes(h)``).

    Returns:
      [N, ceil(K / 8)] uint8; trailing bits past K are 0.

    Raises:
      ValueError: if ``codes`` is not a 2-D array of ±1.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] == 0:
        raise ValueError(f'codes must be a [N, K] array with K >= 1, got '
                         f'shape {codes.shape}; for one code use codes[None]')
    if not np.all((codes == 1) | (codes == -1)):
        raise ValueError('codes must contain only -1 and +1; binarise '
                         'outputs with nhl_jax.retrieval.sign_codes(h) first')
    return pack(codes)


@host_only
def unpack_codes(packed, bits: int) -> np.ndarray:
    """Inverse of ``pack_codes``: [N, ceil(K / 8)] uint8 -> [N, K] int8 ±1."""
    packed = check_packed(packed, bits)
    unpacked = np.unpackbits(packed, axis=1, count=bits)
    return (2 * unpacked.astype(np.int8) - 1).astype(np.int8)


@host_only
def prefix_codes(packed, bits: int) -> np.ndarray:
    """The first ``bits`` bits of packed codes: a shorter nested code.

    Equal to ``pack_codes(codes[:, :bits])``. When ``bits % 8 == 0`` this
    is a byte slice (a view); otherwise the last kept byte is copied with
    its bits past ``bits`` cleared.

    Args:
      packed: [N, B] uint8 packed codes of any length >= ``bits``.
      bits: b, the prefix length, 1 <= b <= 8 B.

    Returns:
      [N, ceil(b / 8)] uint8.
    """
    _check_length(bits)
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype != np.uint8:
        raise ValueError(f'packed codes must be a [N, B] uint8 array, got '
                         f'{packed.dtype} of shape {packed.shape}')
    if not 1 <= bits <= 8 * packed.shape[1]:
        raise ValueError(f'cannot cut a {bits}-bit prefix from '
                         f'{8 * packed.shape[1]}-bit packed codes; choose '
                         f'1 <= bits <= {8 * packed.shape[1]}')
    head = packed[:, :_num_bytes(bits)]
    if bits % 8 == 0:
        return head
    head = head.copy()
    head[:, -1] &= np.uint8((0xFF << (8 - bits % 8)) & 0xFF)
    return head


@host_only
def check_packed(packed, bits: int, name: str = 'packed') -> np.ndarray:
    """Checks [N, ceil(bits / 8)] uint8 codes with zero padding bits."""
    _check_length(bits)
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise ValueError(f'{name} must be a [N, B] uint8 array of packed '
                         f'codes (pack_codes), got {packed.dtype} of shape '
                         f'{packed.shape}')
    if packed.shape[1] != _num_bytes(bits):
        raise ValueError(f'{name} has {packed.shape[1]} bytes per code but '
                         f'{bits}-bit codes take {_num_bytes(bits)}; cut them '
                         f'with prefix_codes(packed, {bits})')
    if bits % 8 and np.any(packed[:, -1] & ((1 << (8 - bits % 8)) - 1)):
        raise ValueError(f'{name} has bits set past bit {bits}; cut codes '
                         f'with prefix_codes(packed, {bits}), not a slice')
    return packed


class CodeSet(NamedTuple):
    """Packed codes of one split, with what is needed to use them.

    Attributes:
      packed: stored length b -> [N, ceil(b / 8)] uint8 codes. Nested
        codes store only the longest length.
      lengths: the trained code lengths, sorted.
      labels: [N, C] float32 multi-hot labels.
      ids: [N] int64 row of each item in its source dataset.
      params: 'last' (the final parameters) or 'best' (each length's best
        parameters, as results.json's ``map`` reports).
      nested: True when every length is a prefix of the one stored code
        (one NHL model: ``params='last'``).
      source: where the codes came from (``code_source``: ``'run'``, a
        digest of the run's config, and ``'dataset'``), or None: not known
        (a file written before codes carried it).
    """

    packed: dict[int, np.ndarray]
    lengths: tuple[int, ...]
    labels: np.ndarray  # [N, C] float32
    ids: np.ndarray  # [N] int64
    params: str
    nested: bool
    source: Mapping[str, str] | None = None


def code_source(config: Mapping, dataset: str) -> dict[str, str]:
    """Where codes come from: a digest of the run's config, and the dataset.

    Two runs of one config train the same model, so the config names the
    run; a copied run directory keeps it.

    Args:
      config: the run's config as a JSON-able mapping (its config.json).
      dataset: the dataset whose images were encoded.

    Returns:
      ``{'run': 16 hex digits, 'dataset': dataset}`` (``CodeSet.source``).
    """
    text = json.dumps(config, sort_keys=True, default=str)
    return {'run': hashlib.sha256(text.encode()).hexdigest()[:16],
            'dataset': str(dataset)}


def check_source(source: Mapping | None, database: Mapping | None,
                 name: str) -> None:
    """Raises if two sources differ in a field both of them name.

    Args:
      source: the queries' source (``code_source``; some fields may be
        left out, e.g. the dataset of query images), or None.
      database: the database's ``CodeSet.source``, or None.
      name: the queries in the message.

    Raises:
      UsageError: naming both sources and the fix.
    """
    if not source or not database:
        return  # a file from before codes carried their source
    differ = [k for k in ('run', 'dataset')
              if k in source and k in database and source[k] != database[k]]
    if differ:
        raise UsageError(
            f'{name} come from another {" and ".join(differ)} than the '
            f'database ({_describe(source)}; database: '
            f'{_describe(database)}); search codes of one run and dataset '
            "(nhl-jax encode the queries with the database's run).")


def _describe(source: Mapping) -> str:
    return ', '.join(f'{k} {source[k]}' for k in ('run', 'dataset')
                     if k in source)


def check_compatible(query: CodeSet, database: CodeSet, name: str) -> None:
    """Raises unless ``query`` can be searched in ``database``.

    Both must be codes of the same trained lengths and label space and,
    where both files say, of the same run and dataset (``check_source``);
    codes of another run, cut to the database's length, would be compared
    without an error but mean nothing.

    Args:
      query: the query codes.
      database: the codes searched.
      name: the queries in the message, e.g. their path.

    Raises:
      UsageError: naming what differs and the fix.
    """
    if tuple(query.lengths) != tuple(database.lengths):
        raise UsageError(
            f'{name} are codes of lengths {list(query.lengths)}, the '
            f'database of {list(database.lengths)}: another run; encode the '
            "queries with the database's run (nhl-jax encode).")
    classes = (np.shape(query.labels)[1], np.shape(database.labels)[1])
    if classes[0] != classes[1]:
        raise UsageError(
            f'{name} have {classes[0]} classes, the database {classes[1]}: '
            "another dataset; encode the queries of the database's dataset.")
    check_source(query.source, database.source, name)


def codes_of_length(code_set: CodeSet, bits: int) -> np.ndarray:
    """[N, ceil(bits / 8)] packed codes of one length from a ``CodeSet``.

    Nested sets cut any length up to the longest (``prefix_codes``);
    lengths between the trained ones are valid prefixes of the nested
    layer, but only the trained ones were optimised.
    """
    _check_length(bits)
    if bits in code_set.packed:
        return code_set.packed[bits]
    longest = max(code_set.packed)
    if code_set.nested and 1 <= bits <= longest:
        return prefix_codes(code_set.packed[longest], bits)
    valid = (f'1..{longest}' if code_set.nested
             else str(sorted(code_set.packed)))
    raise ValueError(f'no {bits}-bit codes in this set ({code_set.params} '
                     f'params); choose bits in {valid}')


def save_codes(path: str, code_set: CodeSet) -> None:
    """Writes a ``CodeSet`` to an .npz, atomically (old file or new file).

    Keys: ``packed_<b>`` per stored length, ``bits`` (stored lengths),
    ``lengths``, ``labels``, ``ids``, ``params``, ``nested`` and, when
    known, ``source`` (JSON text).

    Raises:
      UsageError: the folder of ``path`` does not exist.
      ValueError: a ``CodeSet`` that does not hold together.
    """
    arrays = _code_set_arrays(code_set)
    checks.existing_folder(path, 'codes file')
    with runlog.atomic_file(path, 'wb', suffix='.npz') as f:
        np.savez(f, **arrays)


def _code_set_arrays(code_set: CodeSet) -> dict[str, np.ndarray]:
    """Validates a ``CodeSet`` and lays it out as named arrays."""
    if code_set.nested and len(code_set.packed) != 1:
        raise ValueError(f'nested codes store one (the longest) length, got '
                         f'{sorted(code_set.packed)}')
    if code_set.params not in PARAMS:
        raise ValueError(f'params must be one of {PARAMS}, got '
                         f'{code_set.params!r}')
    count = len(code_set.ids)
    arrays = {}
    for b, packed in sorted(code_set.packed.items()):
        packed = check_packed(packed, b, f'{b}-bit codes')
        if len(packed) != count:
            raise ValueError(f'{b}-bit codes have {len(packed)} rows but '
                             f'there are {count} ids; one code per item')
        arrays[f'packed_{b}'] = packed
    labels = np.asarray(code_set.labels, np.float32)
    if labels.ndim != 2 or len(labels) != count:
        raise ValueError(f'labels must be [N, C] with N={count}, got shape '
                         f'{labels.shape}')
    if code_set.source is not None:
        arrays['source'] = np.array(json.dumps(dict(code_set.source),
                                               sort_keys=True))
    return dict(arrays, bits=np.array(sorted(code_set.packed), np.int64),
                lengths=np.array(code_set.lengths, np.int64), labels=labels,
                ids=np.asarray(code_set.ids, np.int64),
                params=np.array(code_set.params),
                nested=np.array(bool(code_set.nested)))


# What a file given as codes must be, in messages.
_CODES_FILE = 'a codes file (an .npz written by nhl-jax encode)'
# The arrays every codes file has ('source' only when known).
_KEYS = ('bits', 'lengths', 'labels', 'ids', 'params', 'nested')


def load_codes(path: str) -> CodeSet:
    """Reads a ``CodeSet`` written by ``save_codes`` (with or without its
    ``source``: older files load too).

    Raises:
      UsageError: ``path`` does not exist or is not a codes file.
    """
    with checks.load_npz(path, _CODES_FILE) as f:
        missing = [k for k in _KEYS if k not in f.files]
        stored = [] if missing else [int(b) for b in f['bits']]
        missing += [f'packed_{b}' for b in stored
                    if f'packed_{b}' not in f.files]
        if missing:
            raise UsageError(f'{path!r} is not {_CODES_FILE}: it has no '
                             f'{missing[0]!r} array')
        return CodeSet(
            packed={b: check_packed(f[f'packed_{b}'], b) for b in stored},
            lengths=tuple(int(b) for b in f['lengths']),
            labels=f['labels'], ids=f['ids'], params=str(f['params']),
            nested=bool(f['nested']),
            source=(json.loads(str(f['source'])) if 'source' in f.files
                    else None))


def read_query_codes(path: str, bits: int, *,
                     database: CodeSet | None = None):
    """Query codes of length ``bits`` from a file.

    Args:
      path: a codes file (.npz from ``save_codes``), or an .npy holding
        [Q, K] ±1 codes (any signed dtype) or [Q, B] packed uint8 bytes
        (1-D: one code). Without ``database``, longer codes are cut to
        their ``bits`` prefix.
      bits: the code length to search with.
      database: the codes the queries will be searched in. Given, a codes
        file must fit it (``check_compatible``: the same run and dataset),
        and an .npy must hold ``bits``-bit codes, or the longest length's
        of a nested database: longer codes cut short are another run's.

    Returns:
      ``(packed [Q, ceil(bits / 8)] uint8, ids [Q] int64 or None)``.

    Raises:
      UsageError: a file that is not codes, or codes that do not fit.
    """
    _check_length(bits)
    if path.endswith('.npz'):
        code_set = load_codes(path)
        if database is not None:
            check_compatible(code_set, database, f'query codes {path!r}')
        return codes_of_length(code_set, bits), code_set.ids
    codes = checks.load_npy(path, '[Q, K] ±1 codes or [Q, B] packed bytes')
    codes = codes[None] if codes.ndim == 1 else codes
    width = (8 * codes.shape[-1] if codes.dtype == np.uint8
             else codes.shape[-1]) if codes.ndim else 0
    if codes.ndim != 2 or width < bits:
        raise UsageError(f'{path} holds {codes.dtype} codes of shape '
                         f'{codes.shape}, not [Q, >= {bits}-bit] codes; '
                         'save ±1 codes or packed uint8 bytes')
    if database is not None:
        _check_width(path, width, codes.dtype == np.uint8, bits, database)
    if codes.dtype == np.uint8:
        return prefix_codes(codes, bits), None
    return pack_codes(codes[:, :bits]), None


def _check_width(path: str, width: int, packed: bool, bits: int,
                 database: CodeSet) -> None:
    """An .npy's codes must be ``bits`` wide, or the longest of a nested
    database (whose every length is a prefix)."""
    lengths = {bits, max(database.lengths)} if database.nested else {bits}
    allowed = sorted({8 * _num_bytes(b) if packed else b for b in lengths})
    if width not in allowed:
        raise UsageError(
            f'{path} holds {width}-bit codes, but {bits}-bit search of this '
            f'database takes codes of {" or ".join(map(str, allowed))} bits; '
            "codes of another width are another run's.")

