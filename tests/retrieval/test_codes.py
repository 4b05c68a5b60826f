"""retrieval.codes: the one packed layout, on the host and on a device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nhl_jax.errors import UsageError
from nhl_jax.retrieval import codes


@pytest.mark.parametrize('width', [1, 7, 8, 13, 64, 70])
def test_pack_jax_equals_pack_of_sign_codes(width):
    rng = np.random.default_rng(width)
    h = rng.standard_normal((5, width)).astype(np.float32)
    h[0, 0] = 0.0  # zero is +1, as sign_codes
    h[1] = np.nan
    packed, nan = jax.jit(codes.pack_jax)(jnp.asarray(h))
    finite = ~np.isnan(h).any(axis=1)
    np.testing.assert_array_equal(
        np.asarray(packed)[finite], codes.pack(codes.sign_codes(h[finite])))
    np.testing.assert_array_equal(np.asarray(nan), ~finite)
    assert packed.dtype == jnp.uint8


def test_pack_is_big_endian_with_zero_padding():
    signs = np.array([[1, -1, -1, -1, -1, -1, -1, 1, 1]])
    np.testing.assert_array_equal(codes.pack(signs), [[0b10000001,
                                                       0b10000000]])


@pytest.mark.parametrize('dtype', [np.uint32, np.uint64])
def test_words_read_the_bytes_in_order_zero_padded(dtype):
    rng = np.random.default_rng(0)
    packed = rng.integers(0, 256, (4, 11), dtype=np.uint8)
    got = codes.words(packed, dtype)
    size = np.dtype(dtype).itemsize
    assert got.shape == (4, -(-11 // size)) and got.dtype == dtype
    back = got.view(np.uint8)  # the same bytes, in order, then zeros
    np.testing.assert_array_equal(back[:, :11], packed)
    assert not back[:, 11:].any()


@pytest.mark.parametrize('call', [
    lambda p: codes.prefix_codes(p, 8.0),
    lambda p: codes.unpack_codes(p, 8.0),
    lambda p: codes.check_packed(p, True),
    lambda p: codes.prefix_codes(p, 0),
])
def test_a_length_that_is_not_an_int_is_one_line(call):
    """prefix_codes(bits=8.0) said 'slice indices must be integers'."""
    packed = codes.pack_codes(np.ones((2, 16)))
    with pytest.raises(UsageError, match='bits must be an int >= 1'):
        call(packed)


def test_traced_codes_say_the_functions_are_host_only():
    with pytest.raises(UsageError, match='sign_codes is host-only'):
        jax.jit(codes.sign_codes)(jnp.ones((2, 8)))
