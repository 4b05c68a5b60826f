"""ODH's settings (``config.odh``) and their checks, run before any work.

The fields and their defaults are in nhl_jax/cli/configs/default.py
(``_odh``) and the paper's CIFAR-100 setting in nhl_jax/cli/configs/odh.py.
"""

import os

import numpy as np

from nhl_jax import data, models
from nhl_jax.checks import is_int
from nhl_jax.errors import UsageError
from nhl_jax.odh import centers as centers_lib


def check(config) -> None:
    """Validates ``config.odh`` (the common fields are checked by
    ``nhl_jax.cli.config.check_config``); raises a one-line ``UsageError``."""
    odh = config.odh
    if odh.centers not in centers_lib.CENTERS:
        raise UsageError(f'Unknown odh.centers {odh.centers!r}; choose one '
                         f'of {sorted(centers_lib.CENTERS)}.')
    name = odh.classifier_backbone
    if name is not None and name not in models.BACKBONES:
        raise UsageError(f'Unknown odh.classifier_backbone {name!r}; choose '
                         f'one of {sorted(models.BACKBONES)}.')
    _check_classifier_pretrained(config)
    for field in ('warmup_epochs', 'transition_epoch'):
        if not is_int(odh[field]) or odh[field] < 0:
            raise UsageError(f'odh.{field} must be an int >= 0, got '
                             f'{odh[field]!r}.')
    if not is_int(odh.n_positive) or odh.n_positive < 1:
        raise UsageError(f'odh.n_positive must be an int >= 1, got '
                         f'{odh.n_positive!r}.')
    if config.batch_size % odh.n_positive:
        raise UsageError(
            f'batch_size {config.batch_size} does not split into groups of '
            f'odh.n_positive={odh.n_positive}; use a multiple of it.')
    _check_numbers(odh)


def classifier_name(config) -> str:
    """The warm-up classifier's backbone (default: the dataset's)."""
    return (config.odh.classifier_backbone
            or data.config_spec(config).backbone)


def _check_classifier_pretrained(config) -> None:
    path = config.odh.classifier_pretrained
    if not path:
        return
    name = classifier_name(config)
    if name not in models.PRETRAINED:
        raise UsageError(
            f'classifier backbone {name!r} has no pretrained weights loader; '
            f'choose one of {sorted(models.PRETRAINED)} or leave '
            'odh.classifier_pretrained unset.')
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise UsageError(
            f'odh.classifier_pretrained file {path!r} does not exist; see the '
            'README (pretrained backbones) for how to make it.')
    # Read before the run writes anything (see nhl_jax.cli.config).
    spec = data.config_spec(config)
    models.check_pretrained(name, data.spec_image_shape(spec), path,
                            **dict(config.odh.get('classifier_kwargs', {})))


def _check_numbers(odh) -> None:
    for field in ('ce_weight_explore', 'asd_weight', 'ce_weight_aggregate'):
        if not odh[field] >= 0:
            raise UsageError(f'odh.{field} must be >= 0, got {odh[field]!r}.')
    for field in ('temperature', 'max_norm'):
        if not odh[field] > 0:
            raise UsageError(f'odh.{field} must be > 0, got {odh[field]!r}.')
    if not 0 <= odh.weak_strength <= 1:
        raise UsageError('odh.weak_strength must lie in [0, 1], got '
                         f'{odh.weak_strength!r}.')
    low, high = tuple(odh.crop_scale)
    if not 0 < low <= high <= 1:
        raise UsageError('odh.crop_scale must be (low, high) with 0 < low <= '
                         f'high <= 1, got {tuple(odh.crop_scale)!r}.')
    if not 0 <= odh.flip_prob <= 1:
        raise UsageError(f'odh.flip_prob must lie in [0, 1], got '
                         f'{odh.flip_prob!r}.')


def check_classes(splits, n_positive: int) -> None:
    """Raises if a class has fewer training images than a stage-2 group."""
    counts = np.bincount(splits.train.labels.argmax(1))
    fewest = counts[counts > 0].min()
    if fewest < n_positive:
        raise UsageError(
            f'a class has only {fewest} training images, fewer than '
            f'odh.n_positive={n_positive}; lower odh.n_positive.')
