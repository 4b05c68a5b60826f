"""The small batches every base-loss test draws: shapes and label kinds."""

import numpy as np

B, C, K, N = 6, 3, 8, 12
KINDS = ['onehot', 'multihot', 'single_class']


def labels(rng, kind, rows=B):
    """[rows, C] labels: one-hot, multi-hot, or one class (no negatives)."""
    if kind == 'onehot':
        return np.eye(C, dtype=np.float32)[rng.integers(0, C, rows)]
    if kind == 'multihot':
        y = (rng.random((rows, C)) < 0.4).astype(np.float32)
        y[np.arange(rows), rng.integers(0, C, rows)] = 1.0  # >= 1 per row
        return y
    return np.eye(C, dtype=np.float32)[np.zeros(rows, int)]


def batch(seed=0, kind='multihot', scale=1.5):
    """(codes [B, K] float32, labels [B, C], index [B] int32 rows of N)."""
    rng = np.random.default_rng(seed)
    codes = (scale * rng.standard_normal((B, K))).astype(np.float32)
    index = rng.permutation(N)[:B].astype(np.int32)
    return codes, labels(rng, kind), index
