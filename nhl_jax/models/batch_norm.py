"""BatchNorm whose training statistics may be taken per device.

By default a BatchNorm in a data-parallel step normalises with statistics
of the global batch: XLA partitions the step and all-reduces every
layer's per-channel sums, one after another on the critical path (issue
32: 207 all-reduces in a ResNet-50 step). Under ``per_device_statistics
(G)`` (``--config.sync_batch_stats=false``, with G the devices of the
mesh) a train-mode ``BatchNorm`` instead splits its batch into G
consecutive groups, one per device's shard, and normalises each with its
own statistics, as torch's DistributedDataParallel does without
SyncBatchNorm: nothing crosses devices in the forward or backward pass.
The running averages follow the mean of the groups' statistics, a
reduction that nothing else waits for, which XLA combines with the
gradients' all-reduce.

Outside the context (one group) it is ``nnx.BatchNorm`` itself.
"""

import contextlib
import contextvars

import jax.numpy as jnp
from flax import nnx
from jax import lax

# Groups of the batch that train-mode statistics are taken over, read
# while the step is traced.
_GROUPS = contextvars.ContextVar('batch_norm_groups', default=1)


@contextlib.contextmanager
def per_device_statistics(groups: int):
    """Within it, train-mode ``BatchNorm``s trace with ``groups`` groups.

    Args:
      groups: G, the devices the batch is split over (its rows in G
        consecutive blocks, as ``P('data')`` shards it).
    """
    token = _GROUPS.set(groups)
    try:
        yield
    finally:
        _GROUPS.reset(token)


class BatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` with per-group statistics under the context."""

    def __call__(self, x, use_running_average=None, *, mask=None):
        """Normalises x [B, ..., C]; as ``nnx.BatchNorm`` for one group."""
        groups = _GROUPS.get()
        frozen = (self.use_running_average if use_running_average is None
                  else use_running_average)
        if groups == 1 or frozen or mask is not None:
            return super().__call__(x, use_running_average, mask=mask)
        return self._per_group(x, groups)

    def _per_group(self, x, groups):
        """Train mode, each of ``groups`` blocks of rows with its own stats."""
        if self.axis not in (-1, x.ndim - 1):
            raise ValueError('per-device statistics need the features on '
                             f'the last axis, got axis={self.axis}')
        # [G, B / G, ..., C], in float32 at least, as flax's statistics.
        rows = x.reshape(groups, -1, *x.shape[1:]).astype(
            jnp.promote_types(x.dtype, jnp.float32))
        axes = tuple(range(1, rows.ndim - 1))
        mean = rows.mean(axes, keepdims=True)
        var = jnp.square(rows - mean).mean(axes, keepdims=True)  # two-pass
        self.mean[...] = self._running(self.mean[...], mean)
        self.var[...] = self._running(self.var[...], var)
        y = (rows - mean) * lax.rsqrt(var + self.epsilon)
        channels = (1,) * (rows.ndim - 1) + (-1,)  # [1, ..., 1, C]
        if self.scale is not None:
            y = y * self.scale[...].reshape(channels)
        if self.bias is not None:
            y = y + self.bias[...].reshape(channels)
        return y.reshape(x.shape).astype(self.dtype or y.dtype)

    def _running(self, old, groups):
        """The running average [C] after the groups' [G, 1, ..., C] stats."""
        new = groups.reshape(-1, groups.shape[-1]).mean(0)
        return lax.stop_gradient(self.momentum * old
                                 + (1 - self.momentum) * new)
