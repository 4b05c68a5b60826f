"""DFH: Deep Fisher Hashing ("push for quantization")."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from nhl_jax.hparams import Count, Margin, Scale, Weight
from nhl_jax.losses import _common
from nhl_jax.types import Array, HashLoss


class DFHState(NamedTuple):
    """Memory bank and the relaxed class centres of DFH.

    Attributes:
      codes: [N, K] float32, the latest code of every training sample.
      labels: [N, C] float32, their labels.
      centers: [K, C] float32, the relaxed centres V; sign(V) are the class
        codes. Zero at the start, as in the reference.
      count: [] int32 steps taken, only with a ``warmup`` (else None).
    """

    codes: Array  # [N, K]
    labels: Array  # [N, C]
    centers: Array  # [K, C]
    count: Array | None = None  # []


def dfh(
    m: Margin = 3.0,
    mu: Weight = 0.1,
    vul: Weight = 1.0,
    nta: Weight = 1.0,
    eta: Weight = 0.5,
    *,
    center_lr: Scale = 0.03,
    center_steps: Count = 200,
    center_decay_at: tuple[int, ...] = (149, 179),
    warmup: _common.Steps = 0,
    bank_codes: _common.BankCodes = 'relaxed',
) -> HashLoss:
    """Margin pairwise likelihood on a bank, quantisation to centre-pushed b.

    Each step: (1) writes the batch into the bank; (2) builds the binary
    targets b_i = sign(mu sign(V) y_i + u_i) with the centres of the
    previous step; (3) refits the relaxed centres V [K, C] by
    ``center_steps`` plain gradient steps (learning rate ``center_lr``,
    times 0.1 at each step of ``center_decay_at``) on

      mean_ki ((V y_i)_k - b_ik)^2 + vul * mean_cd ((V^T V)_cd - T_cd)^2
      + nta * mean_kc (V_kc - sign(V_kc))^2,   T = K (2 I_C - 1_CC);

    (4) with theta_ij = clip(u_i . U_j / 2, -100, 50) over the N rows and
    s_ij = 1[y_i . Y_j > 0]:

      L = mean_ij [ (1 - s_ij) log(1 + e^(m + theta_ij))
      + s_ij log(1 + e^(m - theta_ij)) ] + eta * mean_ik (b_ik - u_ik)^2.

    b and V carry no gradient.

    Args:
      m: margin of the pairwise likelihood.
      mu: weight of the class codes in the targets b.
      vul: weight of the centre separation term.
      nta: weight of the centre quantisation term.
      eta: weight of the quantisation term.
      center_lr: learning rate of the centre refit.
      center_steps: gradient steps of the centre refit per training step.
      center_decay_at: refit steps at which the rate is divided by 10.
      warmup: steps of in-batch pairs before the bank is used, a remedy
        for the bank's collapse at large learning rates (0: the paper).
      bank_codes: what the bank stores: ``'relaxed'`` codes (the paper) or
        their ``'sign'``.

    Returns:
      A ``HashLoss`` whose state is a ``DFHState``.

    References:
      Li and van Gemert, "Push for Quantization: Deep Fisher Hashing", BMVC
      2019 (arXiv 1909.00206); defaults and centre refit of
      swuxyj/DeepHash-pytorch ``DFH.py``.
    """

    options = _common.bank_options('dfh', warmup, bank_codes)

    def init_fn(key, *, num_train, num_classes, bits):
        bank = _common.bank_init_fn(options)(
            key, num_train=num_train, num_classes=num_classes, bits=bits)
        return DFHState(bank.codes, bank.labels,
                        centers=jnp.zeros((bits, num_classes), jnp.float32),
                        count=bank.count)

    def center_objective(v, y, b, target):
        intra = jnp.mean((v @ y.T - b.T) ** 2)
        inter = jnp.mean((v.T @ v - target) ** 2)
        # sign() has zero gradient, so this pulls V towards sign(V).
        quant = jnp.mean((v - jnp.sign(v)) ** 2)
        return intra + vul * inter + nta * quant

    def refit_centers(v, y, b):
        k, c = v.shape
        target = k * (2.0 * jnp.eye(c) - 1.0)
        grad = jax.grad(center_objective)
        decay = jnp.asarray(center_decay_at, jnp.int32)

        def body(i, carry):
            v, lr = carry
            lr = jnp.where(jnp.any(i == decay), 0.1 * lr, lr)
            return v - lr * grad(v, y, b, target), lr

        v, _ = jax.lax.fori_loop(
            0, center_steps, body, (v, jnp.float32(center_lr))
        )
        return v

    def pair_term(u, labels, others, other_labels):
        s = _common.similarity(labels, other_labels)  # [B, R]
        theta = jnp.clip(0.5 * u @ others.T, -100.0, 50.0)  # [B, R]
        return jnp.mean(
            (1.0 - s) * jax.nn.softplus(m + theta)
            + s * jax.nn.softplus(m - theta)
        )

    def apply_fn(state, codes, labels, index):
        _common.check_batch(codes, labels, index)
        b = jax.lax.stop_gradient(
            jnp.sign(mu * labels @ jnp.sign(state.centers).T + codes)
        )  # [B, K]
        centers = refit_centers(state.centers, labels, b)
        metric, bank = _common.bank_pairs(state, codes, labels, index,
                                          pair_term, options)
        quant = jnp.mean((b - codes) ** 2)
        return metric + eta * quant, bank._replace(centers=centers)

    return HashLoss(init_fn, apply_fn)
