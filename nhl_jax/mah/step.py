"""MAH's state and its three jitted pieces: sample Omega, train step, V update.

One outer iteration of MAH (papers.md 3)::

    state = start(state, db_labels)              # sample Omega, r; U = 0
    for epoch in range(epochs):
        for batch in batches of Omega (in Omega's order):
            state, metrics = step(state, batch, db_labels)   # stores U rows
    state, objective = finish(state, db_labels)  # DCC update of every V_k

``db_labels`` [N, C] are the labels of the rows that own a database code
(the "V split", see ``nhl_jax.mah.train``); batches are
{image [B, H, W, C] uint8, label [B, C], index [B] int32 position in Omega,
mask [B] float32 (0 for padding rows of the last batch)}.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from nhl_jax import data, models
from nhl_jax.mah import adsh
from nhl_jax.step import part_labels  # backbone / head parameter groups
from nhl_jax.types import Array

# Optimiser name -> optax factory of the learning rate (or schedule).
OPTIMIZERS = {
    'sgd': optax.sgd,  # the MAH code: torch SGD, no momentum
    'adam': optax.adam,
}


class MAHState(NamedTuple):
    """Everything MAH's jitted functions read and write, as one pytree."""

    step: Array  # [] int32 network updates done
    params: nnx.State  # trainable parameters (nnx.Param)
    rest: nnx.State  # other model variables (e.g. batch statistics)
    opt_state: optax.OptState
    codes: tuple[Array, ...]  # M x [N, b_k] database codes V in {-1, 0, +1}
    queries: tuple[Array, ...]  # M x [S, b_k] stored U = tanh(outputs) of Omega
    omega: Array  # [S] int32 rows of the V split sampled this outer iteration
    ratio: Array  # [] float32 soft-balance ratio r of Omega x database
    rng: Array  # [2] uint32 raw key; split once per outer iteration


class MAHSetup(NamedTuple):
    """The static parts of a MAH run."""

    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    bits: tuple[int, ...]
    weights: tuple[float, ...]  # w_k aligned with bits
    gamma: float
    num_samples: int  # S = |Omega|
    freeze_backbone: bool = False


def make_optimizer(name: str, *, learning_rate: float, weight_decay: float,
                   steps_per_outer: int, decay_after=(), decay_factor=0.1,
                   backbone_learning_rate=None, freeze_backbone=False):
    """SGD or Adam with coupled weight decay and MAH's step decay.

    The rate is multiplied by ``decay_factor`` after each 0-based outer
    iteration listed in ``decay_after`` (the MAH code calls
    ``adjusting_learning_rate(optimizer, iter)`` after iteration ``iter``
    with ``update_list = [10, 20, 30, 40, 50]``).

    Args:
      name: a key of ``OPTIMIZERS``.
      learning_rate: the head's initial rate (and the backbone's, unless
        ``backbone_learning_rate`` is given).
      weight_decay: torch-style L2 added to the gradient.
      steps_per_outer: network updates per outer iteration.
      decay_after: outer iterations after which the rate drops.
      decay_factor: the drop.
      backbone_learning_rate: optional own rate of the backbone.
      freeze_backbone: leave the backbone untouched.

    Returns:
      An ``optax.GradientTransformation`` over HashNet parameters.
    """
    def part(rate):
        schedule = optax.piecewise_constant_schedule(
            rate, {(d + 1) * steps_per_outer: decay_factor
                   for d in decay_after})
        return optax.chain(optax.add_decayed_weights(weight_decay),
                           OPTIMIZERS[name](schedule))

    body = (optax.set_to_zero() if freeze_backbone
            else part(backbone_learning_rate or learning_rate))
    return optax.partition({'backbone': body, 'head': part(learning_rate)},
                           part_labels)


def create_state(*, backbone: nnx.Module, head: str, bits, weights, tx,
                 num_database: int, seed: int, gamma: float = 200.0,
                 num_samples: int = 2000,
                 freeze_backbone: bool = False) -> tuple[MAHSetup, MAHState]:
    """Builds the HashNet with MAH heads and the initial state.

    Args:
      backbone: the (maybe pretrained) backbone module.
      head: a key of ``nhl_jax.heads.HEADS``.
      bits: sorted code lengths.
      weights: one weight per length, shortest first (4 : 2 : 1).
      tx: the optimizer (``make_optimizer``).
      num_database: N, rows that own a database code.
      seed: the run seed (head initialisation and the Omega stream).
      gamma: quantisation weight.
      num_samples: S = |Omega|.
      freeze_backbone: train the heads on fixed features.

    Returns:
      ``(setup, state)``; V starts at zero (``adsh.init_codes``).
    """
    bits = tuple(bits)
    head_key, rng = jax.random.split(jax.random.key(seed))
    model = models.HashNet(backbone, bits, head=head,
                           rngs=nnx.Rngs(params=head_key))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    setup = MAHSetup(graphdef, tx, bits, tuple(float(w) for w in weights),
                     float(gamma), num_samples, freeze_backbone)
    state = MAHState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        rest=rest,
        opt_state=tx.init(params),
        codes=tuple(adsh.init_codes(num_database, b) for b in bits),
        queries=tuple(jnp.zeros((num_samples, b), jnp.float32) for b in bits),
        omega=jnp.zeros((num_samples,), jnp.int32),
        ratio=jnp.zeros((), jnp.float32),
        rng=jax.random.key_data(rng),
    )
    return setup, state


def start_outer(state: MAHState, db_labels: Array, *,
                setup: MAHSetup) -> MAHState:
    """Samples a new Omega (S distinct rows), its ratio r, and clears U."""
    key, sub = jax.random.split(jax.random.wrap_key_data(state.rng))
    n = db_labels.shape[0]
    omega = jax.random.permutation(sub, n)[:setup.num_samples]
    return state._replace(
        omega=omega.astype(jnp.int32),
        ratio=adsh.balance_ratio(db_labels[omega], db_labels),
        queries=jax.tree.map(jnp.zeros_like, state.queries),
        rng=jax.random.key_data(key),
    )


def train_step(state: MAHState, batch, db_labels: Array, *,
               setup: MAHSetup):
    """One network update on a batch of Omega with V fixed.

    Args:
      state: the current ``MAHState``.
      batch: image [B, H, W, C] uint8, label [B, C], index [B] int32
        positions in Omega, mask [B] float32.
      db_labels: [N, C] labels of the V split.
      setup: the static ``MAHSetup``.

    Returns:
      ``(new_state, metrics)``: the weighted total and the [M] losses.
    """
    rows = state.omega[batch['index']]  # [B] database rows
    s_tilde = adsh.soft_similarity(batch['label'], db_labels, state.ratio)

    def loss_fn(params, rest):
        rest = jax.tree.map(lambda v: v, rest)  # see nhl_jax.step.train_step
        model = nnx.merge(setup.graphdef, params, rest)
        if setup.freeze_backbone:
            model.backbone.eval()  # frozen: running BN statistics too
            features = jax.lax.stop_gradient(model.features(batch['image']))
        else:
            features = model.features(batch['image'])
        total, losses, queries = adsh.joint_loss(
            model.head.codes(features), state.codes, s_tilde, rows,
            weights=setup.weights, gamma=setup.gamma, mask=batch['mask'])
        return total, (losses, queries, nnx.state(model, nnx.Not(nnx.Param)))

    (total, (losses, queries, rest)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params, state.rest)
    updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
    # Padding rows repeat the last real row, so they write the same values.
    stored = tuple(q.at[batch['index']].set(jax.lax.stop_gradient(u))
                   for q, u in zip(state.queries, queries))
    new_state = state._replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        rest=rest,
        opt_state=opt_state,
        queries=stored,
    )
    return new_state, {'loss': total, 'losses': losses}


def finish_outer(state: MAHState, db_labels: Array, *, setup: MAHSetup):
    """Updates every head's V by one DCC sweep; returns J per head after it.

    Returns:
      ``(new_state, objective [M])``, J(U, V) of ``adsh.adsh_objective``
      with the new V.
    """
    s_tilde = adsh.soft_similarity(db_labels[state.omega], db_labels,
                                   state.ratio)  # [S, N]
    codes = tuple(
        adsh.dcc_update(v, u, s_tilde, state.omega, gamma=setup.gamma)
        for v, u in zip(state.codes, state.queries))
    objective = jnp.stack([
        adsh.adsh_objective(v, u, s_tilde, state.omega, gamma=setup.gamma)
        for v, u in zip(codes, state.queries)])
    return state._replace(codes=codes), objective


class Compiled(NamedTuple):
    """The jitted functions of a setup."""

    start: Any  # (state, db_labels) -> state
    step: Any  # (state, batch, db_labels) -> (state, metrics)
    finish: Any  # (state, db_labels) -> (state, objective [M])
    encode: Any  # (params, rest, images) -> [B, sum(bits)] pre-tanh


def compile_fns(setup: MAHSetup) -> Compiled:
    """Jits ``start_outer``, ``train_step``, ``finish_outer`` and encoding."""

    def encode(params, rest, images):
        model = nnx.merge(setup.graphdef, params, rest)
        model.eval()
        return jnp.concatenate(model.head.codes(model.features(images)), 1)

    return Compiled(
        start=jax.jit(lambda s, y: start_outer(s, y, setup=setup),
                      donate_argnums=0),
        step=jax.jit(lambda s, b, y: train_step(s, b, y, setup=setup),
                     donate_argnums=0),
        finish=jax.jit(lambda s, y: finish_outer(s, y, setup=setup),
                       donate_argnums=0),
        encode=jax.jit(encode),
    )


def omega_batches(ds, omega, batch_size: int, *, workers: int = 0):
    """Batches of the Omega rows of ``ds``, in Omega's order, padded.

    The MAH code iterates Omega in its sampled order every epoch (a
    ``SubsetSampler``) and keeps the last, smaller batch; here it is
    padded with copies of its last row, masked out of the loss.

    Yields:
      {image, label, index [B] int32 position in Omega, mask [B] float32}.
    """
    subset = type(ds)(*(x[omega] if hasattr(x, 'shape') else x for x in ds))
    for batch in data.eval_batches(subset, batch_size, workers=workers):
        mask = (np.arange(batch_size) < batch['valid']).astype(np.float32)
        yield {'image': batch['image'], 'label': batch['label'],
               'index': batch['index'], 'mask': mask}
