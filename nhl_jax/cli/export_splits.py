"""Writes the query / train / database ids of a seeded split to an .npz.

    nhl-jax export-splits --dataset=cifar10-1 \
        --data_dir=~/tensorflow_datasets --seed=0 --out=splits.npz
    nhl-jax export-splits --dataset=digits --seed=0

It prints each split's size and the ``split_digest`` of the ids, so two
users can check in one line that they evaluate on the same split. Read the
file back with ``nhl_jax.data.load_split_ids``.
"""

import sys

from absl import flags, logging

from nhl_jax import checks, data
from nhl_jax.cli import command
from nhl_jax.data import cifar
from nhl_jax.errors import UsageError

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS) -> None:
    """Defines the command's flags on ``flag_values``."""
    fv = {'flag_values': flag_values}
    flags.DEFINE_string(
        'dataset', None,
        f'{sorted(data.DATASETS)} or a CIFAR-10 protocol '
        f'{sorted(cifar.CIFAR10_PROTOCOLS)}.', **fv)
    flags.DEFINE_string(
        'data_dir', None, 'tfds data directory holding cifar10/ (CIFAR only).',
        **fv)
    flags.DEFINE_integer('seed', 0, 'Seed of the per-class split.', **fv)
    flags.DEFINE_string(
        'out', None,
        'Output .npz (default: <dataset>_seed<seed>_split.npz); its folder '
        'is made if missing.', **fv)


def _load(name: str, data_dir: str | None, seed: int) -> data.Splits:
    known = sorted({*data.DATASETS, *cifar.CIFAR10_PROTOCOLS})
    if name not in known:
        raise UsageError(f'Unknown dataset {name!r}; choose one of {known}.')
    # CIFAR-10 needs a data_dir, so it is not in the offline registry.
    if name not in cifar.CIFAR10_PROTOCOLS:
        return data.load_splits(name, seed=seed)
    if data_dir is None:
        raise UsageError(f'--data_dir is required for {name}.')
    return cifar.load_cifar10_splits(name, data_dir, seed=seed)


def run(flag_values=FLAGS) -> tuple[data.Splits, str]:
    """The export of parsed flags, as ``main`` does it; tests call it
    in-process.

    Returns:
      ``(splits, the file written)``.

    Raises:
      UsageError: a missing flag or an ``--out`` that cannot be written
        (before the data are read); ``ValueError`` from the loaders.
    """
    name, seed = flag_values['dataset'].value, flag_values['seed'].value
    if not name:
        raise UsageError('pass --dataset (nhl-jax export-splits --help).')
    out = checks.writable_file(
        flag_values['out'].value or f'{name}_seed{seed}_split.npz', '--out')
    splits = _load(name, flag_values['data_dir'].value, seed)
    checks.make_folder(out)
    data.export_split_ids(splits, out)
    return splits, out


def main(argv):
    """nhl-jax export-splits: a dataset's seeded split as index files."""
    del argv
    if not FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # tfds logs every info read
    try:
        splits, out = run()
    except (ValueError, ImportError, OSError) as e:
        sys.exit(f'error: {e}')
    print(f'dataset {FLAGS.dataset}, seed {FLAGS.seed}')
    for field, ds in zip(data.Splits._fields, splits):
        print(f'{field:<9}{len(ds.ids):>7}')
    print(f'digest {data.split_digest(splits)}')
    print(f'wrote {out}')


def cli(argv=None) -> None:
    """Runs the command on ``argv`` (default: ``sys.argv``)."""
    command.run(main, define_flags, argv, defines='seed')


if __name__ == '__main__':
    cli()
