"""NumPy references of the base losses with parameters or epoch updates.

Plain, loop-based float64 NumPy written from the formulas of GreedyHash,
DSHSD, OrthoHash and DSDH (as in their docstrings in nhl_jax/losses) and
checked against the reference code (swuxyj/DeepHash-pytorch, CISiPLab
orthohash). No JAX, no nhl_jax. Small shapes only.

Notation: ``u`` [B, K] continuous codes, ``y`` [B, C] multi-hot labels,
``w`` [K, C] a classifier, ``s_ij = 1`` iff ``y_i . y_j > 0``.
"""

import math

import numpy as np


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def _log_softmax(row):
    top = max(row)
    total = sum(math.exp(v - top) for v in row)
    return [v - top - math.log(total) for v in row]


def _softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def greedyhash(u, y, w, *, b=None, alpha=0.1):
    """CE(b W, argmax y) + alpha mean |(|u| - 1)^3|, b = sign(u) by default.

    ``b`` apart from ``u`` so that a test can difference the two paths of
    the straight-through gradient separately.
    """
    u, y, w = _f64(u), _f64(y), _f64(w)
    b = np.sign(u) if b is None else _f64(b)
    ce = 0.0
    for i in range(u.shape[0]):
        logits = [sum(b[i, k] * w[k, c] for k in range(u.shape[1]))
                  for c in range(w.shape[1])]
        ce -= _log_softmax(logits)[int(np.argmax(y[i]))]
    penalty = 0.0
    for i, k in np.ndindex(*u.shape):
        penalty += abs((abs(u[i, k]) - 1.0) ** 3)
    return ce / u.shape[0] + alpha * penalty / u.size


def dshsd(u, y, w, *, alpha=0.05, margin=None, classification='softmax'):
    """Softmax (or sigmoid) CE of tanh(u) W + alpha * batch DSH pairs."""
    v, y, w = np.tanh(_f64(u)), _f64(y), _f64(w)
    bsz, k = v.shape
    m = 2.0 * k if margin is None else margin
    pair = 0.0
    for i in range(bsz):
        for j in range(bsz):
            dist = sum((v[i, t] - v[j, t]) ** 2 for t in range(k))
            d = 1.0 if np.dot(y[i], y[j]) == 0 else 0.0
            pair += 0.5 * (1 - d) * dist + 0.5 * d * max(m - dist, 0.0)
    lc = 0.0
    for i in range(bsz):
        o = [sum(v[i, t] * w[t, c] for t in range(k))
             for c in range(w.shape[1])]
        if classification == 'softmax':
            logp = _log_softmax(o)
            lc -= sum(y[i, c] * logp[c] for c in range(len(o)))
        else:
            lc += sum(o[c] - y[i, c] * o[c] + _softplus(-o[c])
                      for c in range(len(o)))
    return lc / bsz + alpha * pair / bsz**2


def orthohash(u, y, codebook, *, scale=8.0, margin=0.2, margin_type='cos',
              ce=1.0, quan=0.0, quan_type='cs', multiclass=False):
    """Margin CE on cos(u_i, codebook_c), plus the optional quantisation."""
    u, y, cb = _f64(u), _f64(y), _f64(codebook)
    bsz, k = u.shape
    total = 0.0
    for i in range(bsz):
        if multiclass:
            target = y[i]
        else:
            target = np.zeros(y.shape[1])
            target[int(np.argmax(y[i]))] = 1.0
        nu = math.sqrt(sum(t * t for t in u[i]))
        logits = []
        for c in range(cb.shape[0]):
            nc = math.sqrt(sum(t * t for t in cb[c]))
            cos = sum(u[i, t] * cb[c, t] for t in range(k)) / (nu * nc)
            if margin_type == 'cos':
                logits.append(scale * (cos - margin * target[c]))
            else:
                cos = min(max(cos, -0.99999), 0.99999)
                logits.append(scale * math.cos(math.acos(cos)
                                               + margin * target[c]))
        logp = _log_softmax(logits)
        total -= sum(target[c] * logp[c] for c in range(len(logits))) / sum(
            target)
    value = ce * total / bsz
    if quan:
        q = 0.0
        for i in range(bsz):
            s = np.sign(u[i])
            if quan_type == 'cs':
                q += 1.0 - np.dot(u[i], s) / (np.linalg.norm(u[i])
                                              * np.linalg.norm(s))
            elif quan_type == 'l1':
                q += sum(abs(u[i, t] - s[t]) for t in range(k)) / k
            else:
                q += sum((u[i, t] - s[t]) ** 2 for t in range(k)) / k
        value += quan * q / bsz
    return value


def dsdh(u, y, index, bank_u, bank_y, binary, w, *, mu=1.0, nu=1.0,
         write=True):
    """DSDH network loss; the banks are written first (unless ``write``).

    ``write=False`` keeps the banks as given: differencing it at banks that
    already hold the batch is the gradient with the bank path stopped.
    Returns (loss, new_bank_u [N, K], new_bank_y [N, C]).
    """
    u, y, w, binary = _f64(u), _f64(y), _f64(w), _f64(binary)
    bu, by = _f64(bank_u).copy(), _f64(bank_y).copy()
    for r, idx in enumerate(np.asarray(index) if write else ()):
        bu[idx] = u[r]
        by[idx] = y[r]
    lik = 0.0
    for i in range(u.shape[0]):
        for j in range(bu.shape[0]):
            theta = 0.5 * float(np.dot(u[i], bu[j]))
            s = 1.0 if np.dot(y[i], by[j]) > 0 else 0.0
            lik += (math.log1p(math.exp(-abs(theta))) + max(theta, 0.0)
                    - s * theta)
    lik /= u.shape[0] * bu.shape[0]
    cl = 0.0
    for r, idx in enumerate(np.asarray(index)):
        for c in range(y.shape[1]):
            pred = sum(binary[idx, k] * w[k, c] for k in range(w.shape[0]))
            cl += (y[r, c] - pred) ** 2
    cl /= y.size
    return lik + mu * cl + nu * float(np.mean(w**2)), bu, by


def dsdh_update(bank_u, bank_y, binary, *, mu=1.0, nu=1.0, eta=55.0,
                dcc_iter=10):
    """DSDH's discrete cyclic coordinate descent; returns (B [N, K], W).

    Written in the reference's [K, N] layout (DeepHash-pytorch DSDH.py
    ``updateBandW``), with the explicit W', B' without row i.
    """
    uu = _f64(bank_u).T  # [K, N]
    yy = _f64(bank_y).T  # [C, N]
    bb = _f64(binary).T.copy()  # [K, N]
    k = bb.shape[0]
    w = np.zeros((k, yy.shape[0]))
    for _ in range(dcc_iter):
        w = np.linalg.inv(bb @ bb.T + nu / mu * np.eye(k)) @ bb @ yy.T
        for i in range(k):
            p = w @ yy + eta / mu * uu
            w_rest = np.delete(w, i, axis=0)
            b_rest = np.delete(bb, i, axis=0)
            bb[i, :] = np.sign(p[i, :] - b_rest.T @ w_rest @ w[i, :])
    return bb.T, w


def daph(u, y, index, other, binary, *, alpha=10.0, lam=0.01, beta=0.01):
    """DAPH top-branch loss of tanh(u) against Z[index] (``other`` [N, K]).

    Written after DeepHash-pytorch DAPH.py ``DAPHLoss.forward`` with
    isTop=1; ``binary`` is B [N, K].
    """
    v = np.tanh(_f64(u))
    z = _f64(other)[np.asarray(index)]
    bq = _f64(binary)[np.asarray(index)]
    n, k = v.shape
    lik = 0.0
    for i in range(n):
        for j in range(n):
            theta = 0.5 * float(np.dot(v[i], z[j]))
            s = 1.0 if np.dot(y[i], y[j]) > 0 else 0.0
            lik += _softplus(theta) - s * theta
    lik /= n * n
    quant = float(np.mean((v - bq) ** 2))
    indep = 0.0
    for a in range(k):
        for b in range(k):
            gram = sum(v[r, a] * v[r, b] for r in range(n)) / n
            indep += (gram - (1.0 if a == b else 0.0)) ** 2
    indep /= k * k
    balance = sum(sum(v[r, a] for r in range(n)) ** 2 for a in range(k)) / k
    return lik + alpha * quant + lam * indep + beta * balance


def daph_update(bank_u, other, binary, other_binary, *, alpha=10.0,
                gamma=10.0):
    """``update_B_and_H`` then Z <- U; returns (B, H, Z)."""
    u, z = _f64(bank_u), _f64(other)
    h = _f64(other_binary)
    b = np.sign(alpha * u + gamma * h)
    h = np.sign(alpha * z + gamma * b)
    return b, h, u.copy()


def _contrastive(x, y, margin):
    """PCDH's pair term over all ordered pairs of the batch."""
    n = x.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            dist = float(np.sum((x[i] - x[j]) ** 2))
            d = 1.0 if np.dot(y[i], y[j]) == 0 else 0.0
            total += (0.5 * (1 - d) * dist
                      + 0.5 * d * max(margin - dist, 0.0) ** 2)
    return total / (n * n)


def pcdh(u, y, w, features, *, alpha=1.0, beta=1.0, multi_label=False):
    """PCDH.py ``PCDHLoss`` with b = sign(tanh u) and m = 2K."""
    u, y, w, f = _f64(u), _f64(y), _f64(w), _f64(features)
    h = np.tanh(u)
    margin = 2.0 * u.shape[1]
    logits = np.sign(h) @ w
    lc = 0.0
    for i in range(u.shape[0]):
        if multi_label:
            lc += sum(_softplus(x) - t * x for x, t in zip(logits[i], y[i]))
        else:  # -log softmax of every positive label, summed
            log_p = _log_softmax(list(logits[i]))
            lc -= sum(t * lp for t, lp in zip(y[i], log_p))
    lc /= u.shape[0]
    return (_contrastive(h, y, margin) + alpha * _contrastive(f, y, margin)
            + beta * lc)
