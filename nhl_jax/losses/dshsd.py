"""DSHSD: DSH pairs on tanh codes plus a classifier on the codes."""

import typing
from typing import Annotated, Literal

import jax
import jax.numpy as jnp

from nhl_jax.hparams import Range, Weight
from nhl_jax.losses import _common
from nhl_jax.losses.greedyhash import linear_init
from nhl_jax.types import HashLoss

Classification = Literal['softmax', 'sigmoid']
CLASSIFICATIONS = typing.get_args(Classification)


def dshsd(alpha: Weight = 0.05,
          margin: Annotated[float | None, Range(0)] = None, *,
          classification: Classification = 'softmax') -> HashLoss:
    """Contrastive pairs within the batch plus a linear classification loss.

    With v = tanh(u), D_ij = ||v_i - v_j||^2 over the batch pairs (diagonal
    included), d_ij = 1[y_i . y_j = 0], margin m and o = v W (W [K, C], no
    bias, trained with the network):

      L_d = mean_ij [ (1 - d_ij) D_ij / 2 + d_ij max(0, m - D_ij) / 2 ],
      L_c = mean_i sum_c -y_ic log softmax(o_i)_c          ('softmax'),
      L_c = mean_i sum_c [ o_ic - y_ic o_ic + log(1 + e^{-o_ic}) ]
                                                           ('sigmoid'),
      L = L_c + alpha * L_d.

    'softmax' is the paper's single-label loss (eq. 7), 'sigmoid' its
    multi-label one (eq. 8); the reference picks 'sigmoid' for NUS-WIDE.

    Shapes: codes u [B, K], labels y [B, C], params {'w': [K, C]}.

    Args:
      alpha: weight of the pair term (DeepHash-pytorch DSHSD.py:20).
      margin: hinge margin m on the squared distance; None means 2K
        (DSHSD.py:44).
      classification: 'softmax' or 'sigmoid' (DSHSD.py:56-61).

    Returns:
      A stateless ``HashLoss`` with ``init_params`` (the classifier W).

    Note:
      DeepHash-pytorch builds the classifier but leaves it out of the
      optimizer (DSHSD.py:72), so there W stays at its random init; here it
      is trained with the network, as in the paper.

    References:
      Wu et al., "Deep Supervised Hashing Based on Stable Distribution",
      IEEE Access 2019, eqs. 7-8; DeepHash-pytorch ``DSHSD.py``
      ``DSHSDLoss`` (lines 41-63).
    """
    if classification not in CLASSIFICATIONS:
        raise ValueError(f'classification={classification!r}; choose one of '
                         f'{CLASSIFICATIONS}.')

    def init_params(key, *, num_classes, bits):
        return {'w': linear_init(key, bits, num_classes)}

    def apply_fn(state, codes, labels, index, *, params):
        _common.check_batch(codes, labels, index)
        v = jnp.tanh(codes)
        m = 2.0 * codes.shape[-1] if margin is None else margin
        sq = jnp.sum(v * v, -1)
        dist = jnp.maximum(sq[:, None] - 2.0 * v @ v.T + sq[None, :], 0.0)
        dis = 1.0 - _common.similarity(labels, labels)  # [B, B]
        pair = 0.5 * (1.0 - dis) * dist + 0.5 * dis * jnp.maximum(
            m - dist, 0.0)
        o = v @ params['w']  # [B, C]
        if classification == 'softmax':
            lc = -jnp.sum(labels * jax.nn.log_softmax(o, axis=1), axis=1)
        else:
            # log(1 + e^{-o}) as softplus(-o): finite for large |o|.
            lc = jnp.sum(o - labels * o + jax.nn.softplus(-o), axis=1)
        return jnp.mean(lc) + alpha * jnp.mean(pair), state

    return HashLoss(_common.stateless_init, apply_fn, init_params)
