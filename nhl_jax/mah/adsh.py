"""The ADSH objective of MAH: asymmetric loss, soft similarity, DCC update.

ADSH learns the network only for a sampled subset Omega of the database (the
"queries" U = tanh(network outputs) [S, K], S = |Omega|) and treats the
database codes V in {-1, +1}^{N x K} as free discrete variables:

  J(U, V) = [ sum_{i in Omega} sum_j (u_i . v_j - K s~_ij)^2
              + gamma sum_{i in Omega} ||v_{omega(i)} - u_i||^2 ] / (N S),

with the soft-balanced similarity s~ (``soft_similarity``). The network
minimises J over mini-batches of Omega with V fixed (``adsh_loss``); V is
then updated in closed form, one bit column at a time (``dcc_update``). MAH
trains one such objective per code length, weighted ``joint_loss``.

All functions are pure and jit-compatible; V is state, never a parameter.

References:
  Jiang and Li, "Asymmetric Deep Supervised Hashing", AAAI 2018;
  MAH, arXiv 1809.09329, and Luoyadan/MAH-Pytorch ``utils/adsh_loss.py`` and
  ``cascade_CIFAR_10.py`` (``calc_sim``, ``calc_loss``, the V update).
"""

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp

from nhl_jax.losses import similarity
from nhl_jax.types import Array

# The V update's sums decide signs: keep them in full float32 on GPUs too
# (TF32 matmuls would flip bits whose field is near zero).
_HIGHEST = jax.lax.Precision.HIGHEST


def init_codes(num_database: int, bits: int) -> Array:
    """Initial database codes V [N, K]: zeros, as in the MAH code.

    The first loss therefore has no data term in V (u . v = 0) and the first
    ``dcc_update`` sets every entry to -1 or +1.
    """
    return jnp.zeros((num_database, bits), jnp.float32)


def balance_ratio(labels_a: Array, labels_b: Array) -> Array:
    """r = sum S / sum (1 - S) over S = 1[y_a . y_b > 0], [A, N].

    Args:
      labels_a: [A, C] multi-hot labels of Omega.
      labels_b: [N, C] multi-hot labels of the database.

    Returns:
      Scalar float32 r. When no pair is dissimilar r is computed as
      sum S / 1; then S~ = 1 everywhere whatever r is.
    """
    chex.assert_rank([labels_a, labels_b], 2)
    s = similarity(labels_a, labels_b)
    return jnp.sum(s) / jnp.maximum(jnp.sum(1.0 - s), 1.0)


def soft_similarity(labels_a: Array, labels_b: Array, ratio) -> Array:
    """S~ = S (1 + r) - r: 1 for similar pairs, -r for dissimilar ones.

    Args:
      labels_a: [A, C] multi-hot labels.
      labels_b: [N, C] multi-hot labels.
      ratio: r from ``balance_ratio`` (over the whole Omega x database).

    Returns:
      [A, N] float32.
    """
    s = similarity(labels_a, labels_b)
    return s * (1.0 + ratio) - ratio


def soft_balanced_similarity(labels_a: Array, labels_b: Array) -> Array:
    """``soft_similarity`` with r computed over these very pairs, [A, N]."""
    return soft_similarity(labels_a, labels_b,
                           balance_ratio(labels_a, labels_b))


def adsh_loss(u: Array, codes: Array, s_tilde: Array, rows: Array, *,
              gamma: float = 200.0, mask: Array | None = None) -> Array:
    """The ADSH loss of one batch beta of Omega for one head.

      L = [ sum_{i in beta} sum_j (u_i . v_j - K s~_ij)^2
            + gamma sum_{i in beta} ||v_{omega(i)} - u_i||^2 ] / (N |beta|)

    Args:
      u: [B, K] query codes tanh(outputs).
      codes: [N, K] database codes V (held fixed).
      s_tilde: [B, N] soft similarity of the batch to the database.
      rows: [B] int database row omega(i) of each sample.
      gamma: quantisation weight (200 for CIFAR-10 and NUS-WIDE).
      mask: optional [B] float, 1 for real samples and 0 for padding; |beta|
        is then sum(mask).

    Returns:
      Scalar float32 loss.
    """
    chex.assert_rank([u, codes, s_tilde, rows], [2, 2, 2, 1])
    chex.assert_equal_shape_prefix([u, s_tilde, rows], 1)
    chex.assert_equal_shape_suffix([u, codes], 1)
    chex.assert_axis_dimension(s_tilde, 1, codes.shape[0])
    num_bits = u.shape[1]
    if mask is None:
        mask = jnp.ones(u.shape[:1], jnp.float32)
    square = jnp.sum((u @ codes.T - num_bits * s_tilde) ** 2, axis=1)  # [B]
    quant = jnp.sum((codes[rows] - u) ** 2, axis=1)  # [B]
    per_sample = square + gamma * quant
    return jnp.sum(mask * per_sample) / (codes.shape[0] * jnp.sum(mask))


def joint_loss(outputs: Sequence[Array], codes: Sequence[Array],
               s_tilde: Array, rows: Array, *, weights: Sequence[float],
               gamma: float = 200.0, mask: Array | None = None):
    """MAH's weighted sum of one ADSH loss per head: sum_k w_k L_k.

    Args:
      outputs: M pre-tanh head outputs [B, b_k] (``head.codes``).
      codes: M database codes V_k [N, b_k].
      s_tilde: [B, N] soft similarity, shared by the heads.
      rows: [B] int database rows of the batch.
      weights: M weights w_k, the shortest code weighted most (4 : 2 : 1).
      gamma: quantisation weight.
      mask: optional [B] padding mask.

    Returns:
      ``(total, losses [M], queries)``: queries are the M tanh(outputs_k)
      [B, b_k] to store as U.
    """
    if not len(outputs) == len(codes) == len(weights):
        raise ValueError(
            f'joint_loss: {len(outputs)} outputs, {len(codes)} code tables '
            f'and {len(weights)} weights; pass one of each per head.'
        )
    queries = tuple(jnp.tanh(h) for h in outputs)
    losses = jnp.stack([
        adsh_loss(u, v, s_tilde, rows, gamma=gamma, mask=mask)
        for u, v in zip(queries, codes)
    ])
    total = jnp.sum(jnp.asarray(weights, jnp.float32) * losses)
    return total, losses, queries


def adsh_objective(codes: Array, u: Array, s_tilde: Array, omega: Array, *,
                   gamma: float = 200.0) -> Array:
    """J(U, V) over the whole Omega (the MAH code's ``calc_loss``).

    Args:
      codes: [N, K] database codes V.
      u: [S, K] stored query codes U of Omega.
      s_tilde: [S, N] soft similarity of Omega to the database.
      omega: [S] int database rows of Omega.
      gamma: quantisation weight.

    Returns:
      Scalar float32 J.
    """
    return adsh_loss(u, codes, s_tilde, omega, gamma=gamma)


def dcc_update(codes: Array, u: Array, s_tilde: Array, omega: Array, *,
               gamma: float = 200.0) -> Array:
    """One sweep of the discrete cyclic coordinate update of V.

    With U-bar [N, K] zero except rows Omega (= U), and
    Q = -2 K S~^T U - 2 gamma U-bar [N, K], each bit column is set in turn
    (k = 1..K, every row at once) to the exact minimiser of J given the
    other columns:

      V_{:,k} = -sign(Q_{:,k} + 2 V_{:,~k} U_{:,~k}^T U_{:,k}),

    using the columns already updated in this sweep. A zero field gives +1
    (the reference's np.sign would give 0, a third value).

    Args:
      codes: [N, K] current V (zeros before the first update, else +-1).
      u: [S, K] stored query codes U of Omega.
      s_tilde: [S, N] soft similarity of Omega to the database.
      omega: [S] int database rows of Omega.
      gamma: quantisation weight.

    Returns:
      [N, K] float32 in {-1, +1}.
    """
    chex.assert_rank([codes, u, s_tilde, omega], [2, 2, 2, 1])
    chex.assert_equal_shape_suffix([codes, u], 1)
    chex.assert_shape(s_tilde, (u.shape[0], codes.shape[0]))
    num_bits = codes.shape[1]
    u_bar = jnp.zeros_like(codes).at[omega].set(u)
    q = (-2.0 * num_bits * jnp.matmul(s_tilde.T, u, precision=_HIGHEST)
         - 2.0 * gamma * u_bar)  # [N, K]
    gram = jnp.matmul(u.T, u, precision=_HIGHEST)  # [K, K] = U^T U
    bit_ids = jnp.arange(num_bits)[None, :]  # [1, K]

    def sweep(k, v):
        others = jnp.where(bit_ids == k, 0.0, v)  # V_{:,~k}, column k zeroed
        g_k = jax.lax.dynamic_index_in_dim(gram, k, 1, keepdims=False)  # [K]
        q_k = jax.lax.dynamic_index_in_dim(q, k, 1, keepdims=False)  # [N]
        field = q_k + 2.0 * jnp.matmul(others, g_k, precision=_HIGHEST)
        column = jnp.where(field > 0, -1.0, 1.0)
        return jax.lax.dynamic_update_index_in_dim(v, column, k, 1)

    return jax.lax.fori_loop(0, num_bits, sweep, codes.astype(jnp.float32))
