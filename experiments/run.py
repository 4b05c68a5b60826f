"""Trains nested hash codes and reports per-length mAP.

    python experiments/run.py --method=dpn [--dataset=mnist5k] [--bits=8,16,32]

This file is intentionally kept short: the logic lives in ``nhl_jax.train``
so that it can be tested and imported.
"""

import os
import signal
import sys

from absl import app, flags, logging

# Config files may import each other (experiments.configs.default).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ml_collections import config_flags

from nhl_jax import config as config_lib
from nhl_jax import parallel, train

FLAGS = flags.FLAGS
# Flags that set the config field of the same name.
_OVERRIDES = ('method', 'dataset', 'data_dir', 'backbone', 'head', 'bits',
              'weighting', 'distill_weight', 'epochs', 'seed', 'devices',
              'single_length')


def define_flags(flag_values=FLAGS, argv=None):
    """Defines the command line's flags on ``flag_values``.

    Tests define them on a fresh ``flags.FlagValues`` per command line, to
    check command lines in-process.

    Args:
      flag_values: where to define the flags.
      argv: the command line whose ``--config.<field>`` overrides get flags
        (None: ``sys.argv``, read when the flags are parsed).
    """
    fv = {'flag_values': flag_values}
    config_flags.DEFINE_config_file(
        'config', os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               'configs', 'default.py'),
        'Python config file (default: experiments/configs/default.py).',
        lock_config=True, sys_argv=argv, **fv)
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
    flags.DEFINE_string(
        'method', None, 'Base loss (NHL), e.g. dpn; or mah / odh.', **fv)
    flags.DEFINE_string(
        'dataset', None, 'mnist5k, digits, cifar10[-1|-2], coco, ...', **fv)
    flags.DEFINE_string(
        'data_dir', None, 'tfds dir (CIFAR-10) or list-file root.', **fv)
    flags.DEFINE_string('backbone', None, 'mlp or cnn.', **fv)
    flags.DEFINE_string(
        'head', None, 'nested (NHL), or flat / cascade (--method=mah).', **fv)
    flags.DEFINE_list('bits', None, 'Code lengths, e.g. 8,16,32.', **fv)
    flags.DEFINE_string(
        'weighting', None, 'none, paper, released (dominance), static, '
        'uncertainty, gradnorm or pcgrad (baselines).', **fv)
    flags.DEFINE_float('distill_weight', None,
                       'Distillation weight (0: off).', **fv)
    flags.DEFINE_integer('epochs', None, 'Maximum epochs.', **fv)
    flags.DEFINE_integer('seed', None, 'Seed of split, init, order.', **fv)
    flags.DEFINE_integer(
        'devices', None, 'Data-parallel devices (default: all).', **fv)
    flags.DEFINE_bool(
        'single_length', None, 'Train each length alone (baseline).', **fv)


def _config(flag_values):
    config = flag_values['config'].value
    with config.unlocked():
        for name in _OVERRIDES:
            if flag_values[name].value is not None:
                config[name] = flag_values[name].value
        if flag_values['bits'].value is not None:
            config.bits = tuple(_parse_bits(flag_values['bits'].value))
    return config


def _parse_bits(values):
    try:
        return [int(v) for v in values]
    except ValueError:
        raise config_lib.UsageError(
            f'--bits must be comma-separated integers, got {values}.'
        ) from None


def parse(flag_values=FLAGS):
    """(config, workdir, resume) of the parsed flags; writes nothing.

    Raises:
      UsageError: if --bits is not a list of integers.
    """
    config = _config(flag_values)
    workdir = flag_values['workdir'].value
    if workdir is None:
        workdir = os.path.join('runs', f'{config.dataset}_{config.method}')
    return config, workdir, flag_values['resume'].value


def main(argv):
    del argv
    if not FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save
    parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                        FLAGS.process_id)
    try:
        config, workdir, resume = parse()
        if FLAGS.workdir is None:  # the default is under ./runs, made here
            os.makedirs('runs', exist_ok=True)
        train.train_and_evaluate(config, workdir, resume=resume)
    except (config_lib.UsageError, FloatingPointError) as e:
        sys.exit(f'error: {e}')
    except train.Preempted as e:
        print(e, file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)


if __name__ == '__main__':
    define_flags()  # here, so that importing this module defines no flags
    app.run(main)
