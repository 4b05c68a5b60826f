"""Independent NumPy reference implementations used by the nhl_jax tests.

Plain, loop-based float64 NumPy written from the formulas of the papers
(NHL, arXiv 2412.08922, and each base loss's own) and checked against the
released PyTorch code (hly1998/NHL ``bit_length/*.py``). It deliberately
does not import JAX or nhl_jax, and favours explicit Python loops over
vectorisation so that it stays independent from the code under test. Speed
is not a goal: use small shapes only.

Notation: ``u`` [B, K] continuous codes, ``y`` [B, C] multi-hot 0/1 labels,
``s_ij = 1`` iff ``y_i . y_j > 0``. ``np.sign`` maps 0 to 0, as torch does.
"""

import numpy as np


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def _sim(y):
    """Pairwise label similarity s_ij in {0, 1}, shape [B, B]."""
    y = _f64(y)
    b = y.shape[0]
    s = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            s[i, j] = 1.0 if np.dot(y[i], y[j]) > 0 else 0.0
    return s


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def dsh(u, y, index, bank_codes, bank_labels, *, alpha=0.1, margin=None):
    """DSH with memory bank.

    u [B,K], y [B,C], index [B] ints, bank_codes [N,K], bank_labels [N,C].
    Returns (loss scalar, new_bank_codes [N,K], new_bank_labels [N,C]); the
    bank is written first.
    """
    u, y = _f64(u), _f64(y)
    bu, by = _f64(bank_codes).copy(), _f64(bank_labels).copy()
    margin = 2.0 * u.shape[1] if margin is None else float(margin)
    for r, idx in enumerate(np.asarray(index)):
        bu[idx] = u[r]
        by[idx] = y[r]
    total, count = 0.0, 0
    for i in range(u.shape[0]):
        for j in range(bu.shape[0]):
            dist = float(np.sum((u[i] - bu[j]) ** 2))
            d = 1.0 if np.dot(y[i], by[j]) == 0 else 0.0
            total += 0.5 * (1.0 - d) * dist + 0.5 * d * max(0.0, margin - dist)
            count += 1
    l1 = total / count
    l2 = alpha * np.mean(np.abs(1.0 - np.abs(u)))
    return l1 + l2, bu, by


def dsh_batch(u, y, *, alpha=0.1, margin=None):
    """DSH over the pairs of the batch (the paper's Eq. 4-5), no bank."""
    u = _f64(u)
    margin = 2.0 * u.shape[1] if margin is None else float(margin)
    n = u.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            dist = float(np.sum((u[i] - u[j]) ** 2))
            d = 1.0 if np.dot(y[i], y[j]) == 0 else 0.0
            total += 0.5 * (1.0 - d) * dist + 0.5 * d * max(0.0, margin - dist)
    return total / (n * n) + alpha * np.mean(np.abs(1.0 - np.abs(u)))


def dtsh(u, y, *, alpha=5.0, lam=1.0):
    """DTSH triplet loss, Theta = u u^T (no 1/2). u [B,K], y [B,C] -> scalar."""
    u = _f64(u)
    s = _sim(y)
    b = u.shape[0]
    theta = u @ u.T
    per_anchor = []
    for i in range(b):
        pos = [j for j in range(b) if s[i, j] == 1]
        neg = [j for j in range(b) if s[i, j] == 0]
        if not pos or not neg:
            continue
        acc = 0.0
        for p in pos:
            for n in neg:
                t = np.clip(theta[i, p] - theta[i, n] - alpha, -100.0, 50.0)
                # softplus(-t); -t <= 100 so exp is finite
                acc += np.log1p(np.exp(-t))
        per_anchor.append(acc / (len(pos) * len(neg)))
    l1 = float(np.mean(per_anchor)) if per_anchor else 0.0
    l2 = lam * np.mean((u - np.sign(u)) ** 2)
    return l1 + l2


def lcdsh(u, y, *, lam=3.0):
    """LCDSH. u [B,K], y [B,C] -> scalar."""
    u = _f64(u)
    s = _sim(y)
    bsg = np.sign(u)
    b = u.shape[0]
    l1 = l2 = 0.0
    for i in range(b):
        for j in range(b):
            st = 2.0 * s[i, j] - 1.0
            phi = np.clip(0.5 * np.dot(u[i], u[j]), -50.0, 50.0)
            phihat = 0.5 * np.dot(bsg[i], bsg[j])
            l1 += np.log(1.0 + np.exp(-st * phi))
            l2 += (_sigmoid(phi) - _sigmoid(phihat)) ** 2
    return l1 / b**2 + lam * l2 / b**2


def _dch_dist(a, c, k):
    """DCH distance between two vectors a, c [K]."""
    cos = np.dot(a, c) / max(np.linalg.norm(a) * np.linalg.norm(c), 1e-4)
    return 0.5 * k * (1.0 - min(cos, 0.99))


def dch(u, y, *, gamma=20.0, lam=0.1):
    """DCH Cauchy loss, class-balanced weights. u [B,K], y [B,C] -> scalar."""
    u = _f64(u)
    s = _sim(y)
    b, k = u.shape
    n_pos, n_neg = s.sum(), (1.0 - s).sum()
    lc = 0.0
    for i in range(b):
        for j in range(b):
            if n_pos > 0 and n_neg > 0:
                w = b * b / n_pos if s[i, j] == 1 else b * b / n_neg
            else:
                w = 1.0
            d = _dch_dist(u[i], u[j], k)
            lc += w * (s[i, j] * np.log(d / gamma) + np.log(1.0 + gamma / d))
    lq = 0.0
    for i in range(b):
        lq += np.log(1.0 + _dch_dist(np.abs(u[i]), np.ones(k), k) / gamma)
    return lc / b**2 + lam * lq / b


def center_targets(y, centers, fill):
    """CSQ/DPN target rule.

    y [B,C], centers [C,K] (+-1), fill [K] (+-1) -> targets [B,K] (+-1).
    A row with exactly one 1 takes centers[argmax]; any other row (multi-label,
    or all-zero) takes sign(sum_c y_c centers_c) with zero entries replaced by
    fill.
    """
    y, centers, fill = _f64(y), _f64(centers), _f64(fill)
    t = np.zeros((y.shape[0], centers.shape[1]))
    for i in range(y.shape[0]):
        if np.sum(y[i] == 1) == 1 and np.sum(y[i] != 0) == 1:
            t[i] = centers[int(np.argmax(y[i]))]
        else:
            ssum = y[i] @ centers
            for k in range(centers.shape[1]):
                t[i, k] = fill[k] if ssum[k] == 0 else np.sign(ssum[k])
    return t


def csq(u, y, centers, fill, *, lam=1e-4):
    """CSQ: BCE of (tanh(u)+1)/2 against (t+1)/2, log clamped at -100.

    u [B,K] -> scalar.
    """
    v = np.tanh(_f64(u))
    t = center_targets(y, centers, fill)
    b, k = v.shape
    lc = 0.0
    with np.errstate(divide="ignore"):
        for i in range(b):
            for c in range(k):
                p, q = 0.5 * (v[i, c] + 1.0), 0.5 * (t[i, c] + 1.0)
                lc += -(q * max(np.log(p), -100.0)
                        + (1.0 - q) * max(np.log(1.0 - p), -100.0))
    lq = np.mean((np.abs(v) - 1.0) ** 2)
    return lc / (b * k) + lam * lq


def dpn(u, y, centers, fill, *, margin=1.0):
    """DPN polarization hinge on raw u.

    u [B,K], centers [C,K], fill [K] -> scalar.
    """
    u = _f64(u)
    t = center_targets(y, centers, fill)
    total = 0.0
    for i in range(u.shape[0]):
        for c in range(u.shape[1]):
            total += max(0.0, margin - u[i, c] * t[i, c])
    return total / u.size


def _normalize(x):
    """torch F.normalize for one vector: x / max(||x||, 1e-12)."""
    return x / max(np.linalg.norm(x), 1e-12)


def mdsh(u, y, centers, *, lam=1e-4):
    """MDSH centre term: BCE on softmax(sqrt(K) cos(u_i, z_c)).

    u [B,K], y [B,C], centers [C,K] -> scalar.
    """
    u, y, z = _f64(u), _f64(y), _f64(centers)
    b, k = u.shape
    n_cls = z.shape[0]
    lc = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(b):
            logits = np.array([
                np.sqrt(k) * np.dot(_normalize(u[i]), _normalize(z[c]))
                for c in range(n_cls)])
            e = np.exp(logits - logits.max())
            p = e / e.sum()
            for c in range(n_cls):
                lc += (y[i, c] * np.log(p[c])
                       + (1.0 - y[i, c]) * np.log(1.0 - p[c]))
    lq = np.mean((np.abs(u) - 1.0) ** 2)
    return -lc / (b * n_cls) + lam * lq


def sp_distill(short, long):
    """SP distillation loss. short [B,Ks], long [B,Kl] (teacher) -> scalar."""
    short, long = _f64(short), _f64(long)
    b = short.shape[0]
    gs, gt = short @ short.T, long @ long.T
    total = 0.0
    for a in range(b):
        rs, rt = _normalize(gs[a]), _normalize(gt[a])
        total += float(np.sum((rt - rs) ** 2))
    return total / b**2


def sylvester_hadamard(k):
    """Sylvester Hadamard matrix [K,K] (as scipy.linalg.hadamard), K = 2^n."""
    if k < 1 or (k & (k - 1)) != 0:
        raise ValueError("k must be a power of 2")
    h = np.ones((1, 1))
    while h.shape[0] < k:
        h = np.block([[h, h], [h, -h]])
    return h


def _restricted_dot(head_grads, bits, i, k):
    """<g_i^k, g_k^k>: the gradients of lengths i and k on bits[k] columns."""
    g = _f64(head_grads)
    return float(np.sum(g[i][:, : bits[k]] * g[k][:, : bits[k]]))


def dominance_weights_paper(head_grads, bits):
    """Reconstructed paper rule.

    head_grads [M,D,Kmax], bits M sorted ints -> [M] summing to M.
    """
    m = len(bits)
    alpha = [1.0]
    for i in range(1, m):  # 0-based i; 1-based index i+1
        a = 1.0
        for k in range(i):  # 0-based k; (m - k) in 1-based is m - (k + 1)
            d = _restricted_dot(head_grads, bits, i, k)
            if d < 0:
                nk2 = _restricted_dot(head_grads, bits, k, k)
                a = min(a, alpha[k] * nk2 / ((m - (k + 1)) * (-d)))
        alpha.append(a)
    alpha = np.array(alpha)
    return alpha * m / alpha.sum()


def dominance_guarantee(head_grads, bits, weights):
    """For each k: <sum_{i>=k} w_i g_i^k, g_k^k>, shape [M].

    Every entry is >= 0 under the paper rule.
    """
    m = len(bits)
    out = np.zeros(m)
    for k in range(m):
        for i in range(k, m):
            out[k] += (float(weights[i])
                       * _restricted_dot(head_grads, bits, i, k))
    return out


def dominance_weights_released(head_grads, bits):
    """Port of model_grand_sd.py's weighting loop (slips S1-S4, no S5).

    Args:
        head_grads: [M, D, Kmax] head-kernel gradients (column c = output c).
        bits: sorted tuple of M ints, bits[-1] == Kmax.

    Returns:
        (weights [M] summing to M,
         anti_flag bool = ws[1] != 1 before normalisation).
    """
    g = _f64(head_grads)
    m, dim = len(bits), g.shape[1]
    # torch Linear weight is [Kmax, D] flattened row-major: our kernel
    # transposed.
    w_grad = [g[k].T.reshape(-1) for k in range(m)]
    grad_dots = [[] for _ in range(m - 1)]
    grad_norm = [[] for _ in range(m - 1)]
    for idx in range(m - 1):
        n = dim * bits[idx]
        for wgh in w_grad[idx + 1:]:
            grad_dots[idx].append(float(np.dot(w_grad[idx][:n], wgh[:n])))
        for wgh in w_grad:
            grad_norm[idx].append(float(np.linalg.norm(wgh[:n])))
    alpha = [[1.0] for _ in range(m - 1)]
    beta = 1.0
    for idx in range(m - 1):
        # slip S1: always the first (shortest) gradient
        short_norm = grad_norm[idx][0]
        thr = beta * short_norm * short_norm / (m - 1)  # slip S2: fixed (m - 1)
        for grad_d in grad_dots[idx]:
            if grad_d < 0 and (-grad_d) > thr:
                alpha[idx].append(thr / (-grad_d))
            else:
                alpha[idx].append(1.0)
    for i in range(m - 1):  # slip S4: clamp to alpha_{j, j+1}
        anchor = alpha[i][1]
        for j in range(2, len(alpha[i])):
            if alpha[i][j] > anchor:
                alpha[i][j] = anchor
    ws = [1.0]
    for idx in range(m - 1):  # slip S3: product over all shorter codes
        w = 1.0
        for jdx in range(idx + 1):
            w = w * alpha[jdx][idx + 1 - jdx]
        ws.append(w)
    anti_flag = bool(m > 1 and ws[1] != 1)
    total = sum(ws)
    return np.array([x * m / total for x in ws]), anti_flag
