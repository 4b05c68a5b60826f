"""DSH: Deep Supervised Hashing with a memory bank over the training set."""

import typing
from typing import Annotated, Literal, NamedTuple

import jax
import jax.numpy as jnp

from nhl_jax.hparams import Range, Weight
from nhl_jax.losses import _common
from nhl_jax.types import Array, HashLoss

Pairs = Literal['bank', 'batch']


class DSHState(NamedTuple):
    """Memory bank of the latest code and label of every training sample.

    Rows not yet written are zero, so during the first epoch they count as
    dissimilar pairs at code 0 (as in the reference).
    """

    codes: Array  # [N, K] float32
    labels: Array  # [N, C] float32


def dsh(alpha: Weight = 0.1,
        margin: Annotated[float | None, Range(0)] = None, *,
        pairs: Pairs = 'bank') -> HashLoss:
    """Deep Supervised Hashing loss, against a memory bank or within a batch.

    With ``pairs='bank'`` (the NHL and DeepHash-pytorch code) each step
    first writes the batch into the bank (U[index] <- sg(u), Y[index] <- y),
    then, with Dist_ij = ||u_i - U_j||^2 over all N rows:

      L = mean_ij [ (1 - d_ij) Dist_ij / 2 + d_ij max(0, M - Dist_ij) / 2 ]
          + alpha * mean_ik | 1 - |u_ik| |,

    where d_ij = 1[y_i . Y_j = 0]. The hinge is on the squared distance, and
    the gradient flows only through the batch codes u_i.

    With ``pairs='batch'`` (the DSH paper's Eq. 4-5: pairs of images in the
    same mini-batch) U and Y are the batch itself, the mean runs over the
    B x B ordered pairs, both codes of a pair get the gradient and no bank
    is kept.

    Args:
      alpha: weight of the quantisation term.
      margin: hinge margin M on the squared distance; None means 2K.
      pairs: ``'bank'`` (the reference code, the default) or ``'batch'``
        (the paper). On small models trained from scratch the bank version
        collapses (every bit takes one sign on the whole database), the
        batch version trains; see the README's results.

    Returns:
      A ``HashLoss`` whose state is a ``DSHState`` (``'bank'``) or an
      ``EmptyState`` (``'batch'``).

    References:
      Liu et al., "Deep Supervised Hashing for Fast Image Retrieval", CVPR
      2016, Eq. 4-5; the DeepHash-pytorch port used by NHL (``DSH.py``).
    """
    if pairs not in typing.get_args(Pairs):
        raise ValueError(f"dsh: pairs must be 'bank' or 'batch', got "
                         f'{pairs!r}.')

    def init_fn(key, *, num_train, num_classes, bits):
        bank = _common.bank_init(key, num_train=num_train,
                                 num_classes=num_classes, bits=bits)
        return DSHState(bank.codes, bank.labels)

    def value(codes, labels, others, other_labels):
        m = 2.0 * codes.shape[-1] if margin is None else margin
        dist = _common.squared_distances(codes, others)  # [B, N] or [B, B]
        dissimilar = 1.0 - _common.similarity(labels, other_labels)
        pair = 0.5 * (1.0 - dissimilar) * dist + 0.5 * dissimilar * (
            jnp.maximum(m - dist, 0.0)
        )
        quant = jnp.mean(jnp.abs(1.0 - jnp.abs(codes)))
        return jnp.mean(pair) + alpha * quant

    def apply_fn(state, codes, labels, index):
        _common.check_batch(codes, labels, index)
        bank = DSHState(
            codes=state.codes.at[index].set(jax.lax.stop_gradient(codes)),
            labels=state.labels.at[index].set(labels),
        )
        return value(codes, labels, bank.codes, bank.labels), bank

    def batch_apply(state, codes, labels, index):
        _common.check_batch(codes, labels, index)
        return value(codes, labels, codes, labels), state

    if pairs == 'batch':
        return HashLoss(_common.stateless_init, batch_apply)
    return HashLoss(init_fn, apply_fn)
