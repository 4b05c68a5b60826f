"""ODH's loss terms: hash-centre (HashProxy), classification, L_asd.

    stage 1 (exploration):  L = L_hc(h(I_t)) + 0.001 CE(classifier(I_t))
    stage 2 (aggregation):  L = L_hc(h(I_t)) + 0.001 L_asd(h(I_s), sg(h(I_t)))
                                + 0.0001 CE(classifier(I_s))

with h = tanh(network output), I_t a weak and I_s a strong view
(hly1998/OSH ``model_hash/Ours_BNN.py``).
"""

import chex
import jax
import jax.numpy as jnp

from nhl_jax.losses import l2_normalize
from nhl_jax.types import Array, PRNGKey


def hash_center_loss(h: Array, centers: Array, labels: Array, *,
                     temperature: float = 0.2) -> Array:
    """HashProxy: cross-entropy of the cosine-softmax over the centres.

      L_hc = mean_i sum_c -y_ic log softmax_c(cos(h_i, centre_c) / tau).

    Multi-hot labels are used as they are (not normalised), as in the code.

    Args:
      h: [B, K] codes (ODH passes tanh of the network output).
      centers: [C, K] hash centres.
      labels: [B, C] 0/1 labels.
      temperature: tau.

    Returns:
      A float32 scalar.

    References:
      ODH (ACM MM 2024, DOI 10.1145/3664647.3681496), hash-centre loss;
      ``HashProxy`` in hly1998/OSH.
    """
    chex.assert_rank([h, centers, labels], 2)
    chex.assert_equal_shape_prefix([h, labels], 1)
    chex.assert_equal_shape_suffix([h, centers], 1)
    chex.assert_axis_dimension(labels, 1, centers.shape[0])
    cos = l2_normalize(h) @ l2_normalize(centers).T  # [B, C]
    log_p = jax.nn.log_softmax(cos / temperature, axis=-1)
    return jnp.mean(jnp.sum(-labels * log_p, axis=-1))


def classification_loss(logits: Array, labels: Array) -> Array:
    """torch ``CrossEntropyLoss`` with probability targets (the labels).

      CE = mean_i sum_c -y_ic log softmax_c(logits_i).

    Args:
      logits: [B, C] classifier outputs.
      labels: [B, C] 0/1 labels.

    Returns:
      A float32 scalar.
    """
    chex.assert_rank([logits, labels], 2)
    chex.assert_equal_shape([logits, labels])
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return jnp.mean(jnp.sum(-labels * log_p, axis=-1))


def sample_push(key: PRNGKey, groups: int, n_positive: int = 2) -> Array:
    """The push-away factors a ~ U[1, 2) of ``aggregation_distill_loss``.

    Returns:
      [G, 2 n_positive] float32: per group, the strong then the weak codes.
    """
    return jax.random.uniform(key, (groups, 2 * n_positive), jnp.float32,
                              1.0, 2.0)


def aggregation_distill_loss(strong: Array, weak: Array, push: Array, *,
                             n_positive: int = 2) -> Array:
    """L_asd: pull the strong and weak codes of each same-class group together.

    Rows come in groups of ``n_positive`` consecutive same-class samples
    (the stage-2 sampler's order). Per group g, with the strong codes s, the
    weak codes t = sg(weak) and x_bar the mean of the 2 n codes:

      x' = a x + (1 - a) x_bar   for each of the 2 n codes (a = push[g]),
      L_g = mean over the pairs i < j of cos(x'_i, x'_j),
      L_asd = -sum_g L_g / G.

    a >= 1 pushes each code away from the group mean, so the loss keeps
    pulling after the codes have nearly met. The weak view is the teacher:
    no gradient reaches it (also not through x_bar).

    Args:
      strong: [B, K] codes of the strong views, B = G * n_positive.
      weak: [B, K] codes of the weak views of the same images.
      push: [G, 2 n_positive] factors a (``sample_push``).
      n_positive: images per group.

    Returns:
      A float32 scalar.

    References:
      ODH, aggregation-stage distillation; ``HashDistill`` in hly1998/OSH
      (there divided by the number of anchors, which is G).
    """
    chex.assert_rank([strong, weak, push], 2)
    chex.assert_equal_shape([strong, weak])
    b, k = strong.shape
    if b % n_positive:
        raise ValueError(
            f'batch of {b} codes does not split into groups of n_positive='
            f'{n_positive}; use a multiple of {n_positive} rows.'
        )
    groups = b // n_positive
    chex.assert_shape(push, (groups, 2 * n_positive))
    x = jnp.concatenate([
        strong.reshape(groups, n_positive, k),
        jax.lax.stop_gradient(weak).reshape(groups, n_positive, k)],
        axis=1)  # [G, 2n, K]
    mean = jnp.mean(x, axis=1, keepdims=True)  # [G, 1, K]
    a = push[:, :, None]
    x = l2_normalize(a * x + (1.0 - a) * mean)
    cos = jnp.einsum('gik,gjk->gij', x, x)  # [G, 2n, 2n]
    upper = jnp.triu(jnp.ones((2 * n_positive,) * 2, bool), k=1)
    per_group = (jnp.sum(jnp.where(upper[None], cos, 0.0), axis=(1, 2))
                 / upper.sum())
    return -jnp.sum(per_group) / groups
