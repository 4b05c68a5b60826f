"""``nhl-jax train``: trains hash codes and reports per-length mAP.

    nhl-jax train --method=dpn [--dataset=mnist5k] [--bits=8,16,32]
    python experiments/run.py --method=dpn            # the same, from a clone

``--config`` takes a config file or the name of a shipped one (``default``,
``paper:cifar10``, ``mah``, ``odh``; ``nhl_jax/cli/configs``). The command
line's flags and checks live here; ``train_and_evaluate(config, workdir)``
resolves a config into its system and spec and hands them to the generic
trainer (``nhl_jax.train.run_training``).
"""

import contextlib
import logging as std_logging
import os
import re
import signal
import sys
import warnings

from absl import app, flags, logging
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from nhl_jax import compiler, data, errors, models, parallel, train
from nhl_jax.cli import command, configs, scaling
from nhl_jax.cli import config as config_lib
from nhl_jax.cli import registry as systems
from nhl_jax.models import heads
from nhl_jax.nhl import objective
from nhl_jax.train import phases, traces

FLAGS = flags.FLAGS
# Paths under it are shown from the package's name on (nhl_jax/cli/...).
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
_DEFAULT_CONFIG = configs.path('default')
# Config fields that take new keys from the command line
# (--config.loss_kwargs.margin=2.0): hyperparameters by name, which
# nhl_jax.cli.config checks against the loss's or the rule's signature. Every
# other override must name a field of the config file.
_OPEN_FIELDS = ('loss_kwargs', 'weighting_kwargs')
_OVERRIDE = re.compile(r'-{1,2}(?:no)?config\.([^=]+)')
# Flags that set the config field of the same name.
_OVERRIDES = ('method', 'dataset', 'data_dir', 'backbone', 'head', 'bits',
              'weighting', 'distill_weight', 'epochs', 'seed', 'devices',
              'single_length')


def define_flags(flag_values=FLAGS, argv=None):
    """Defines the command line's flags on ``flag_values``.

    Tests define them on a fresh ``flags.FlagValues`` per command line, to
    check command lines in-process. The help strings list the registries'
    names, so a newly registered loss, dataset or backbone shows up in
    ``--help``.

    Args:
      flag_values: where to define the flags.
      argv: the command line whose ``--config.<field>`` overrides get flags
        (None: ``sys.argv``, read when the flags are parsed).

    Raises:
      UsageError: an override under a field the config does not have
        (``--config.nofield.sub=1``), found while loading the config file.
    """
    fv = {'flag_values': flag_values}
    with _config_errors(sys.argv if argv is None else argv):
        # Unlocked and accepting new attributes so that the open fields
        # take new keys; parse() refuses new keys anywhere else.
        config_flags.DEFINE_config_file(
            'config', _DEFAULT_CONFIG,
            'Python config file, or a shipped config: '
            f'{", ".join(configs.SHIPPED)} (default: default); '
            '--config.<field>=<value> overrides any of its fields, and '
            '--config.loss_kwargs.<name> / --config.weighting_kwargs.<name> '
            "set the loss's / weighting's hyperparameters.",
            lock_config=False, accept_new_attributes=True, sys_argv=argv,
            **fv)
    flags.DEFINE_string(
        'workdir', None, 'Run directory (default: runs/<dataset>_<method>).',
        **fv)
    flags.DEFINE_bool('resume', False, 'Continue the run in --workdir.', **fv)
    flags.DEFINE_string(
        'coordinator_address', None,
        'Multi-host: host:port of process 0 (or env NHL_COORDINATOR_ADDRESS).',
        **fv)
    flags.DEFINE_string(
        'num_processes', None,
        'Multi-host: number of processes, or "auto" on TPU pods / SLURM.',
        **fv)
    flags.DEFINE_integer('process_id', None,
                         'Multi-host: rank of this process.', **fv)
    methods = systems.methods()
    base = sorted(m for m, system in methods.items() if system == 'nhl')
    others = sorted(m for m, system in methods.items() if system != 'nhl')
    flags.DEFINE_string(
        'method', None,
        f'Base loss, trained by NHL: {_names(base)} (its hyperparameters: '
        f'--config.loss_kwargs.<name>=...); or another system: '
        f'{_names(others)}.', **fv)
    flags.DEFINE_string(
        'dataset', None,
        f'Dataset (nhl_jax.data.DATASETS): {_names(data.DATASETS)}; tfds '
        'and list-file datasets need --data_dir.', **fv)
    flags.DEFINE_string(
        'data_dir', None, 'tfds dir (CIFAR-10) or list-file root.', **fv)
    flags.DEFINE_string(
        'backbone', None,
        f'Backbone: {_names(models.BACKBONES)} (default: the dataset\'s).',
        **fv)
    by_head = {h: [name for name, system in systems.SYSTEMS.items()
                   if h in system.heads] for h in heads.HEADS}
    flags.DEFINE_string(
        'head', None, 'Hash head, and the systems that train it: ' + ', '.join(
            f'{h} ({"/".join(names)})' for h, names in by_head.items())
        + '.', **fv)
    flags.DEFINE_list('bits', None, 'Code lengths, e.g. 8,16,32.', **fv)
    flags.DEFINE_string(
        'weighting', None,
        f'Per-length weighting: {_names(objective.WEIGHTINGS)} (its '
        'hyperparameters: --config.weighting_kwargs.<name>=...).', **fv)
    flags.DEFINE_float('distill_weight', None,
                       'Distillation weight (0: off).', **fv)
    flags.DEFINE_integer('epochs', None, 'Maximum epochs.', **fv)
    flags.DEFINE_integer('seed', None, 'Seed of split, init, order.', **fv)
    flags.DEFINE_integer(
        'devices', None, 'Data-parallel devices (default: all).', **fv)
    flags.DEFINE_bool(
        'single_length', None, 'Train each length alone (baseline).', **fv)


def _names(names) -> str:
    return ', '.join(names)


def parse_flags(argv, flag_values=FLAGS):
    """Parses ``argv`` into ``flag_values``; returns the other arguments.

    Raises:
      UsageError: a ``--config=`` file that does not exist, or an override
        under a field it does not have (``--config.nofield.sub=1``).
    """
    argv = expand_config_path(argv)
    with _config_errors(argv):
        return flag_values(argv)


def expand_config_path(argv):
    """``argv`` with the ``--config`` value made a path ml_collections opens.

    ``~`` is expanded (the shell leaves ``--config=~/c.py`` alone: it
    expands a ``~`` only at the start of a word), and the name of a shipped
    config (``paper:cifar10``) becomes its file's path, unless a file of
    that name exists.
    """
    out = list(argv)
    for i, arg in enumerate(out):
        match = re.match(r'(-{1,2}config=)(.*)', arg)
        if match:
            out[i] = match.group(1) + _config_value(match.group(2))
        elif re.match(r'-{1,2}config$', arg) and i + 1 < len(out):
            out[i + 1] = _config_value(out[i + 1])
    return out


def _config_value(value: str) -> str:
    """A --config value as a path (with its ``:argument``, if any)."""
    if value.startswith('~'):
        return os.path.expanduser(value)
    name, colon, arg = value.partition(':')
    if name in configs.SHIPPED and not os.path.exists(name):
        return configs.path(name) + colon + arg
    return value


@contextlib.contextmanager
def _config_errors(argv):
    """What ml_collections raises for a bad --config, as UsageErrors.

    Raised while it loads the config file and makes the overrides' flags:
    at definition (the default file) or parsing (``--config=<file>``).
    """
    try:
        yield
    except (AttributeError, KeyError) as e:
        raise _unknown_field(e, argv) from None
    except OSError:  # its error of a config file that does not exist
        raise _missing_config(_config_file(argv)) from None


def _unknown_field(error, argv) -> config_lib.UsageError:
    """The one-line error of the override ml_collections could not follow.

    ml_collections raises a bare KeyError / AttributeError naming the
    missing key; it is matched to the ``--config.<path>`` that holds it.
    Any other such error is not a bad command line: it is raised as is.
    """
    text = str(error.args[0]).strip('\'"') if error.args else ''
    for arg in argv:
        match = _OVERRIDE.match(arg)
        if match and (text in match.group(1).split('.')
                      or match.group(1) in text):
            return _unknown_error(match.group(1), _config_file(argv))
    raise error


def _config_file(argv) -> str:
    """The config file of a command line, as ``--config=`` gives it."""
    path = _DEFAULT_CONFIG
    for i, arg in enumerate(argv):
        if re.match(r'-{1,2}config=', arg):
            path = arg.split('=', 1)[1]
        elif re.match(r'-{1,2}config$', arg) and i + 1 < len(argv):
            path = argv[i + 1]
    return path


def _unknown_error(path: str, filename: str) -> config_lib.UsageError:
    if filename.startswith(_ROOT + os.sep):
        filename = os.path.relpath(filename, _ROOT)
    return config_lib.UsageError(
        f'unknown config field {path!r} (--config.{path}); the valid fields '
        f'are listed in {filename}.')


def _missing_config(filename: str) -> config_lib.UsageError:
    return config_lib.UsageError(
        f'config file {filename!r} does not exist; pass an existing one or '
        f'a shipped config ({", ".join(configs.SHIPPED)}), e.g. '
        '--config=default.')


def _check_overrides(flag_values) -> None:
    """Raises unless the config file exists and every override names a field.

    The config is parsed unlocked (so that the open fields take new keys):
    a new key anywhere else, e.g. a typo'd ``--config.nofield=1``, is
    caught here, against the config file loaded again as written.
    """
    config_flag = flag_values['config']
    try:
        config_flag.value.get('method')
    except OSError:  # ml_collections defers a missing file to the first use
        raise _missing_config(config_flag.config_filename) from None
    written = _load_config(config_flag.config_filename)
    for path in config_flag.override_values:
        holder = path.rpartition('.')[0]
        if holder in _OPEN_FIELDS:
            continue
        try:
            config_path.get_value(path, written)
        except (AttributeError, IndexError, KeyError):
            raise _unknown_error(path, config_flag.config_filename) from None
    # Seen here only: a --config.batch_size equal to the file's is not
    # told apart from none once the overrides are applied.
    overrides = config_flag.override_values
    if {'batch_size', 'per_device_batch_size'} <= set(overrides):
        raise scaling.both_batches(overrides['batch_size'],
                                   overrides['per_device_batch_size'])


def _load_config(filename):
    """The config of ``filename`` without the command line's overrides."""
    flag_values = flags.FlagValues()
    with warnings.catch_warnings():
        # ml_collections loads the file with importlib's deprecated
        # load_module().
        warnings.filterwarnings('ignore', 'the load_module', DeprecationWarning)
        config_flags.DEFINE_config_file(
            'config', filename, flag_values=flag_values, lock_config=False,
            sys_argv=[sys.argv[0]])
    return flag_values['config'].value


def _config(flag_values):
    config = flag_values['config'].value
    with config.unlocked():
        for name in _OVERRIDES:
            if flag_values[name].value is not None:
                config[name] = flag_values[name].value
        if flag_values['bits'].value is not None:
            config.bits = tuple(_parse_bits(flag_values['bits'].value))
        _expand_paths(config)
    return config


# Config fields that name a file or directory (dotted: under a section).
_PATHS = ('data_dir', 'pretrained', 'odh.classifier_pretrained')


def _expand_paths(config) -> None:
    """Expands ``~`` in every path field, as the shell would have.

    Done here, not only where a path is opened, so that config.json holds
    the real path and a resume with ``~`` or without it is the same run.
    """
    for path in _PATHS:
        holder, _, name = path.rpartition('.')
        if holder and holder not in config:
            continue  # a config file without that section
        section = config[holder] if holder else config
        value = section.get(name)
        if isinstance(value, str) and value.startswith('~'):
            section[name] = os.path.expanduser(value)


def _parse_bits(values):
    try:
        return [int(v) for v in values]
    except ValueError:
        raise config_lib.UsageError(
            f'--bits must be comma-separated integers, got {values}; pass '
            'e.g. --bits=8,16,32.'
        ) from None


def parse(flag_values=FLAGS):
    """(config, workdir, resume) of the parsed flags; writes nothing.

    ``~`` is expanded in --workdir and in every path field of the config
    (--data_dir, --config.pretrained, --config.odh.classifier_pretrained).

    Raises:
      UsageError: if --bits is not a list of integers, the --config file
        does not exist, or a --config override names no field of it.
    """
    _check_overrides(flag_values)
    config = _config(flag_values)
    workdir = flag_values['workdir'].value
    if workdir is None:
        workdir = os.path.join('runs', f'{config.dataset}_{config.method}')
    return config, os.path.expanduser(workdir), flag_values['resume'].value


def run(flag_values=FLAGS) -> dict:
    """The run of parsed flags, as ``main`` does it; its results.

    Tests call it in-process, on flags parsed into a fresh ``FlagValues``.

    Raises:
      UsageError: any bad flag, config, input file or workdir, before the
        workdir is written (a corrupt image found mid-epoch excepted).
      FloatingPointError: the loss or the parameters became non-finite.
      Preempted: on SIGTERM or SIGINT, after a resumable checkpoint.
    """
    # First: it must run before JAX is used (parse() counts devices).
    parallel.initialize(flag_values['coordinator_address'].value,
                        flag_values['num_processes'].value,
                        flag_values['process_id'].value)
    config, workdir, resume = parse(flag_values)
    use_caches(config_lib.field(config, 'compilation_cache'))
    # Missing parents of the workdir (./runs of the default runs/<name>)
    # are made after every check, as `mkdir -p` would.
    return train_and_evaluate(config, workdir, resume=resume,
                              create_parents=True,
                              started=phases.process_start())


def use_caches(setting: str | None) -> str | None:
    """The command line's caches: JAX's persistent compilation cache and,
    in its folder's ``traces``, the traced programs
    (``nhl_jax.train.traces``).

    Args:
      setting: the config's ``compilation_cache`` (a folder, 'off', or
        None: ``nhl_jax.compiler.default_cache_dir``).

    Returns:
      The compilation cache's folder, or None when both are off.
    """
    folder = compiler.use_persistent_cache(
        compiler.default_cache_dir(setting))
    traces.use(None if folder is None else os.path.join(folder, 'traces'))
    return folder


def train_and_evaluate(config, workdir: str, *, resume: bool = False,
                       create_parents: bool = False,
                       started: float | None = None) -> dict:
    """Trains and evaluates as configured; writes ``workdir/results.json``.

    The flax examples' entry point: the config is validated and resolved
    once (``config_lib.resolve``), before anything is written, and its
    system trains it (``nhl_jax.train.run_training``).

    Args:
      config: a ConfigDict as in ``nhl_jax/cli/configs/default.py``;
        ``config.method`` picks the system (a base loss: NHL; 'mah'; 'odh').
      workdir, resume, create_parents, started: as in ``run_training``.

    Returns:
      The results dict written to ``results.json``.
    """
    spec = config_lib.resolve(config)
    return train.run_training(systems.SYSTEMS[spec.system], spec, workdir,
                              resume=resume, create_parents=create_parents,
                              started=started)


def _orbax_failure(record) -> bool:
    """Orbax logs each failed background write (with its traceback)
    before the main thread re-raises it: the re-raise is reported once."""
    return not (record.levelno >= std_logging.ERROR
                and f'{os.sep}orbax{os.sep}' in record.pathname)


def main(argv):
    """nhl-jax train: train, evaluate and write a run (absl entry point)."""
    del argv
    if not FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save
        logging.get_absl_handler().addFilter(_orbax_failure)
    try:
        run()
    except (config_lib.UsageError, FloatingPointError, ImportError) as e:
        # An ImportError here names the missing extra and its install.
        sys.exit(f'error: {e}')
    except errors.RunError as e:
        print(f'error: {e}', file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Now: orbax's writer threads would print their failures again on
        # the way out; every checkpoint on disk is complete or absent.
        os._exit(1)
    except train.Preempted as e:
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        # Before training (data, compilation) or a second Ctrl-C.
        print('interrupted: no checkpoint was saved since the last one; '
              '--resume continues from it (if any).', file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


def _flags_parser(argv):
    """absl's parser, with the one-line error of an unknown field."""
    try:
        define_flags()  # here, so that importing this module defines none
        argv = expand_config_path(argv)
        with _config_errors(argv):
            return app.parse_flags_with_usage(argv)
    except config_lib.UsageError as e:
        sys.exit(f'error: {e}')


def cli(argv=None) -> None:
    """Runs the command on ``argv`` (default: ``sys.argv``, as the whole
    process: ``command.as_process``)."""
    def call():
        app.run(main, argv=argv, flags_parser=_flags_parser)

    if argv is None:
        command.as_process(call)
    call()


if __name__ == '__main__':
    cli()
