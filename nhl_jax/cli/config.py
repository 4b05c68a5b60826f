"""Validation of a run's configuration, before any work is done.

Every check raises a one-line ``UsageError`` (a ``ValueError``) that names
the bad value, the valid choices and how to fix it; the CLI prints it and
exits. Only ``UsageError`` is caught there, so a bug still shows its
traceback.
"""

import functools
import json
import math
import numbers
import os

import jax
from flax import nnx

from nhl_jax import data, losses, models, parallel
from nhl_jax.cli import recipes, registry, scaling
from nhl_jax.cli.configs import default as default_config
from nhl_jax.errors import UsageError
from nhl_jax.hparams import check_kwargs as _check_kwargs
from nhl_jax.models import heads, nested
from nhl_jax.models.nested import check_bits
from nhl_jax.nhl import distill, objective
from nhl_jax.train import optim
from nhl_jax.train import writer as writer_lib
from nhl_jax.train.system import RunSpec

COMPUTE_DTYPES = ('float32', 'bfloat16')


@functools.cache
def _defaults():
    """The shipped default config: the schema, and every field's default."""
    return default_config.get_config()


def field(config, name: str):
    """``config.<name>``, or its default when a config file lacks the field.

    The defaults are written once, in ``configs/default.py``; a config
    that does not derive from it (an older file) gets them from there.
    """
    return config[name] if name in config else _defaults()[name]


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
    """Validates a training config (see nhl_jax/cli/configs/default.py).

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
    _choice('method', config.method, registry.methods())
    _choice('head', field(config, 'head'), heads.HEADS)
    _choice('head_init', field(config, 'head_init'), nested.HEAD_INITS)
    _choice('dataset', config.dataset, data.DATASETS)
    # Needs a data_dir? Options of the right values, that the dataset takes?
    data.config_spec(config)
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
    _choice('compute dtype', field(config, 'compute_dtype'), COMPUTE_DTYPES)
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
    for name in ('top_k', 'devices', 'log_every', 'per_device_batch_size',
                 'lr_reference_batch'):
        if config.get(name) is not None:
            _positive(config, (name,), int)
    _check_lr_scaling(config)
    _check_profile_steps(config.get('profile_steps'))
    _check_optimizer(config)
    writer_lib.parse_writers(field(config, 'writers'))
    for name in ('plots', 'sync_batch_stats'):
        if not isinstance(field(config, name), bool):
            raise UsageError(f'{name} must be true or false, got '
                             f'{field(config, name)!r}.')
    _check_cache(field(config, 'compilation_cache'))
    _check_devices(config)
    _check_code_width(config)
    _check_pretrained(config)
    _check_weighting(config)


def _check_optimizer(config) -> None:
    """The recipe, optimizer and step-decay fields."""
    _choice('recipe', field(config, 'recipe'), recipes.RECIPES)
    _choice('optimizer', field(config, 'optimizer'), optim.OPTIMIZERS)
    momentum = field(config, 'momentum')
    if (isinstance(momentum, bool) or not isinstance(momentum, (int, float))
            or not 0 <= momentum < 1):
        raise UsageError(f'momentum must be in [0, 1), got {momentum!r}.')
    factor = field(config, 'lr_decay_factor')
    if (isinstance(factor, bool) or not isinstance(factor, (int, float))
            or not 0 < factor <= 1):
        raise UsageError(
            f'lr_decay_factor must be in (0, 1], got {factor!r}.')
    if field(config, 'lr_decay_every') is not None:
        _positive({'lr_decay_every': field(config, 'lr_decay_every')},
                  ('lr_decay_every',), int)
    epochs = field(config, 'lr_decay_epochs')
    if not (isinstance(epochs, (tuple, list)) and all(
            isinstance(e, int) and not isinstance(e, bool) and e > 0
            for e in epochs)):
        raise UsageError(
            f'lr_decay_epochs must be positive epochs, e.g. '
            f'--config.lr_decay_epochs=50,80; got {epochs!r}.')


def _check_lr_scaling(config) -> None:
    _choice('lr_scaling', field(config, 'lr_scaling'), scaling.LR_SCALINGS)
    if (config.get('lr_reference_batch') is not None
            and field(config, 'lr_scaling') != 'linear'):
        raise UsageError(
            'lr_reference_batch is the batch of --config.lr_scaling=linear; '
            'pass that too or leave lr_reference_batch unset.')


def _check_cache(folder) -> None:
    if folder is not None and (not isinstance(folder, str)
                               or not folder.strip()):
        raise UsageError(
            f'compilation_cache must be a folder or off, got {folder!r}; '
            'pass e.g. --config.compilation_cache=off.')


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
    name = config.backbone or data.config_spec(config).backbone
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
    spec = data.config_spec(config)
    models.check_pretrained(name, data.spec_image_shape(spec), path,
                            **dict(field(config, 'backbone_kwargs')))


def _check_devices(config) -> None:
    available = jax.device_count()
    devices = config.get('devices') or available
    if devices > available:
        raise UsageError(
            f'devices={devices} but {available} device(s) exist; pass at '
            f'most {available} or leave it unset for all.'
        )
    # A per-device batch splits by construction (scaling.apply).
    if config.get('per_device_batch_size') is None and (
            config.batch_size % devices):
        raise UsageError(
            f'batch_size {config.batch_size} does not split over {devices} '
            f'devices; use a multiple of {devices}.'
        )


def _check_code_width(config) -> None:
    """The longest code must not be wider than the backbone's feature."""
    spec = data.config_spec(config)
    shape = data.spec_image_shape(spec)
    try:
        backbone = nnx.eval_shape(lambda: models.get_backbone(
            config.backbone or spec.backbone, shape,
            rngs=nnx.Rngs(0), **dict(field(config, 'backbone_kwargs'))))
    except TypeError as e:  # an unknown backbone keyword argument
        raise UsageError(
            f'backbone_kwargs do not fit the backbone: {e}.') from None
    if max(config.bits) > backbone.features:
        raise UsageError(
            f'longest code ({max(config.bits)} bits) is wider than the '
            f'{config.backbone or spec.backbone} feature '
            f'({backbone.features}); use bits <= {backbone.features}.'
        )


def _say(line: str) -> None:
    if parallel.is_main_process():
        print(line, flush=True)


def _as_json(value):
    return json.loads(json.dumps(value))  # tuples -> lists, ConfigDicts too


def _recipe(config) -> dict:
    """The resolved training recipe, as results.json records it."""
    names = ('optimizer', 'learning_rate', 'weight_decay', 'batch_size',
             'lr_decay_every', 'lr_decay_epochs', 'lr_decay_factor')
    return {'name': field(config, 'recipe'),
            **_as_json({name: field(config, name) for name in names})}


def resolve(config) -> RunSpec:
    """Validates a run config and resolves it into an explicit ``RunSpec``.

    Every default that depends on something else (the dataset's backbone
    and mAP cut-off, the system of ``--method``, the training recipe) is
    worked out here, once; the cut-off of your own data
    (``data.OWN_DATA``) is said in one line. ``recipe='reference'`` sets
    the optimizer, rate, weight decay, batch and decay of every one of
    those fields still at its ``configs/default.py`` value (a field set to
    anything else wins; ``nhl_jax.cli.recipes``), a per-device batch and
    ``lr_scaling`` set the global batch and the rates
    (``nhl_jax.cli.scaling``), and ``spec.config`` (config.json) holds the
    resolved values.

    Args:
      config: a ConfigDict as in ``nhl_jax/cli/configs/default.py``.

    Raises:
      UsageError: naming the first invalid field and how to fix it.
    """
    check_config(config)  # the method first, among the rest
    resolved = scaling.apply(recipes.apply(config, _defaults()), _defaults(),
                             recipes.batch_size(config, _defaults()))
    if resolved is not config:  # the recipe's batch must split over devices
        config = resolved
        check_config(config)
    system = registry.system_of(config.method)
    head = field(config, 'head')
    if head not in system.heads:
        raise UsageError(
            f'head {head!r} is only used by --method=mah; '
            f'{system.name} trains {" or ".join(system.heads)} (leave --head '
            'unset or pass --head=nested).')
    system.check(config)
    dataset = data.config_spec(config)

    def get(name):
        return field(config, name)

    if get('top_k') is None and config.dataset in data.OWN_DATA:
        _say(f'{config.dataset}: mAP@all (your own data has no usual '
             'cut-off; --config.top_k=K scores mAP@K).')

    return RunSpec(
        system=system.name, method=config.method, dataset=config.dataset,
        data_dir=get('data_dir'), backbone=config.backbone or dataset.backbone,
        backbone_kwargs=dict(get('backbone_kwargs') or {}),
        pretrained=get('pretrained') or None,
        bits=check_bits(tuple(config.bits)),
        single_length=bool(get('single_length')), seed=config.seed,
        batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
        data_workers=get('data_workers'), devices=get('devices'),
        sync_batch_stats=get('sync_batch_stats'),
        epochs=config.epochs, eval_every=config.eval_every,
        patience=config.patience,
        top_k=config.top_k if get('top_k') is not None else dataset.top_k,
        learning_rate=config.learning_rate, weight_decay=config.weight_decay,
        backbone_learning_rate=get('backbone_learning_rate'),
        optimizer=get('optimizer'), momentum=float(get('momentum')),
        lr_decay_epochs=optim.decay_epochs(
            config.epochs, every=get('lr_decay_every'),
            at=get('lr_decay_epochs')),
        lr_decay_factor=float(get('lr_decay_factor')),
        recipe=_recipe(config),
        freeze_backbone=bool(get('freeze_backbone')),
        compute_dtype=get('compute_dtype'),
        log_every=get('log_every'),
        writers=writer_lib.parse_writers(get('writers')),
        plots=bool(get('plots')),
        profile_steps=(None if get('profile_steps') is None
                       else tuple(int(s) for s in config.profile_steps)),
        options=system.options(config), config=_as_json(config.to_dict()))
