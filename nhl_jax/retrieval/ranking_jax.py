"""Retrieval statistics in JAX, on the device that holds the codes.

The JAX backend of ``ranking`` (and so of ``metrics``)
(``backend='jax'``, and 'auto' on a GPU or TPU): the same per-query
statistics as their NumPy path (``ranking.query_stats``), with the same
tie policies, computed by one jitted program per chunk of queries:

- distances: popcounts of the XOR of packed uint32 words;
- relevance: a comparison of class ids, or a 0/1 matmul for multi-hot
  labels (exact: float32 sums of at most C < 2^24 ones);
- ranking, for 'stable' and 'random' ties: the unique keys
  ``dist << s | position << 1 | relevant`` (``hamming``'s layout),
  whose order is the stable ranking; a top k of at most N / 2 by
  ``lax.top_k``, a longer one by a full sort. Random ties rank the
  permuted database, so positions are its order;
- histograms of items and relevant items over distances 0..K (radius
  metrics, and the closed form of 'expected' ties, which needs no ranking:
  ``ties.expected_stats`` with ``xp=jax.numpy``).

Counts come back as integers, so precision, recall and the radius metrics
equal NumPy's exactly; AP sums run in float64 (under ``jax.enable_x64``),
so they differ from NumPy's only by the order of summation (about 1e-16
relative). Chunks hold about ``PAIRS_PER_CHUNK`` (query, item) pairs: some
40 bytes each (distances, keys, their sort, float64 AP terms of the top
k), about 0.7 GB whatever N is.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nhl_jax.retrieval import codes, hamming
from nhl_jax.retrieval._inputs import Plan
from nhl_jax.retrieval.ties import (
    expected_stats,
    harmonic_numbers,
    hypergeometric_support,
)

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
    supports: tuple[int, ...]  # hypergeometric supports per map_k


def query_stats(inputs, plan: Plan, *, expected: bool,
                chunk_size: int | None = None) -> dict:
    """``ranking.query_stats`` of distinct queries, in JAX.

    Args:
      inputs: ``_inputs.Inputs`` (database already in tie order).
      plan: what to compute (``Plan``).
      expected: the closed form of 'expected' ties instead of a ranking.
      chunk_size: queries per program; None: ``default_chunk_size``.

    Returns:
      The statistics as NumPy arrays, keyed as ``ranking.query_stats``.
    """
    num_queries = len(inputs.q_codes)
    num_items, num_bits = inputs.db_codes.shape
    size = chunk_size or default_chunk_size(num_queries, num_items)
    config = _Config(num_bits, num_items, plan, expected, tuple(
        hypergeometric_support(k, num_items) if k < num_items
        else 0 for k in plan.map_k))
    with jax.enable_x64(True):
        db = (jnp.asarray(_words(inputs.db_codes)),
              jnp.asarray(inputs.db_side))
        harmonic = (jnp.asarray(harmonic_numbers(num_items))
                    if expected else None)
        q_words, q_side = _words(inputs.q_codes), inputs.q_side
        chunks = []
        for start in range(0, num_queries, size):
            rows = np.minimum(np.arange(start, start + size),
                              num_queries - 1)  # pad with the last query
            chunks.append(_chunk_stats(q_words[rows], q_side[rows], *db,
                                       harmonic, config=config))
        chunks = jax.device_get(chunks)
    stats = {name: np.concatenate([c[name] for c in chunks], axis=-1)[
        ..., :num_queries] for name in chunks[0]}
    return {name: value.astype(np.int64) if value.dtype.kind in 'iu'
            else value for name, value in stats.items()}


def _words(signs) -> np.ndarray:
    """[N, ceil(K / 32)] uint32 words of ±1 codes [N, K]."""
    return codes.words(codes.pack(signs), np.uint32)


@functools.partial(jax.jit, static_argnames='config')
def _chunk_stats(q_words, q_side, db_words, db_side, harmonic, *, config):
    """The statistics of one chunk of B queries (``query_stats``)."""
    plan = config.plan
    dist = _distances(q_words, db_words)  # [B, N] int32
    rel = _relevance(q_side, db_side)  # [B, N] bool
    stats = {}
    if plan.radii or plan.relevant or config.expected:
        counts, hits = _histograms(dist, rel, config.num_bits)
        stats['relevant'] = jnp.sum(hits, axis=1)
    if config.expected:
        stats.update(expected_stats(
            counts, hits, plan, harmonic, jnp, config.supports))
    elif plan.map_k or plan.count_k:
        stats.update(_ranked_stats(dist, rel, config))
    if plan.radii:
        stats['retrieved'] = jnp.cumsum(counts, axis=1).T
        stats['retrieved_hits'] = jnp.cumsum(hits, axis=1).T
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


def _ranked_stats(dist, rel, config):
    """AP@k and hits h_k of the stable ranking of one chunk."""
    plan = config.plan
    cutoffs = (*plan.map_k, *plan.count_k)
    width = max(cutoffs)
    # Signed, so that top_k of the negated keys selects the smallest.
    shift, dtype = hamming.key_layout(config.num_bits, config.num_items,
                                      signed=True)
    position = jnp.arange(config.num_items, dtype=dtype)[None, :]
    keys = ((dist.astype(dtype) << shift) | (position << 1)
            | rel.astype(dtype))
    if 2 * width > config.num_items:
        top = jnp.sort(keys, axis=1)[:, :width]
    else:  # keys are unique and non-negative: the k smallest, in order
        top = -lax.top_k(-keys, width)[0]
    flags = (top & 1).astype(bool)  # [B, k] relevance in ranked order
    found = jnp.cumsum(flags, axis=1, dtype=jnp.int32)  # t at each hit
    rank = jnp.arange(1, width + 1, dtype=jnp.float64)[None, :]
    sums = jnp.cumsum(jnp.where(flags, found / rank, 0.0), axis=1)
    found = jnp.stack([found[:, c - 1] for c in cutoffs])  # [len, B]
    count = len(plan.map_k)
    sums = (jnp.stack([sums[:, c - 1] for c in plan.map_k]) if count
            else jnp.zeros((0, dist.shape[0])))
    return {'aps': sums / jnp.maximum(found[:count], 1),
            'ap_counted': found[:count] > 0, 'hits': found[count:]}
