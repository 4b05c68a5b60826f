"""Loop-based float64 NumPy references of the DeepHash-pytorch losses.

Written from each method's formula (and checked against the released
PyTorch code: hly1998/NHL ``bit_length/`` and swuxyj/DeepHash-pytorch),
without JAX or nhl_jax, favouring explicit loops over vectorisation so that
they stay independent from the code under test. Use small shapes only.

Notation: ``u`` [B, K] codes, ``y`` [B, C] multi-hot labels, banks
``bank_u`` [N, K] and ``bank_y`` [N, C]. The bank losses return
``(loss, new_bank_u, new_bank_y)``, the bank written first; with
``write=False`` the bank is used as given (the codes already in it), which
is the loss seen by the gradient: the bank holds detached copies.
"""

import math

import numpy as np

# The losses this module references; those with a memory bank.
BANK = ['dbdh', 'dhn', 'dpsh', 'idhn', 'isdh']
NAMES = sorted(BANK + ['dfh', 'hashnet', 'qsmih', 'shcir'])


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def _softplus(x):
    """log(1 + e^x) for a Python float, without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _sign(x):
    return 1.0 if x > 0 else (-1.0 if x < 0 else 0.0)


def _write(bank_u, bank_y, index, u, y, write=True):
    bu, by = _f64(bank_u).copy(), _f64(bank_y).copy()
    if not write:
        return bu, by
    for r, idx in enumerate(np.asarray(index)):
        bu[idx] = u[r]
        by[idx] = y[r]
    return bu, by


def _hard_sim(a, b):
    return 1.0 if float(np.dot(a, b)) > 0 else 0.0


def _cos_sim(a, b):
    na = math.sqrt(sum(v * v for v in a))
    nb = math.sqrt(sum(v * v for v in b))
    return float(np.dot(a, b)) / (na * nb + 1e-5)


def _likelihood(u, y, bu, by):
    """mean_ij log(1 + e^theta) - s theta, theta = u_i . U_j / 2."""
    total = 0.0
    for i in range(u.shape[0]):
        for j in range(bu.shape[0]):
            theta = 0.5 * float(np.dot(u[i], bu[j]))
            total += _softplus(theta) - _hard_sim(y[i], by[j]) * theta
    return total / (u.shape[0] * bu.shape[0])


def dhn(u, y, index, bank_u, bank_y, *, alpha=0.1, write=True):
    u, y = _f64(u), _f64(y)
    bu, by = _write(bank_u, bank_y, index, u, y, write)
    quant = np.mean([math.log(math.cosh(abs(v) - 1.0)) for v in u.ravel()])
    return _likelihood(u, y, bu, by) + alpha * quant, bu, by


def dbdh(u, y, index, bank_u, bank_y, *, alpha=0.1, p=2, write=True):
    u = np.clip(_f64(u), -1.0, 1.0)
    y = _f64(y)
    bu, by = _write(bank_u, bank_y, index, u, y, write)
    balance = np.mean([abs(np.mean(row)) ** p for row in u])
    return _likelihood(u, y, bu, by) + alpha * balance, bu, by


def dpsh(u, y, index, bank_u, bank_y, *, alpha=0.1, write=True):
    u, y = _f64(u), _f64(y)
    bu, by = _write(bank_u, bank_y, index, u, y, write)
    quant = np.mean([(v - _sign(v)) ** 2 for v in u.ravel()])
    return _likelihood(u, y, bu, by) + alpha * quant, bu, by


def hashnet(u, y, *, scale=1.0, alpha=0.1):
    """HashNet at tanh scale ``scale`` (the continuation's beta)."""
    v = np.tanh(scale * _f64(u))
    y = _f64(y)
    b = v.shape[0]
    pos, neg, n_pos, n_neg = 0.0, 0.0, 0, 0
    for i in range(b):
        for j in range(b):
            theta = alpha * float(np.dot(v[i], v[j]))
            s = _hard_sim(y[i], y[j])
            nll = _softplus(theta) - s * theta
            if s:
                pos, n_pos = pos + nll, n_pos + 1
            else:
                neg, n_neg = neg + nll, n_neg + 1
    return (pos / n_pos if n_pos else 0.0) + (neg / n_neg if n_neg else 0.0)


def hashnet_scale(step, num_train, batch, step_continuation=20):
    """beta = sqrt(epoch // step_continuation + 1), epoch of this step."""
    epoch = step // max(num_train // batch, 1)
    return math.sqrt(epoch // step_continuation + 1)


def _soft_pairs(u, y, index, bank_u, bank_y, write):
    v = _f64(u) / (np.abs(_f64(u)) + 1.0)
    y = _f64(y)
    bu, by = _write(bank_u, bank_y, index, v, y, write)
    return v, y, bu, by


def idhn(u, y, index, bank_u, bank_y, *, alpha=0.5, gamma=0.1, lam=0.1,
         write=True):
    v, y, bu, by = _soft_pairs(u, y, index, bank_u, bank_y, write)
    k = v.shape[1]
    total = 0.0
    for i in range(v.shape[0]):
        for j in range(bu.shape[0]):
            s = _cos_sim(y[i], by[j])
            theta = alpha * float(np.dot(v[i], bu[j]))
            if s > 0.99 or s < 0.01:
                total += _softplus(theta) - s * theta
            else:
                total += gamma * (theta + k - 2.0 * s * k) ** 2
    pair = total / (v.shape[0] * bu.shape[0])
    quant = np.mean([abs(abs(x) - 1.0) for x in v.ravel()])
    return pair + lam * quant, bu, by


def isdh(u, y, index, bank_u, bank_y, *, alpha=0.5, gamma=10.0, lam=0.1,
         write=True):
    v, y, bu, by = _soft_pairs(u, y, index, bank_u, bank_y, write)
    total = 0.0
    for i in range(v.shape[0]):
        for j in range(bu.shape[0]):
            s = _cos_sim(y[i], by[j])
            theta = alpha * float(np.dot(v[i], bu[j]))
            if s > 0.99 or s < 0.01:
                total += gamma * (_softplus(theta) - s * theta)
            else:
                total += (s - _sigmoid(theta)) ** 2
    pair = total / (v.shape[0] * bu.shape[0])
    quant = np.mean([abs(abs(x) - 1.0) for x in v.ravel()])
    return pair + lam * quant, bu, by


def qsmih(u, y, *, alpha=0.01, use_square_clamp=True):
    u, y = _f64(u), _f64(y)
    b = u.shape[0]
    v = np.zeros_like(u)
    for i in range(b):
        v[i] = u[i] / (math.sqrt(float(np.dot(u[i], u[i]))) + 1e-8)
    d = np.array([[_hard_sim(y[i], y[j]) for j in range(b)]
                  for i in range(b)])
    m = b * b / d.sum()
    total = 0.0
    for i in range(b):
        for j in range(b):
            p = 0.5 * (float(np.dot(v[i], v[j])) + 1.0)
            if use_square_clamp:
                total += (d[i, j] * p - 1.0) ** 2 + p * p / m
            else:
                total += p / m - d[i, j] * p
    quant = np.mean([abs(abs(x) - 1.0) for x in v.ravel()])
    return total / (b * b) + alpha * quant


def _dfh_center_grad(v, y, b, vul, nta):
    """Gradient of the DFH centre objective w.r.t. V [K, C], by hand."""
    k, c = v.shape
    n = y.shape[0]
    grad = np.zeros_like(v)
    # intra: mean over (k, i) of ((V y_i)_k - b_ik)^2
    for i in range(n):
        for kk in range(k):
            r = float(np.dot(v[kk], y[i])) - b[i, kk]
            for cc in range(c):
                grad[kk, cc] += 2.0 * r * y[i, cc] / (k * n)
    # inter: mean over (c, d) of ((V^T V)_cd - T_cd)^2
    gram = v.T @ v
    t = k * (2.0 * np.eye(c) - 1.0)
    for a in range(c):
        for d in range(c):
            e = gram[a, d] - t[a, d]
            for kk in range(k):
                grad[kk, a] += vul * 2.0 * e * v[kk, d] / (c * c)
                grad[kk, d] += vul * 2.0 * e * v[kk, a] / (c * c)
    # quantisation, sign() held constant
    for kk in range(k):
        for cc in range(c):
            grad[kk, cc] += nta * 2.0 * (v[kk, cc] - _sign(v[kk, cc])) / (k * c)
    return grad


def dfh(u, y, index, bank_u, bank_y, centers, *, m=3.0, mu=0.1, vul=1.0,
        nta=1.0, eta=0.5, steps=200, write=True):
    """Returns (loss, new_bank_u, new_bank_y, new_centers [K, C])."""
    u, y = _f64(u), _f64(y)
    bu, by = _write(bank_u, bank_y, index, u, y, write)
    v = _f64(centers).copy()
    bsz, k = u.shape
    sv = np.vectorize(_sign)(v)
    b = np.zeros_like(u)
    for i in range(bsz):
        for kk in range(k):
            b[i, kk] = _sign(mu * float(np.dot(sv[kk], y[i])) + u[i, kk])
    lr = 0.03
    for it in range(steps):
        if it in (149, 179):
            lr *= 0.1
        v = v - lr * _dfh_center_grad(v, y, b, vul, nta)
    total = 0.0
    for i in range(bsz):
        for j in range(bu.shape[0]):
            theta = min(max(0.5 * float(np.dot(u[i], bu[j])), -100.0), 50.0)
            s = _hard_sim(y[i], by[j])
            total += (1 - s) * _softplus(m + theta) + s * _softplus(m - theta)
    metric = total / (bsz * bu.shape[0])
    quant = np.mean((b - u) ** 2)
    return metric + eta * quant, bu, by, v


def shcir(u, y, centers, *, lam=1e-4):
    u, y, h = _f64(u), _f64(y), _f64(centers)
    bsz, k = u.shape
    c = h.shape[0]
    total = 0.0
    for i in range(bsz):
        e = []
        for j in range(c):
            cos = float(np.dot(u[i], h[j])) / (
                max(np.linalg.norm(u[i]), 1e-12) * max(np.linalg.norm(h[j]),
                                                       1e-12))
            e.append(math.exp(math.sqrt(k) * cos))
        pos = [j for j in range(c) if y[i, j] > 0]
        neg = [j for j in range(c) if y[i, j] == 0]
        terms = []
        for p in pos:
            z = e[p] + sum(e[n] for n in neg)
            t = math.log(e[p] / z)
            t += sum(math.log(1.0 - e[n] / z) for n in neg) / max(c - 1, 1)
            terms.append(t)
        total += np.mean(terms) if terms else 0.0
    quant = np.mean((np.abs(u) - 1.0) ** 2)
    return -total / bsz + lam * quant
