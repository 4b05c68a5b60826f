"""MAH's state fields and its pure pieces: draw Omega, loss, V update.

One outer iteration of MAH, as the trainer runs it::

    state = begin(state, db_labels)          # sample Omega, r; U = 0
    for epoch in range(epochs):
        for batch in batches of Omega (in Omega's order):
            state = step(state, batch, db_labels)   # stores U rows
    state, objective = end(state, db_labels)   # DCC update of every V_k

``db_labels`` [N, C] are the labels of the rows that own a database code
(the "V split", ``config.mah.v_split``); batches are {image [B, H, W, C]
uint8, label [B, C], index [B] int32 position in Omega, mask [B] float32
(0 for padding rows of the last batch)}.
"""

from typing import NamedTuple

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from nhl_jax.data import pipeline
from nhl_jax.mah import adsh
from nhl_jax.train import step as step_lib
from nhl_jax.types import Array


class MAHExtra(NamedTuple):
    """MAH's fields of the train state."""

    codes: tuple[Array, ...]  # M x [N, b_k] database codes V in {-1, 0, +1}
    queries: tuple[Array, ...]  # M x [S, b_k] stored U = tanh(outputs) of Omega
    omega: Array  # [S] int32 rows of the V split sampled this outer iteration
    ratio: Array  # [] float32 soft-balance ratio r of Omega x database


class MAHStatic(NamedTuple):
    """MAH's static hyperparameters."""

    weights: tuple[float, ...]  # w_k aligned with bits
    gamma: float
    num_samples: int  # S = |Omega|


def init_extra(bits, *, num_database: int, num_samples: int) -> MAHExtra:
    """V = 0 (``adsh.init_codes``), U = 0 and an empty Omega."""
    return MAHExtra(
        codes=tuple(adsh.init_codes(num_database, b) for b in bits),
        queries=tuple(jnp.zeros((num_samples, b), jnp.float32) for b in bits),
        omega=jnp.zeros((num_samples,), jnp.int32),
        ratio=jnp.zeros((), jnp.float32))


def decay_schedule(rate: float, *, steps_per_outer: int, decay_after=(),
                   decay_factor: float = 0.1):
    """MAH's step decay: x ``decay_factor`` after each listed iteration.

    The MAH code calls ``adjusting_learning_rate(optimizer, iter)`` after
    0-based outer iteration ``iter`` with ``update_list = [10, 20, 30, 40,
    50]``.
    """
    return optax.piecewise_constant_schedule(
        rate, {(d + 1) * steps_per_outer: decay_factor for d in decay_after})


def make_optimizer(name: str, *, learning_rate: float, weight_decay: float,
                   steps_per_outer: int, decay_after=(), decay_factor=0.1,
                   backbone_learning_rate=None, freeze_backbone=False):
    """SGD or Adam with coupled weight decay and MAH's step decay.

    Args:
      name: a key of ``nhl_jax.train.step.OPTIMIZERS``.
      learning_rate: the heads' initial rate (and the backbone's, unless
        ``backbone_learning_rate`` is given).
      weight_decay: torch-style L2 added to the gradient.
      steps_per_outer: network updates per outer iteration.
      decay_after: 0-based outer iterations after which the rate drops.
      decay_factor: the drop.
      backbone_learning_rate: optional own rate of the backbone.
      freeze_backbone: leave the backbone untouched.

    Returns:
      An ``optax.GradientTransformation`` over HashNet parameters.
    """
    def schedule(rate):
        return decay_schedule(rate, steps_per_outer=steps_per_outer,
                              decay_after=decay_after,
                              decay_factor=decay_factor)

    return step_lib.make_optimizer(
        schedule(learning_rate), weight_decay=weight_decay, optimizer=name,
        backbone_learning_rate=schedule(backbone_learning_rate
                                        or learning_rate),
        freeze_backbone=freeze_backbone)


def start_outer(state, db_labels: Array, *, num_samples: int):
    """Samples a new Omega (S distinct rows), its ratio r, and clears U.

    Returns:
      ``(state, {})``.
    """
    key, sub = jax.random.split(jax.random.wrap_key_data(state.rng))
    n = db_labels.shape[0]
    omega = jax.random.permutation(sub, n)[:num_samples]
    extra = state.extra._replace(
        omega=omega.astype(jnp.int32),
        ratio=adsh.balance_ratio(db_labels[omega], db_labels),
        queries=jax.tree.map(jnp.zeros_like, state.extra.queries))
    return state._replace(extra=extra, rng=jax.random.key_data(key)), {}


def loss_fn(static: MAHStatic, *, freeze_backbone: bool = False):
    """MAH's joint loss on a batch of Omega with V fixed (``make_train_step``).

    Returns ``(total, (losses [M], U rows of the batch))``.
    """

    def fn(model, state, batch, db_labels):
        extra = state.extra
        rows = extra.omega[batch['index']]  # [B] database rows
        s_tilde = adsh.soft_similarity(batch['label'], db_labels, extra.ratio)
        features = step_lib.hashnet_features(model, batch['image'],
                                             frozen=freeze_backbone)
        outputs = tuple(o.astype(jnp.float32)
                        for o in model.head.codes(features))
        total, losses, queries = adsh.joint_loss(
            outputs, extra.codes, s_tilde, rows, weights=static.weights,
            gamma=static.gamma, mask=batch['mask'])
        return total, (losses, queries)

    return fn


def store_queries(new, old, batch, aux, total):
    """Writes the batch's U rows into the state (``update_extra``)."""
    del old
    losses, queries = aux
    # Padding rows repeat the last real row, so they write the same values.
    stored = tuple(q.at[batch['index']].set(jax.lax.stop_gradient(u))
                   for q, u in zip(new.extra.queries, queries))
    return new._replace(extra=new.extra._replace(queries=stored)), {
        'loss': total, 'losses': losses,
        'nonfinite': (~jnp.isfinite(losses)).astype(jnp.int32)}


def finish_outer(state, db_labels: Array, *, gamma: float):
    """Updates every head's V by one DCC sweep; J per head after it.

    Returns:
      ``(state, {'objective': [M], 'nonfinite': [M]})``, J(U, V) of
      ``adsh.adsh_objective`` with the new V.
    """
    extra = state.extra
    s_tilde = adsh.soft_similarity(db_labels[extra.omega], db_labels,
                                   extra.ratio)  # [S, N]
    codes = tuple(
        adsh.dcc_update(v, u, s_tilde, extra.omega, gamma=gamma)
        for v, u in zip(extra.codes, extra.queries))
    objective = jnp.stack([
        adsh.adsh_objective(v, u, s_tilde, extra.omega, gamma=gamma)
        for v, u in zip(codes, extra.queries)])
    return state._replace(extra=extra._replace(codes=codes)), {
        'objective': objective,
        'nonfinite': (~jnp.isfinite(objective)).astype(jnp.int32)}


def encode_codes(model, images: Array) -> Array:
    """Every head's pre-tanh code side by side: [B, sum(bits)]."""
    return jnp.concatenate(model.head.codes(model.features(images)), 1)


def omega_batches(ds, omega, batch_size: int, *, workers=0,
                  rows: slice = slice(None), start: int = 0):
    """Batches of the Omega rows of ``ds``, in Omega's order, padded.

    The MAH code iterates Omega in its sampled order every epoch (a
    ``SubsetSampler``) and keeps the last, smaller batch; here it is
    padded with copies of its last row, masked out of the loss.

    Args:
      ds: the V split.
      omega: [S] rows of ``ds``, in their sampled order.
      batch_size: B, the global batch.
      workers: who builds the batches (``data.train_batches``).
      rows: the rows of every global batch to load, e.g. this process's
        share (``parallel.process_slice``): images are decoded for these
        rows only.
      start: batches to skip, undecoded (resuming mid-iteration).

    Yields:
      {image, label, index [B'] int32 position in Omega, mask [B'] float32},
      B' = the rows of ``rows`` (B by default).
    """
    subset = type(ds)(*(x[omega] if hasattr(x, 'shape') else x for x in ds))
    size = len(omega)

    def gather(j):
        positions = (j * batch_size + np.arange(batch_size))[rows]
        # Padding positions read Omega's last row (eval_batches' 'edge').
        batch = pipeline.gather_batch(subset, np.minimum(positions, size - 1))
        batch['mask'] = (positions < size).astype(np.float32)
        return batch

    count = -(-size // batch_size)
    dataset = grain.MapDataset.source(range(count)).map(gather)
    return pipeline.iterate(dataset[start:], workers, source=subset)
