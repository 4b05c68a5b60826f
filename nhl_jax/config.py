"""Validation of a run's configuration, before any work is done.

Every check raises a one-line ``UsageError`` (a ``ValueError``) that names
the bad value, the valid choices and how to fix it; the CLI prints it and
exits. Only ``UsageError`` is caught there, so a bug still shows its
traceback.
"""

import math
import numbers
import os

import jax
from flax import nnx

from nhl_jax import data, distill, heads, losses, models, objective, systems
from nhl_jax.errors import UsageError
from nhl_jax.hparams import check_kwargs as _check_kwargs
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
    """Raises unless ``loss_kwargs`` fit the loss factory's keywords.

    Args:
      method: a key of ``losses.LOSSES``.
      loss_kwargs: hyperparameter name -> value (``config.loss_kwargs``).

    Raises:
      UsageError: an unknown name, or a value of the wrong type.
    """
    _check_kwargs(f'loss {method!r}', losses.LOSSES[method], loss_kwargs,
                  'loss_kwargs')


def check_weighting_kwargs(weighting: str, weighting_kwargs) -> None:
    """Raises unless ``weighting_kwargs`` fit the rule's keywords.

    Args:
      weighting: a key of ``objective.WEIGHTINGS``.
      weighting_kwargs: hyperparameter name -> value.

    Raises:
      UsageError: an unknown name, or a value of the wrong type.
    """
    _check_kwargs(f'weighting {weighting!r}', objective.WEIGHTINGS[weighting],
                  weighting_kwargs, 'weighting_kwargs')


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
    _check_seed(config.seed)
    _choice('compute dtype', config.compute_dtype, COMPUTE_DTYPES)
    if config.get('backbone_learning_rate') is not None:
        _positive(config, ('backbone_learning_rate',))
    for name in ('distill_weight', 'weight_decay'):
        if not config[name] >= 0:
            raise UsageError(f'{name} must be >= 0, got {config[name]!r}.')
    workers = config.get('data_workers')
    if workers is not None and (isinstance(workers, bool)
                                or not isinstance(workers, int)
                                or workers < 0):
        raise UsageError(f'data_workers must be None (auto) or an int >= 0, '
                         f'got {workers!r}.')
    for name in ('top_k', 'devices', 'log_every'):
        if config.get(name) is not None:
            _positive(config, (name,), int)
    _check_profile_steps(config.get('profile_steps'))
    _check_devices(config)
    _check_code_width(config)
    _check_pretrained(config)
    _check_weighting(config)


def _check_weighting(config) -> None:
    kwargs = dict(config.get('weighting_kwargs') or {})
    check_weighting_kwargs(config.weighting, kwargs)
    try:  # the rule's own checks of its values (e.g. static weights)
        objective.get_weighting(config.weighting, tuple(config.bits),
                                **kwargs)
    except (TypeError, ValueError) as e:
        reason = str(e).rstrip('.')
        raise UsageError(
            f'weighting_kwargs {kwargs} do not fit weighting '
            f'{config.weighting!r}: {reason}; fix --config.weighting_kwargs.'
        ) from None


# jax.random.key takes a signed 64-bit int.
_SEED_LIMIT = 2 ** 63


def _check_seed(seed) -> None:
    if (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
            or not 0 <= seed < _SEED_LIMIT):
        raise UsageError(
            f'seed must be an int in [0, 2**63), got {seed!r}; pass e.g. '
            '--seed=0.'
        )


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
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise UsageError(
            f'pretrained weights file {path!r} does not exist; see the README '
            '(pretrained backbones) for how to make it.'
        )
    # Read now, before the run writes anything: a truncated file, another
    # architecture or NaN weights would otherwise fail (or train) later.
    spec = data.get_spec(config.dataset, config.get('data_dir'))
    models.check_pretrained(name, data.spec_image_shape(spec), path,
                            **dict(config.get('backbone_kwargs', {})))


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


def check_workdir(workdir: str, *, create_parents: bool = False) -> None:
    """Raises unless ``workdir`` can be a run directory.

    It must be a directory that this process can write to, or not exist
    yet, in a parent directory that exists and that it can write to. With
    ``create_parents`` (the CLI's default ``runs/<name>``) missing parents
    are allowed; the nearest existing one must be writable.
    """
    if not workdir:
        raise UsageError(
            'workdir is empty; pass --workdir=<directory> or leave it unset.'
        )
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UsageError(
            f'workdir {workdir!r} is a file, not a directory; choose another '
            '--workdir.'
        )
    parent = os.path.dirname(os.path.abspath(workdir))
    while create_parents and not os.path.exists(parent):
        workdir, parent = parent, os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(
            f'workdir parent {parent!r} does not exist; create it or choose '
            'another --workdir.'
        )
    # The run writes config.json first and its results last: a directory it
    # cannot write to would fail after the training, not before.
    exists = os.path.isdir(workdir)
    if not os.access(workdir if exists else parent, os.W_OK | os.X_OK):
        what = (f'workdir {workdir!r}' if exists
                else f'workdir parent {parent!r}')
        raise UsageError(
            f'{what} is not writable; fix its permissions or choose another '
            '--workdir.'
        )


def check_batches(system, spec, splits) -> None:
    """Raises if a round of the run would have no batch.

    Called once the splits are loaded (their sizes are known only then) and
    before anything is written: a batch larger than the training split
    would otherwise fail in the first round, after config.json and the
    checkpoint directory exist.

    Args:
      system: the run's ``nhl_jax.systems.System``.
      spec: the resolved run (``nhl_jax.systems.RunSpec``).
      splits: its loaded ``data.Splits``.

    Raises:
      UsageError: naming the batch size and the largest one that fits.
    """
    for r in range(1, system.schedule(spec).rounds + 1):
        plan = system.plan(spec, splits, r)  # lazy: counts, loads nothing
        if plan.num_batches < 1:
            n = len(splits.train.labels)
            raise UsageError(
                f'batch_size {spec.batch_size} is larger than the {n} '
                f'training images of {spec.dataset}, so a {plan.stage} round '
                f'has no batch; pass --config.batch_size={n} or less.'
            )
