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
and ids) is written by ``save_codes`` and read by ``load_codes``.
"""

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from nhl_jax import runlog

# Which parameters encoded a CodeSet: the final ones or each length's best.
PARAMS = ('last', 'best')


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


def unpack_codes(packed, bits: int) -> np.ndarray:
    """Inverse of ``pack_codes``: [N, ceil(K / 8)] uint8 -> [N, K] int8 ±1."""
    packed = check_packed(packed, bits)
    unpacked = np.unpackbits(packed, axis=1, count=bits)
    return (2 * unpacked.astype(np.int8) - 1).astype(np.int8)


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


def check_packed(packed, bits: int, name: str = 'packed') -> np.ndarray:
    """Checks [N, ceil(bits / 8)] uint8 codes with zero padding bits."""
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
    """

    packed: dict[int, np.ndarray]
    lengths: tuple[int, ...]
    labels: np.ndarray  # [N, C] float32
    ids: np.ndarray  # [N] int64
    params: str
    nested: bool


def codes_of_length(code_set: CodeSet, bits: int) -> np.ndarray:
    """[N, ceil(bits / 8)] packed codes of one length from a ``CodeSet``.

    Nested sets cut any length up to the longest (``prefix_codes``);
    lengths between the trained ones are valid prefixes of the nested
    layer, but only the trained ones were optimised.
    """
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
    ``lengths``, ``labels``, ``ids``, ``params`` and ``nested``.
    """
    arrays = _code_set_arrays(code_set)
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
    return dict(arrays, bits=np.array(sorted(code_set.packed), np.int64),
                lengths=np.array(code_set.lengths, np.int64), labels=labels,
                ids=np.asarray(code_set.ids, np.int64),
                params=np.array(code_set.params),
                nested=np.array(bool(code_set.nested)))


def load_codes(path: str) -> CodeSet:
    """Reads a ``CodeSet`` written by ``save_codes``."""
    with np.load(path, allow_pickle=False) as f:
        try:
            stored = [int(b) for b in f['bits']]
            return CodeSet(
                packed={b: check_packed(f[f'packed_{b}'], b) for b in stored},
                lengths=tuple(int(b) for b in f['lengths']),
                labels=f['labels'], ids=f['ids'], params=str(f['params']),
                nested=bool(f['nested']))
        except KeyError as e:
            raise ValueError(f'{path} is not a codes file (no {e} array); '
                             'write one with nhl-jax encode') from None


def read_query_codes(path: str, bits: int):
    """Query codes of length ``bits`` from a file.

    Args:
      path: a codes file (.npz from ``save_codes``), or an .npy holding
        [Q, K] ±1 codes (any signed dtype) or [Q, B] packed uint8 bytes
        (1-D: one code). Longer codes are cut to their ``bits`` prefix.
      bits: the code length to search with.

    Returns:
      ``(packed [Q, ceil(bits / 8)] uint8, ids [Q] int64 or None)``.
    """
    if path.endswith('.npz'):
        code_set = load_codes(path)
        return codes_of_length(code_set, bits), code_set.ids
    codes = np.load(path, allow_pickle=False)
    codes = codes[None] if codes.ndim == 1 else codes
    width = 8 * codes.shape[-1] if codes.dtype == np.uint8 else codes.shape[-1]
    if codes.ndim != 2 or width < bits:
        raise ValueError(f'{path} holds {codes.dtype} codes of shape '
                         f'{codes.shape}, not [Q, >= {bits}-bit] codes; '
                         'save ±1 codes or packed uint8 bytes')
    if codes.dtype == np.uint8:
        return prefix_codes(codes, bits), None
    return pack_codes(codes[:, :bits]), None
