"""Validation of a run's configuration, before any work is done.

Every check raises a one-line ``UsageError`` (a ``ValueError``) that names
the bad value, the valid choices and how to fix it; the CLI prints it and
exits. Only ``UsageError`` is caught there, so a bug still shows its
traceback.
"""

import inspect
import math
import os

import jax
from flax import nnx

from nhl_jax import data, distill, heads, losses, models, objective, systems
from nhl_jax.errors import UsageError
from nhl_jax.nested import check_bits

COMPUTE_DTYPES = ('float32', 'bfloat16')


def _choice(kind: str, value, valid) -> None:
    if value not in valid:
        raise UsageError(
            f'Unknown {kind} {value!r}; choose one of {sorted(valid)}.'
        )


def _positive(config, names, kind=(int, float)) -> None:
    for name in names:
        value = config[name]
        if (isinstance(value, bool) or not isinstance(value, kind)
                or not math.isfinite(value) or value <= 0):
            raise UsageError(
                f'{name} must be a positive number, got {value!r}.'
            )


def check_loss_kwargs(method: str, loss_kwargs) -> None:
    """Raises if ``loss_kwargs`` are not keyword arguments of the factory."""
    params = inspect.signature(losses.LOSSES[method]).parameters
    unknown = sorted(set(loss_kwargs) - set(params))
    if unknown:
        raise UsageError(
            f'loss {method!r} has no hyperparameter(s) {unknown}; valid: '
            f'{sorted(params)}.'
        )


def check_config(config) -> None:
    """Validates a training config (see experiments/configs/default.py).

    Args:
      config: the ``ml_collections.ConfigDict`` of a run.

    Raises:
      UsageError: naming the first invalid field and its valid values.
    """
    try:
        _check_fields(config)
    except UsageError:
        raise
    except ValueError as e:  # from check_bits, the registries' getters
        raise UsageError(str(e)) from None


def _check_fields(config) -> None:
    _choice('method', config.method, systems.methods())
    _choice('head', config.get('head', 'nested'), heads.HEADS)
    _choice('dataset', config.dataset, data.DATASETS)
    data.get_spec(config.dataset, config.get('data_dir'))  # needs data_dir?
    if config.backbone is not None:
        _choice('backbone', config.backbone, models.BACKBONES)
    _choice('weighting', config.weighting, objective.WEIGHTINGS)
    _choice('distillation topology', config.topology, distill.TOPOLOGIES)
    check_bits(config.bits)
    if config.method in losses.LOSSES:
        check_loss_kwargs(config.method, dict(config.loss_kwargs))
    _positive(config, ('epochs', 'eval_every', 'batch_size',
                       'eval_batch_size', 'patience'), int)
    _positive(config, ('learning_rate',))
    _choice('compute dtype', config.compute_dtype, COMPUTE_DTYPES)
    if config.get('backbone_learning_rate') is not None:
        _positive(config, ('backbone_learning_rate',))
    for name in ('distill_weight', 'weight_decay'):
        if not config[name] >= 0:
            raise UsageError(f'{name} must be >= 0, got {config[name]!r}.')
    workers = config.get('data_workers', 0)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UsageError(f'data_workers must be an int >= 0, got {workers!r}.')
    for name in ('top_k', 'devices', 'log_every'):
        if config.get(name) is not None:
            _positive(config, (name,), int)
    _check_profile_steps(config.get('profile_steps'))
    _check_devices(config)
    _check_code_width(config)
    _check_pretrained(config)
    objective.get_weighting(config.weighting, tuple(config.bits),
                            **dict(config.get('weighting_kwargs') or {}))


def _check_profile_steps(steps) -> None:
    if steps is None:
        return
    ok = (isinstance(steps, (tuple, list)) and len(steps) == 2
          and all(isinstance(s, int) and not isinstance(s, bool)
                  for s in steps) and 1 <= steps[0] <= steps[1])
    if not ok:
        raise UsageError(
            f'profile_steps must be two global steps start,stop with 1 <= '
            f'start <= stop (e.g. --config.profile_steps=10,20), got '
            f'{steps!r}.')


def _check_pretrained(config) -> None:
    path = config.get('pretrained')
    if not path:
        return
    name = (config.backbone
            or data.get_spec(config.dataset, config.get('data_dir')).backbone)
    if name not in models.PRETRAINED:
        raise UsageError(
            f'backbone {name!r} has no pretrained weights loader; choose one '
            f'of {sorted(models.PRETRAINED)} or leave pretrained unset.'
        )
    if not os.path.isfile(path):
        raise UsageError(
            f'pretrained weights file {path!r} does not exist; see the README '
            '(pretrained backbones) for how to make it.'
        )


def _check_devices(config) -> None:
    available = jax.device_count()
    devices = config.get('devices') or available
    if devices > available:
        raise UsageError(
            f'devices={devices} but {available} device(s) exist; pass at '
            f'most {available} or leave it unset for all.'
        )
    if config.batch_size % devices:
        raise UsageError(
            f'batch_size {config.batch_size} does not split over {devices} '
            f'devices; use a multiple of {devices}.'
        )


def _check_code_width(config) -> None:
    """The longest code must not be wider than the backbone's feature."""
    spec = data.get_spec(config.dataset, config.get('data_dir'))
    shape = data.spec_image_shape(spec)
    try:
        backbone = nnx.eval_shape(lambda: models.get_backbone(
            config.backbone or spec.backbone, shape,
            rngs=nnx.Rngs(0), **dict(config.get('backbone_kwargs', {}))))
    except TypeError as e:  # an unknown backbone keyword argument
        raise UsageError(
            f'backbone_kwargs do not fit the backbone: {e}.') from None
    if max(config.bits) > backbone.features:
        raise UsageError(
            f'longest code ({max(config.bits)} bits) is wider than the '
            f'{config.backbone or spec.backbone} feature '
            f'({backbone.features}); use bits <= {backbone.features}.'
        )


def check_workdir(workdir: str) -> None:
    """Raises unless ``workdir``'s parent directory exists."""
    parent = os.path.dirname(os.path.abspath(workdir))
    if not os.path.isdir(parent):
        raise UsageError(
            f'workdir parent {parent!r} does not exist; create it or choose '
            'another --workdir.'
        )
