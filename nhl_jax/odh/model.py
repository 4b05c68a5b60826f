"""ODH's three networks as one NNX module: hasher, classifier, centres.

- ``hasher``: the (binary or full-precision) backbone, a nested hash layer
  and a BatchNorm over its b_M outputs (the ODH code's hash layer is
  Linear + BatchNorm1d; BatchNorm is per output, so every length is still a
  prefix). Codes h = tanh(output).
- ``classifier``: the warm-up classifier, a full-precision backbone, a
  class-weight matrix W [C, D_c] and a BatchNorm over the logits
  (``ResNet_W``: logits = BN(f W^T)).
- ``centers``: maps W to one centre table per length
  (``nhl_jax.odh.centers``).

Images enter as float [B, H, W, C] in [0, 1] (after augmentation) and are
normalised with the backbone's ``input_mean`` / ``input_std`` if it has
them.

Mixed precision: ``build_model(..., dtype=)`` builds both backbones, the
hash layer, the class weights' product and the BatchNorms with ``dtype`` as
their compute dtype (float32 parameters). The hasher's outputs and the
logits are returned in float32, so ODH's losses stay float32; the centre
tables are computed from W in float32.
"""

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from nhl_jax import models
from nhl_jax.models.batch_norm import BatchNorm
from nhl_jax.models.layers import PARAM_DTYPE
from nhl_jax.models.nested import NestedHashLayer
from nhl_jax.odh import centers as centers_lib
from nhl_jax.types import Array

# torch BatchNorm's momentum 0.1 and eps 1e-5 (flax counts momentum the
# other way round).
_BN = {'momentum': 0.9, 'epsilon': 1e-5}


def normalise(backbone: nnx.Module, x: Array,
              dtype=jnp.float32) -> Array:
    """[0, 1] images -> the backbone's input normalisation, in ``dtype``."""
    return models.preprocess(x * 255.0,
                             getattr(backbone, 'input_mean', None),
                             getattr(backbone, 'input_std', None), dtype)


def _batch_norm(features: int, *, dtype, rngs: nnx.Rngs) -> BatchNorm:
    """torch's BatchNorm1d; statistics in float32 under any ``dtype``."""
    return BatchNorm(features, dtype=dtype, param_dtype=PARAM_DTYPE,
                     rngs=rngs, **_BN)


class Hasher(nnx.Module):
    """Backbone -> nested hash layer -> BatchNorm: outputs [B, b_M]."""

    def __init__(self, backbone: nnx.Module, bits: Sequence[int], *,
                 batch_norm: bool = True, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        """Creates the hasher.

        Args:
          backbone: a module with a ``features`` width, built with the same
            ``dtype``.
          bits: sorted code lengths.
          batch_norm: BatchNorm over the b_M outputs.
          dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters and
            outputs are float32.
          rngs: NNX random streams.
        """
        self.dtype = dtype
        self.backbone = backbone
        self.head = NestedHashLayer(backbone.features, bits, rngs=rngs,
                                    dtype=dtype)
        self.bn = (_batch_norm(bits[-1], dtype=dtype, rngs=rngs)
                   if batch_norm else None)

    def __call__(self, x: Array) -> Array:
        """[0, 1] images [B, H, W, C] -> float32 [B, b_M] (before tanh)."""
        out = self.head(self.backbone(normalise(self.backbone, x,
                                                self.dtype)))
        out = self.bn(out) if self.bn is not None else out
        return out.astype(jnp.float32)  # ODH's losses run in float32


class Classifier(nnx.Module):
    """Backbone features f [B, D] -> logits BN(f W^T) [B, C]."""

    def __init__(self, backbone: nnx.Module, num_classes: int, *,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        """Creates the classifier.

        Args:
          backbone: a module with a ``features`` width, built with the same
            ``dtype``.
          num_classes: C.
          dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters,
            features and logits are float32.
          rngs: NNX random streams.
        """
        self.dtype = dtype
        self.backbone = backbone
        # torch.randn, as ResNet_W initialises W.
        self.w = nnx.Param(nnx.initializers.normal(1.0)(
            rngs.params(), (num_classes, backbone.features), PARAM_DTYPE))
        self.bn = _batch_norm(num_classes, dtype=dtype, rngs=rngs)

    def features(self, x: Array) -> Array:
        """[0, 1] images -> float32 backbone features [B, D]."""
        return self.backbone(normalise(self.backbone, x, self.dtype))

    def logits(self, features: Array) -> Array:
        """Features [B, D] -> float32 logits BN(f W^T) [B, C]."""
        features, w = dtypes.promote_dtype((features, self.w[...]),
                                           dtype=self.dtype)
        return self.bn(features @ w.T).astype(jnp.float32)


class ODHModel(nnx.Module):
    """The hasher, the classifier and the centre module of one run."""

    def __init__(self, hasher: Hasher, classifier: Classifier,
                 centers: nnx.Module):
        self.hasher = hasher
        self.classifier = classifier
        self.centers = centers

    def center_tables(self) -> tuple[Array, ...]:
        """One [C, b_k] centre table per length, from the current W."""
        return self.centers(self.classifier.w[...])


def build_model(*, backbone: str, classifier_backbone: str,
                input_shape: Sequence[int], num_classes: int,
                bits: Sequence[int], centers: str = 'prefix',
                center_hidden: int | None = None, hash_bn: bool = True,
                backbone_kwargs=None, classifier_kwargs=None,
                dtype=jnp.float32, rngs: nnx.Rngs) -> ODHModel:
    """Builds an ``ODHModel`` from registry names.

    Args:
      backbone: the hasher's backbone, a key of ``models.BACKBONES``.
      classifier_backbone: the classifier's backbone (full precision).
      input_shape: (H, W, C).
      num_classes: C.
      bits: sorted code lengths.
      centers: a key of ``centers.CENTERS``.
      center_hidden: hidden width of the centre MLP (None: D_c).
      hash_bn: BatchNorm after the hash layer.
      backbone_kwargs: keyword arguments of the hasher's backbone.
      classifier_kwargs: keyword arguments of the classifier's backbone.
      dtype: computation dtype of both networks (e.g. ``jnp.bfloat16``);
        parameters stay float32.
      rngs: NNX random streams.
    """
    hasher = Hasher(models.get_backbone(backbone, input_shape, rngs=rngs,
                                        dtype=dtype,
                                        **dict(backbone_kwargs or {})),
                    bits, batch_norm=hash_bn, dtype=dtype, rngs=rngs)
    classifier = Classifier(
        models.get_backbone(classifier_backbone, input_shape, rngs=rngs,
                            dtype=dtype, **dict(classifier_kwargs or {})),
        num_classes, dtype=dtype, rngs=rngs)
    table = centers_lib.make_centers(
        centers, classifier.backbone.features, bits, num_classes=num_classes,
        hidden=center_hidden, rngs=rngs)
    return ODHModel(hasher, classifier, table)
