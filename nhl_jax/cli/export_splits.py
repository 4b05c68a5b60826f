"""Writes the query / train / database ids of a seeded split to an .npz.

    nhl-jax export-splits --dataset=cifar10-1 \
        --data_dir=~/tensorflow_datasets --seed=0 --out=splits.npz
    nhl-jax export-splits --dataset=digits --seed=0

It prints each split's size and the ``split_digest`` of the ids, so two
users can check in one line that they evaluate on the same split. Read the
file back with ``nhl_jax.data.load_split_ids``.
"""

import sys

from absl import app, flags, logging

from nhl_jax import data
from nhl_jax.data import cifar

_DATASET = flags.DEFINE_string(
    'dataset', None,
    f'{sorted(data.DATASETS)} or a CIFAR-10 protocol '
    f'{sorted(cifar.CIFAR10_PROTOCOLS)}.', required=True)
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'tfds data directory holding cifar10/ (CIFAR only).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the per-class split.')
_OUT = flags.DEFINE_string(
    'out', None, 'Output .npz (default: <dataset>_seed<seed>_split.npz).')


def _load(name: str, data_dir: str | None, seed: int) -> data.Splits:
    known = sorted({*data.DATASETS, *cifar.CIFAR10_PROTOCOLS})
    if name not in known:
        raise ValueError(f'Unknown dataset {name!r}; choose one of {known}.')
    # CIFAR-10 needs a data_dir, so it is not in the offline registry.
    if name not in cifar.CIFAR10_PROTOCOLS:
        return data.load_splits(name, seed=seed)
    if data_dir is None:
        raise ValueError(f'--data_dir is required for {name}.')
    return cifar.load_cifar10_splits(name, data_dir, seed=seed)


def main(argv):
    del argv
    if not flags.FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # tfds logs every info read
    name, seed = _DATASET.value, _SEED.value
    out = _OUT.value or f'{name}_seed{seed}_split.npz'
    try:
        splits = _load(name, _DATA_DIR.value, seed)
        data.export_split_ids(splits, out)
    except (ValueError, ImportError, OSError) as e:
        sys.exit(f'error: {e}')
    print(f'dataset {name}, seed {seed}')
    for field, ds in zip(data.Splits._fields, splits):
        print(f'{field:<9}{len(ds.ids):>7}')
    print(f'digest {data.split_digest(splits)}')
    print(f'wrote {out}')


def cli(argv=None) -> None:
    """Runs the command on ``argv`` (default: ``sys.argv``)."""
    app.run(main, argv=argv)


if __name__ == '__main__':
    cli()
