"""Retrieval statistics in JAX, spread over the local devices.

The JAX backend of ``ranking`` (and so of ``metrics``)
(``backend='jax'``, and 'auto' on a GPU or TPU): the same per-query
statistics as their NumPy path (``ranking.query_stats``), with the same
tie policies. One jitted program per chunk of queries does the O(B N)
work in integers only (no float64 or int64, which a TPU lacks):

- distances: popcounts of the XOR of packed uint32 words;
- relevance: a comparison of class ids, or a 0/1 matmul for multi-hot
  labels (exact: float32 sums of at most C < 2^24 ones);
- ranking, for 'stable' and 'random' ties: the unique int32 keys
  ``dist << s | position << 1 | relevant`` (``hamming``'s layout),
  whose order is the stable ranking; a top k of at most N / 2 by
  ``lax.top_k``, a longer one by a full sort. Keys wider than 32 bits
  become a two-operand sort (distance, then position). Random ties rank
  the permuted database, so positions are its order. The relevance of
  the top k comes back packed, 32 ranks to a uint32 word;
- histograms of items and relevant items over distances 0..K (radius
  metrics, and the closed form of 'expected' ties, which needs no
  ranking).

The host then finishes each chunk in float64 with the NumPy path's own
functions (``stats.ranked_stats``, ``stats.group_stats``), from the
[B, k / 32] words or [B, K + 1] histograms, so every statistic, AP
included, equals NumPy's exactly. Chunks hold about ``PAIRS_PER_CHUNK``
(query, item) pairs: some 24 bytes each (distances, keys, their sort),
about 0.4 GB whatever N is; one chunk runs while the host finishes the
one before.

Devices: each chunk's queries are split over ``devices`` (every local
device by default): its rows are sharded along a one-axis mesh and the
database is replicated, so the same row-wise program runs on every
device, with no collective, and the host gets the same integers as from
one device. A chunk then holds ``PAIRS_PER_CHUNK`` pairs per device.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nhl_jax.retrieval import codes, hamming
from nhl_jax.retrieval._inputs import Plan
from nhl_jax.retrieval.stats import group_stats, ranked_stats
from nhl_jax.retrieval.ties import harmonic_numbers

PAIRS_PER_CHUNK = 1 << 24


def default_chunk_size(num_queries: int, num_items: int) -> int:
    """Default queries per chunk: a power of two near 2^24 / N pairs.

    A power of two (at most the next one above Q) bounds the number of
    compiled chunk shapes, since the last chunk is padded.
    """
    cap = max(1, PAIRS_PER_CHUNK // num_items)
    size = 1 << (min(cap, num_queries) - 1).bit_length()
    return min(size, 1 << (cap.bit_length() - 1))


class _Config(NamedTuple):
    """The static shape of one chunk's program (hashable, for ``jit``)."""
    num_bits: int
    num_items: int
    plan: Plan
    expected: bool


def query_stats(inputs, plan: Plan, *, expected: bool,
                chunk_size: int | None = None, devices=None) -> dict:
    """``ranking.query_stats`` of distinct queries, in JAX.

    Args:
      inputs: ``_inputs.Inputs`` (database already in tie order).
      plan: what to compute (``Plan``).
      expected: the closed form of 'expected' ties instead of a ranking.
      chunk_size: queries per program, rounded up to a multiple of the
        devices; None: ``default_chunk_size`` per device.
      devices: the devices to split each chunk's queries over; None:
        ``jax.local_devices()``.

    Returns:
      The statistics as NumPy arrays, keyed as ``ranking.query_stats``.
    """
    devices = tuple(jax.local_devices() if devices is None else devices)
    num_queries = len(inputs.q_codes)
    num_items, num_bits = inputs.db_codes.shape
    size = _chunk_rows(chunk_size, num_queries, num_items, len(devices))
    config = _Config(num_bits, num_items, plan, expected)
    harmonic = harmonic_numbers(num_items) if expected else None
    mesh = Mesh(np.array(devices), ('queries',))
    rows, everywhere = NamedSharding(mesh, P('queries')), NamedSharding(
        mesh, P())
    db = jax.device_put((_words(inputs.db_codes), inputs.db_side),
                        everywhere)
    q_words, q_side = _words(inputs.q_codes), inputs.q_side
    chunks, pending = [], None
    for start in range(0, num_queries, size):
        index = np.minimum(np.arange(start, start + size),
                           num_queries - 1)  # pad with the last query
        running = _chunk_stats(
            *jax.device_put((q_words[index], q_side[index]), rows), *db,
            config=config)
        if pending is not None:  # while ``running`` runs on the devices
            chunks.append(_finish(pending, plan, harmonic))
        pending = running
    chunks.append(_finish(pending, plan, harmonic))
    stats = {name: np.concatenate([c[name] for c in chunks], axis=-1)[
        ..., :num_queries] for name in chunks[0]}
    return {name: value.astype(np.int64) if value.dtype.kind in 'iu'
            else value for name, value in stats.items()}


def _chunk_rows(chunk_size, num_queries, num_items, num_devices) -> int:
    """Queries per chunk: a multiple of the devices, each device's share
    ``default_chunk_size`` unless ``chunk_size`` is given."""
    if chunk_size is None:
        return num_devices * default_chunk_size(
            -(-num_queries // num_devices), num_items)
    return -(-chunk_size // num_devices) * num_devices


def _finish(device_stats, plan, harmonic) -> dict:
    """A chunk's float64 statistics, on the host, from its integers."""
    device_stats = jax.device_get(device_stats)
    stats = {}
    if 'flags' in device_stats:
        width = max((*plan.map_k, *plan.count_k))
        stats.update(ranked_stats(_unpack(device_stats['flags'], width),
                                  plan))
    if 'counts' in device_stats:
        stats.update(group_stats(device_stats['counts'],
                                 device_stats['hits'], plan, harmonic))
    return stats


def _words(signs) -> np.ndarray:
    """[N, ceil(K / 32)] uint32 words of ±1 codes [N, K]."""
    return codes.words(codes.pack(signs), np.uint32)


@functools.partial(jax.jit, static_argnames='config')
def _chunk_stats(q_words, q_side, db_words, db_side, *, config):
    """The integer statistics of one chunk of B queries.

    Returns:
      {'flags': [B, ceil(k / 32)] uint32, the relevance of the top k
      packed by ``_pack``} when there is a ranking; {'counts', 'hits':
      [B, K + 1] int32} when histograms are needed.
    """
    plan = config.plan
    dist = _distances(q_words, db_words)  # [B, N] int32
    rel = _relevance(q_side, db_side)  # [B, N] bool
    stats = {}
    if plan.radii or plan.relevant or config.expected:
        stats['counts'], stats['hits'] = _histograms(dist, rel,
                                                     config.num_bits)
    if not config.expected and (plan.map_k or plan.count_k):
        stats['flags'] = _pack(_top_flags(dist, rel, config))
    return stats


def _distances(q_words, db_words):
    """[B, N] int32 Hamming distances, one word at a time."""
    dist = jnp.zeros((q_words.shape[0], db_words.shape[0]), jnp.int32)
    for word in range(q_words.shape[1]):
        xor = q_words[:, word][:, None] ^ db_words[:, word][None, :]
        dist = dist + lax.population_count(xor).astype(jnp.int32)
    return dist


def _relevance(q_side, db_side):
    """[B, N] bool rel from ``_inputs.relevance_operands`` rows."""
    if q_side.ndim == 1:
        return q_side[:, None] == db_side[None, :]
    return jnp.dot(q_side, db_side, precision=lax.Precision.HIGHEST) > 0


def _histograms(dist, rel, num_bits):
    """([B, K + 1] items, [B, K + 1] relevant items) at each distance.

    One comparison-and-sum over the items per distance, in a loop over
    the K + 1 distances: the memory stays [B, N] (XLA's CPU backend
    materialises a [B, N, K + 1] comparison summed at once, K + 1 times
    that; benchmarks/RESULTS.md), and unlike a scatter-add into K + 1 bins
    it has no colliding updates. Relevance rides in bit 0 of the key, so
    each pass reads one small array.
    """
    bins = 2 * (num_bits + 1)
    dtype = jnp.uint8 if bins <= 256 else jnp.int32
    keys = (dist.astype(dtype) << 1) | rel.astype(dtype)

    def level(d):
        return (jnp.sum((keys >> 1) == d, axis=1, dtype=jnp.int32),
                jnp.sum(keys == 2 * d + 1, axis=1, dtype=jnp.int32))

    counts, hits = lax.map(level, jnp.arange(num_bits + 1, dtype=dtype))
    return counts.T, hits.T


def _top_flags(dist, rel, config):
    """[B, k] bool relevance of the top k of the stable ranking."""
    plan = config.plan
    width = max((*plan.map_k, *plan.count_k))
    # Signed, so that top_k of the negated keys selects the smallest.
    shift, dtype = hamming.key_layout(config.num_bits, config.num_items,
                                      signed=True)
    position = jnp.arange(config.num_items, dtype=jnp.int32)[None, :]
    tagged = (position << 1) | rel.astype(jnp.int32)  # N < 2^30
    if dtype.itemsize > 4:  # no int64 keys: sort by distance, then position
        _, top = lax.sort((dist, tagged), dimension=1, num_keys=2)
        top = top[:, :width]
    else:
        keys = (dist << shift) | tagged
        if 2 * width > config.num_items:
            top = jnp.sort(keys, axis=1)[:, :width]
        else:  # keys are unique and non-negative: the k smallest, in order
            top = -lax.top_k(-keys, width)[0]
    return (top & 1).astype(bool)


def _pack(flags):
    """[B, ceil(k / 32)] uint32 words of [B, k] bool: rank 32 w + j is bit j
    of word w (``_unpack`` reverses it)."""
    num_rows, width = flags.shape
    words = -(-width // 32)
    bits = jnp.pad(flags, ((0, 0), (0, 32 * words - width))).astype(
        jnp.uint32).reshape(num_rows, words, 32)
    shifts = jnp.arange(32, dtype=jnp.uint32)[None, None]
    return jnp.sum(bits << shifts, axis=2, dtype=jnp.uint32)


def _unpack(words, width) -> np.ndarray:
    """[B, width] bool flags of ``_pack``'s [B, ceil(width / 32)] words."""
    as_bytes = np.ascontiguousarray(words, '<u4').view(np.uint8)
    return np.unpackbits(as_bytes, axis=1, bitorder='little')[
        :, :width].astype(bool)
