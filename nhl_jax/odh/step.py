"""ODH's optimizers and the pure loss of each stage.

Three stages share one state and one step function (the stage is static):

- ``'warmup'``: the classifier alone, cross-entropy on a strong view.
- ``'exploration'`` (stage 1): L_hc on a weak view + ce_weight_explore *
  CE of the classifier on it.
- ``'aggregation'`` (stage 2): L_hc on the weak view + asd_weight * L_asd
  (strong codes vs stop-gradient weak codes, per same-class group) +
  ce_weight_aggregate * CE on the strong view.

On a nested head every length k has its own centre table and the terms are
summed over the lengths (codes of length b_k are the first b_k outputs).
The classifier's backbone is frozen after warm-up (no gradient, running BN
statistics); its W and BN keep learning, from the CE term and through the
centres. Augmentations run on the device with keys folded from the state's
rng and step, so a resumed run draws the same views.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from nhl_jax.data import augment as augment_lib
from nhl_jax.odh import losses
from nhl_jax.train import step as step_lib

STAGES = ('warmup', 'exploration', 'aggregation')


class Hyper(NamedTuple):
    """The static hyperparameters of the steps (the papers' defaults)."""

    temperature: float = 0.2
    ce_weight_explore: float = 1e-3
    asd_weight: float = 1e-3
    ce_weight_aggregate: float = 1e-4
    n_positive: int = 2
    learn_centers: bool = True
    strong: augment_lib.AugmentParams = augment_lib.AugmentParams()
    weak_strength: float = 0.5


# Gradient groups clipped to norm max_norm as a whole (the ODH code clips
# the centre MLP and the classifier, not the hasher).
_CLIPPED = ('centers', 'classifier')


def group_labels(params, *, warmup: bool, learn_centers: bool = True):
    """Group of every parameter, from its module path.

    Warm-up trains the classifier only; afterwards its backbone is frozen,
    as are the centres when ``learn_centers`` is False.

    Returns:
      A pytree like ``params`` of 'hasher', 'centers', 'classifier' or
      'frozen'.
    """

    def label(path, _):
        top, sub = str(path[0].key), str(path[1].key)
        if warmup:
            return 'classifier' if top == 'classifier' else 'frozen'
        if top == 'classifier' and sub == 'backbone':
            return 'frozen'
        if top == 'centers' and not learn_centers:
            return 'frozen'
        return top

    return jax.tree_util.tree_map_with_path(label, params)


def clip_and_freeze(grads, labels, max_norm: float):
    """Zeroes frozen gradients; clips each ``_CLIPPED`` group's norm.

    torch ``clip_grad_norm_(module.parameters(), max_norm)`` per group:
    g <- g * min(1, max_norm / (||g|| + 1e-6)).
    """
    leaves, treedef = jax.tree.flatten(grads)
    names = treedef.flatten_up_to(labels)
    scale = {}
    for group in _CLIPPED:
        sq = sum(jnp.sum(g * g) for g, n in zip(leaves, names) if n == group)
        scale[group] = jnp.minimum(1.0, max_norm / (jnp.sqrt(sq) + 1e-6))
    out = [jnp.zeros_like(g) if n == 'frozen' else g * scale.get(n, 1.0)
           for g, n in zip(leaves, names)]
    return jax.tree.unflatten(treedef, out)


def make_optimizers(*, learning_rate: float, weight_decay: float,
                    warmup_steps: int, main_steps: int, learn_centers: bool):
    """(warm-up, main) optimizers: Adam with OneCycle (peak learning_rate).

    torch Adam's coupled weight decay, on the trainable parameters only;
    frozen ones get zero gradients (``clip_and_freeze``), so Adam leaves
    them unchanged. Each optimizer's schedule spans its own steps.
    """

    def adam(steps, warmup):
        def trainable(params):
            labels = group_labels(params, warmup=warmup,
                                  learn_centers=learn_centers)
            return jax.tree.map(lambda n: n != 'frozen', labels)

        return step_lib.make_optimizer(
            optax.cosine_onecycle_schedule(max(steps, 1), learning_rate),
            weight_decay=weight_decay, groups=False, decay_mask=trainable)

    return adam(warmup_steps, True), adam(main_steps, False)


def _view(key, images, hyper: Hyper, strength: float):
    """One augmented float view [B, H, W, C] of uint8 images."""
    x = images.astype(jnp.float32) / 255.0
    return augment_lib.augment(key, x, hyper.strong, strength=strength)


def _two_views(key, images, hyper: Hyper):
    """(strong, weak) views, drawn in one call (one compiled augmentation)."""
    x = images.astype(jnp.float32) / 255.0
    b = x.shape[0]
    strength = jnp.concatenate([jnp.ones((b,)),
                                jnp.full((b,), hyper.weak_strength)])
    views = augment_lib.augment(key, jnp.concatenate([x, x]), hyper.strong,
                                strength=strength)
    return views[:b], views[b:]


def _hash_center_terms(model, h, labels, bits, hyper: Hyper):
    """[M] L_hc per length, each with its own centre table."""
    tables = model.center_tables()
    if not hyper.learn_centers:
        tables = jax.lax.stop_gradient(tables)
    return jnp.stack([
        losses.hash_center_loss(h[:, :b], t, labels,
                                temperature=hyper.temperature)
        for b, t in zip(bits, tables)])


def _frozen_logits(model, x):
    """Classifier logits with its backbone frozen (W and BN still learn)."""
    model.classifier.backbone.eval()
    features = jax.lax.stop_gradient(model.classifier.features(x))
    return model.classifier.logits(features)


def _warmup_loss(model, batch, key, bits, hyper: Hyper):
    strong = _view(key, batch['image'], hyper, 1.0)
    classifier = model.classifier
    ce = losses.classification_loss(
        classifier.logits(classifier.features(strong)), batch['label'])
    zeros = jnp.zeros((len(bits),))
    return ce, {'hc': zeros, 'asd': zeros, 'ce': ce}


def _exploration_loss(model, batch, key, bits, hyper: Hyper):
    weak = _view(key, batch['image'], hyper, hyper.weak_strength)
    h = jnp.tanh(model.hasher(weak))
    hc = _hash_center_terms(model, h, batch['label'], bits, hyper)
    ce = losses.classification_loss(_frozen_logits(model, weak),
                                    batch['label'])
    total = jnp.sum(hc) + hyper.ce_weight_explore * ce
    return total, {'hc': hc, 'asd': jnp.zeros_like(hc), 'ce': ce}


def _aggregation_loss(model, batch, key, bits, hyper: Hyper):
    k_views, k_push = jax.random.split(key)
    strong, weak = _two_views(k_views, batch['image'], hyper)
    hs = jnp.tanh(model.hasher(strong))
    ht = jnp.tanh(model.hasher(weak))
    hc = _hash_center_terms(model, ht, batch['label'], bits, hyper)
    push = losses.sample_push(k_push, hs.shape[0] // hyper.n_positive,
                              hyper.n_positive)
    asd = jnp.stack([
        losses.aggregation_distill_loss(hs[:, :b], ht[:, :b], push,
                                        n_positive=hyper.n_positive)
        for b in bits])
    ce = losses.classification_loss(_frozen_logits(model, strong),
                                    batch['label'])
    total = (jnp.sum(hc) + hyper.asd_weight * jnp.sum(asd)
             + hyper.ce_weight_aggregate * ce)
    return total, {'hc': hc, 'asd': asd, 'ce': ce}


_LOSSES = {
    'warmup': _warmup_loss,
    'exploration': _exploration_loss,
    'aggregation': _aggregation_loss,
}


def loss_fn(stage: str, bits, hyper: Hyper):
    """The loss of ``stage`` for ``make_train_step``.

    Augmentation keys are folded from the state's rng and step, so a resumed
    run draws the same views. Returns ``(total, terms)``: [M] hash-centre
    and L_asd terms and the CE term.
    """

    def fn(model, state, batch, consts):
        del consts
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng),
                                 state.step)
        return _LOSSES[stage](model, batch, key, bits, hyper)

    return fn


def grad_transform(stage: str, hyper: Hyper, max_norm: float):
    """Zeroes the gradients frozen in ``stage`` and clips the groups."""

    def fn(grads):
        labels = group_labels(grads, warmup=stage == 'warmup',
                              learn_centers=hyper.learn_centers)
        return clip_and_freeze(grads, labels, max_norm)

    return fn


def step_metrics(new, old, batch, terms, total):
    """The step's metrics (``update_extra``): terms, total, non-finite flag."""
    del old, batch
    return new, dict(terms, loss=total,
                     nonfinite=(~jnp.isfinite(total)).astype(jnp.int32))


def encode(graphdef):
    """``(params, rest, uint8 images) -> h [B, b_M]`` in eval mode."""

    def fn(params, rest, images):
        model = nnx.merge(graphdef, params, rest)
        model.eval()
        return model.hasher(images.astype(jnp.float32) / 255.0)

    return fn


def center_tables(graphdef):
    """``(params, rest) -> tuple of [C, b_k] centre tables``."""

    def fn(params, rest):
        return nnx.merge(graphdef, params, rest).center_tables()

    return fn
