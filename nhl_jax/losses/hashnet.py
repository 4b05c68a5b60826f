"""HashNet: deep learning to hash by continuation."""

from typing import NamedTuple

import jax.numpy as jnp

from nhl_jax.hparams import Count, Scale
from nhl_jax.losses import _common
from nhl_jax.types import Array, HashLoss


class HashNetState(NamedTuple):
    """Step counter of the continuation (the tanh scale grows with it).

    Attributes:
      step: int32 scalar, the number of ``apply`` calls so far.
      num_train: int32 scalar N, to turn steps into epochs.
    """

    step: Array  # [] int32
    num_train: Array  # [] int32


def hashnet(alpha: Scale = 0.1, step_continuation: Count = 20) -> HashLoss:
    """Class-balanced pairwise likelihood on tanh(beta u), beta increasing.

    With v = tanh(beta u), theta_ij = alpha v_i . v_j within the batch,
    s_ij = 1[y_i . y_j > 0], S1 = sum_ij s_ij and S0 = B^2 - S1:

      l_ij = log(1 + e^theta_ij) - s_ij theta_ij,
      L = sum_ij s_ij l_ij / S1 + sum_ij (1 - s_ij) l_ij / S0

    (each sum is dropped when its pair count is 0). The continuation
    beta = sqrt(floor(e / step_continuation) + 1) grows with the epoch e,
    counted in the state as e = floor(step / max(N // B, 1)) steps: the
    trainer's batching drops the last partial batch, so an epoch is N // B
    steps.

    Args:
      alpha: scale of the inner product inside the sigmoid.
      step_continuation: epochs between two increases of beta.

    Returns:
      A ``HashLoss`` whose state is a ``HashNetState``.

    References:
      Cao et al., "HashNet: Deep Learning to Hash by Continuation", ICCV
      2017 (weighted pairwise likelihood, continuation on tanh(beta z));
      defaults and schedule of swuxyj/DeepHash-pytorch ``HashNet.py``.
    """
    if step_continuation < 1:
        raise ValueError(
            f'hashnet: step_continuation must be >= 1, got {step_continuation}.'
        )

    def init_fn(key, *, num_train, num_classes, bits):
        del key, num_classes, bits
        return HashNetState(
            step=jnp.zeros((), jnp.int32),
            num_train=jnp.asarray(num_train, jnp.int32),
        )

    def apply_fn(state, codes, labels, index):
        _common.check_batch(codes, labels, index)
        steps_per_epoch = jnp.maximum(state.num_train // codes.shape[0], 1)
        epoch = state.step // steps_per_epoch
        beta = jnp.sqrt((epoch // step_continuation + 1).astype(jnp.float32))
        v = jnp.tanh(beta * codes)
        s = _common.similarity(labels, labels)  # [B, B]
        nll = _common.pair_nll(alpha * v @ v.T, s)
        num_pos, num_neg = jnp.sum(s), jnp.sum(1.0 - s)
        loss = jnp.sum(s * nll) / jnp.maximum(num_pos, 1.0) + jnp.sum(
            (1.0 - s) * nll
        ) / jnp.maximum(num_neg, 1.0)
        return loss, state._replace(step=state.step + 1)

    return HashLoss(init_fn, apply_fn)

