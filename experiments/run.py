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
from ml_collections import config_flags  # noqa: E402

from nhl_jax import config as config_lib  # noqa: E402
from nhl_jax import parallel, train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'configs', 'default.py'),
    'Python config file (default: experiments/configs/default.py).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Run directory (default: runs/<dataset>_<method>).')
_RESUME = flags.DEFINE_bool('resume', False, 'Continue the run in --workdir.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None,
    'Multi-host: host:port of process 0 (or env NHL_COORDINATOR_ADDRESS).')
_NUM_PROCESSES = flags.DEFINE_string(
    'num_processes', None,
    'Multi-host: number of processes, or "auto" on TPU pods / SLURM.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   'Multi-host: rank of this process.')
_OVERRIDES = {
    'method': flags.DEFINE_string(
        'method', None, 'Base loss (NHL), e.g. dpn; or mah / odh.'),
    'dataset': flags.DEFINE_string(
        'dataset', None, 'mnist5k, digits, cifar10[-1|-2], coco, ...'),
    'data_dir': flags.DEFINE_string(
        'data_dir', None, 'tfds dir (CIFAR-10) or list-file root.'),
    'backbone': flags.DEFINE_string('backbone', None, 'mlp or cnn.'),
    'head': flags.DEFINE_string(
        'head', None, 'nested (NHL), or flat / cascade (--method=mah).'),
    'bits': flags.DEFINE_list('bits', None, 'Code lengths, e.g. 8,16,32.'),
    'weighting': flags.DEFINE_string(
        'weighting', None, 'none, paper, released (dominance), static, '
        'uncertainty, gradnorm or pcgrad (baselines).'),
    'distill_weight': flags.DEFINE_float('distill_weight', None,
                                         'Distillation weight (0: off).'),
    'epochs': flags.DEFINE_integer('epochs', None, 'Maximum epochs.'),
    'seed': flags.DEFINE_integer('seed', None, 'Seed of split, init, order.'),
    'devices': flags.DEFINE_integer(
        'devices', None, 'Data-parallel devices (default: all).'),
    'single_length': flags.DEFINE_bool(
        'single_length', None, 'Train each length alone (baseline).'),
}


def _config():
    config = _CONFIG.value
    with config.unlocked():
        for name, flag in _OVERRIDES.items():
            if flag.value is not None:
                config[name] = flag.value
        if _OVERRIDES['bits'].value is not None:
            config.bits = tuple(_parse_bits(_OVERRIDES['bits'].value))
    return config


def _parse_bits(values):
    try:
        return [int(v) for v in values]
    except ValueError:
        raise config_lib.UsageError(
            f'--bits must be comma-separated integers, got {values}.'
        ) from None


def main(argv):
    del argv
    if not flags.FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save
    parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                        _PROCESS_ID.value)
    try:
        config = _config()
        workdir = _WORKDIR.value
        if workdir is None:  # the default lives under ./runs, made on demand
            workdir = os.path.join('runs', f'{config.dataset}_{config.method}')
            os.makedirs('runs', exist_ok=True)
        train.train_and_evaluate(config, workdir, resume=_RESUME.value)
    except (config_lib.UsageError, FloatingPointError) as e:
        sys.exit(f'error: {e}')
    except train.Preempted as e:
        print(e, file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)


if __name__ == '__main__':
    app.run(main)
