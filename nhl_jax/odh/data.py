"""ODH's stage-2 (aggregation) batches: groups of same-class images.

Each epoch visits every training sample once as an anchor, in an order
seeded by (seed, epoch); an anchor is replaced by ``n_positive`` distinct
images of its class drawn at random (the anchor itself may or may not be
among them), as ``MyCIFAR100_special`` / ``ImageList_special`` of
hly1998/OSH do. A batch of A anchors therefore holds A * n_positive images,
each group of n_positive consecutive rows sharing one class, which is the
layout ``nhl_jax.odh.losses.aggregation_distill_loss`` expects::

    for batch in group_batches(splits.train, 32, n_positive=2, seed=0,
                               epoch=5):
        batch['image']  # [64, H, W, C] uint8, rows 2g and 2g + 1 alike
"""

from collections.abc import Iterator

import grain
import numpy as np

from nhl_jax.data import pipeline


def positive_groups(class_ids: np.ndarray, anchors: int, *,
                    n_positive: int = 2, seed: int, epoch: int) -> np.ndarray:
    """Row indices of one epoch of stage-2 batches.

    Args:
      class_ids: [N] int class of every training row (the argmax of the
        labels; ODH's sampler does the same for multi-label rows).
      anchors: A, anchors per batch.
      n_positive: images drawn per anchor, without replacement.
      seed: non-negative run seed.
      epoch: non-negative epoch number.

    Returns:
      [N // A, A * n_positive] int64 rows; the remainder is dropped.

    Raises:
      ValueError: if a class has fewer than n_positive rows, or A > N.
    """
    class_ids = np.asarray(class_ids)
    n = class_ids.size
    if not 0 < anchors <= n:
        raise ValueError(
            f'anchors per batch must lie in [1, {n}], got {anchors}; lower '
            'the batch size.'
        )
    classes, counts = np.unique(class_ids, return_counts=True)
    if counts.min() < n_positive:
        raise ValueError(
            f'class {classes[counts.argmin()]} has {counts.min()} training '
            f'rows, fewer than n_positive={n_positive}; lower n_positive.'
        )
    rng = np.random.default_rng(pipeline.epoch_seed(seed, epoch))
    order = rng.permutation(n)
    rows = np.empty((n, n_positive), np.int64)
    for c in classes:  # per class: each of its anchors picks n distinct
        members = np.flatnonzero(class_ids == c)
        mine = np.flatnonzero(class_ids[order] == c)
        picks = np.argsort(rng.random((mine.size, members.size)), axis=1)
        rows[mine] = members[picks[:, :n_positive]]
    steps = n // anchors
    return rows[:steps * anchors].reshape(steps, anchors * n_positive)


def group_batches(ds, anchors: int, *, n_positive: int = 2, seed: int,
                  epoch: int, rows: slice = slice(None), start: int = 0,
                  workers: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of stage-2 batches of a training set.

    Args:
      ds: the training set (``ArrayDataset`` or ``FileDataset``).
      anchors: A, anchors per batch (the batch has A * n_positive rows).
      n_positive: same-class images per anchor.
      seed: non-negative run seed.
      epoch: non-negative epoch number.
      rows: the rows of every global batch to load (this process's share).
      start: batches of the epoch to skip.
      workers: processes decoding images (0: inline).

    Yields:
      {'image': [A n, H, W, C] uint8, 'label': [A n, C] float32,
       'index': [A n] int32 row within ``ds``}.
    """
    pipeline.check_source(ds)  # the dataset checks of train_batches
    batches = positive_groups(np.argmax(ds.labels, axis=1), anchors,
                              n_positive=n_positive, seed=seed, epoch=epoch)
    augment_seed = (seed, epoch)
    dataset = grain.MapDataset.source([b[rows] for b in batches]).map(
        lambda index: pipeline.gather_batch(ds, index, augment_seed))
    return pipeline.iterate(dataset[start:], workers, source=ds)


def num_group_batches(n: int, anchors: int) -> int:
    """Batches per epoch of ``group_batches`` for n training rows."""
    return n // anchors
