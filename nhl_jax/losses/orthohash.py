"""OrthoHash: one cross-entropy on cosine logits to a ±1 codebook."""

import typing
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from nhl_jax.hparams import Margin, Scale, Weight
from nhl_jax.losses import _common
from nhl_jax.types import Array, EmptyState, HashLoss

MarginType = Literal['cos', 'arc']
Quantization = Literal['cs', 'l1', 'l2']
MARGIN_TYPES = typing.get_args(MarginType)
QUANTIZATIONS = typing.get_args(Quantization)


class CodebookState(NamedTuple):
    """The fixed OrthoHash codebook.

    Attributes:
      codebook: [C, K] float32 in {-1, +1}, one target code per class.
    """

    codebook: Array  # [C, K]


def orthohash(scale: Scale = 8.0, margin: Margin = 0.2, *,
              margin_type: MarginType = 'cos', ce: Weight = 1.0,
              quan: Weight = 0.0, quan_type: Quantization = 'cs',
              multiclass: bool = False,
              learn_codebook: bool = False) -> HashLoss:
    """Margin cross-entropy on the cosines between codes and a codebook.

    With z_ic = cos(u_i, c_c) against the codebook rows c_c in {-1, +1}^K,
    scale s and margin m:

      'cos': l_ic = s (z_ic - m y_ic),
      'arc': l_ic = s cos(arccos(clip(z_ic, +-0.99999)) + m y_ic),
      L_ce = mean_i CE(l_i, argmax_c y_ic)          (single label),
      L_ce = mean_i -sum_c (y_ic / sum_c' y_ic') log softmax(l_i)_c
                                                    (``multiclass``),
      L = ce * L_ce + quan * mean_i q_i,

    with q_i = 1 - cos(u_i, sg(sign u_i)) ('cs'), or the per-entry mean of
    |u_i - sg(sign u_i)| ('l1') or its square ('l2'). Maximising the cosine
    to the class code maximises the Hamming-cosine similarity, which is how
    the paper turns the retrieval objective into one classification loss.

    Shapes: codes u [B, K], labels y [B, C], codebook [C, K].

    Args:
      scale: s (CISiPLab/kamwoh orthohash ``main.py`` ``--scale`` 8).
      margin: m (``main.py`` ``--margin`` 0.2).
      margin_type: 'cos' (additive cosine margin, the default) or 'arc'.
      ce: weight of the cross-entropy (``--ce`` 1).
      quan: weight of the quantisation term (``--quan`` 0: off).
      quan_type: 'cs', 'l1' or 'l2' (``--quan-type`` 'cs').
      multiclass: the multi-label loss (``label_smoothing``); the reference
        turns it on for NUS-WIDE only.
      learn_codebook: False (the reference: ``CosSim(learn_cent=False)``):
        the codebook is a fixed random Bernoulli table in the loss state;
        True: it is ``init_params`` and trained with the network.

    Returns:
      A ``HashLoss``: state ``CodebookState`` (fixed codebook), or
      ``EmptyState`` with ``init_params`` {'codebook': [C, K]}.

    References:
      Hoe, Ng et al., "One Loss for All: Deep Hashing with a Single Cosine
      Similarity based Learning Objective", NeurIPS 2021; code:
      github.com/CISiPLab/orthohash (``functions/loss/orthohash.py``
      ``OrthoHashLoss``, ``models/alexnet.py`` ``CosSim``, the Bernoulli
      codebook of ``scripts/train_hashing.py`` ``main``).
    """
    if margin_type not in MARGIN_TYPES:
        raise ValueError(f'margin_type={margin_type!r}; choose one of '
                         f'{MARGIN_TYPES}.')
    if quan_type not in QUANTIZATIONS:
        raise ValueError(f'quan_type={quan_type!r}; choose one of '
                         f'{QUANTIZATIONS}.')

    def codebook(key, num_classes, bits):
        # codebook_generation 'B': every bit +-1 with probability 1/2.
        return _common.random_signs(key, (num_classes, bits)).astype(
            jnp.float32)

    def init_fn(key, *, num_train, num_classes, bits):
        del num_train
        if learn_codebook:
            return EmptyState()
        return CodebookState(codebook(key, num_classes, bits))

    def init_params(key, *, num_classes, bits):
        return {'codebook': codebook(key, num_classes, bits)}

    def apply_fn(state, codes, labels, index, *, params=None):
        _common.check_batch(codes, labels, index)
        table = params['codebook'] if learn_codebook else state.codebook
        cos = _common.l2_normalize(codes) @ _common.l2_normalize(table).T
        target = labels if multiclass else jax.nn.one_hot(
            jnp.argmax(labels, 1), labels.shape[1])
        if margin_type == 'cos':
            logits = scale * (cos - margin * target)
        else:
            angle = jnp.arccos(jnp.clip(cos, -0.99999, 0.99999))
            logits = scale * jnp.cos(angle + margin * target)
        weights = target / jnp.sum(target, 1, keepdims=True)
        loss_ce = -jnp.mean(jnp.sum(
            weights * jax.nn.log_softmax(logits, axis=1), axis=1))
        value = ce * loss_ce
        if quan:
            value = value + quan * _quantization(codes, quan_type)
        return value, state

    return HashLoss(init_fn, apply_fn,
                    init_params if learn_codebook else None)


def _quantization(codes, quan_type):
    signs = jax.lax.stop_gradient(jnp.sign(codes))
    if quan_type == 'cs':
        # torch F.cosine_similarity clamps each norm at eps = 1e-8.
        num = jnp.sum(codes * signs, 1)
        den = (jnp.maximum(_common.safe_norm(codes, -1), 1e-8)
               * jnp.maximum(_common.safe_norm(signs, -1), 1e-8))
        return jnp.mean(1.0 - num / den)
    if quan_type == 'l1':
        return jnp.mean(jnp.abs(codes - signs))
    return jnp.mean((codes - signs) ** 2)
