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
"""

from collections.abc import Sequence

from flax import nnx

from nhl_jax import models
from nhl_jax.nested import NestedHashLayer
from nhl_jax.odh import centers as centers_lib
from nhl_jax.types import Array

# torch BatchNorm's momentum 0.1 and eps 1e-5 (flax counts momentum the
# other way round).
_BN = {'momentum': 0.9, 'epsilon': 1e-5}


def normalise(backbone: nnx.Module, x: Array) -> Array:
    """[0, 1] images -> the backbone's input normalisation."""
    return models.preprocess(x * 255.0,
                             getattr(backbone, 'input_mean', None),
                             getattr(backbone, 'input_std', None))


class Hasher(nnx.Module):
    """Backbone -> nested hash layer -> BatchNorm: outputs [B, b_M]."""

    def __init__(self, backbone: nnx.Module, bits: Sequence[int], *,
                 batch_norm: bool = True, rngs: nnx.Rngs):
        self.backbone = backbone
        self.head = NestedHashLayer(backbone.features, bits, rngs=rngs)
        self.bn = (nnx.BatchNorm(bits[-1], rngs=rngs, **_BN) if batch_norm
                   else None)

    def __call__(self, x: Array) -> Array:
        """[0, 1] images [B, H, W, C] -> outputs [B, b_M] (before tanh)."""
        out = self.head(self.backbone(normalise(self.backbone, x)))
        return self.bn(out) if self.bn is not None else out


class Classifier(nnx.Module):
    """Backbone features f [B, D] -> logits BN(f W^T) [B, C]."""

    def __init__(self, backbone: nnx.Module, num_classes: int, *,
                 rngs: nnx.Rngs):
        self.backbone = backbone
        # torch.randn, as ResNet_W initialises W.
        self.w = nnx.Param(nnx.initializers.normal(1.0)(
            rngs.params(), (num_classes, backbone.features)))
        self.bn = nnx.BatchNorm(num_classes, rngs=rngs, **_BN)

    def features(self, x: Array) -> Array:
        """[0, 1] images -> backbone features [B, D]."""
        return self.backbone(normalise(self.backbone, x))

    def logits(self, features: Array) -> Array:
        """Features [B, D] -> BN(f W^T) [B, C]."""
        return self.bn(features @ self.w[...].T)


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
                rngs: nnx.Rngs) -> ODHModel:
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
      rngs: NNX random streams.
    """
    hasher = Hasher(models.get_backbone(backbone, input_shape, rngs=rngs,
                                        **dict(backbone_kwargs or {})),
                    bits, batch_norm=hash_bn, rngs=rngs)
    classifier = Classifier(
        models.get_backbone(classifier_backbone, input_shape, rngs=rngs,
                            **dict(classifier_kwargs or {})),
        num_classes, rngs=rngs)
    table = centers_lib.make_centers(
        centers, classifier.backbone.features, bits, num_classes=num_classes,
        hidden=center_hidden, rngs=rngs)
    return ODHModel(hasher, classifier, table)
