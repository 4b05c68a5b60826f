"""Encodes a dataset with a trained run: packed codes, metrics and plots.

The two-command flow from a trained run to a working search::

    nhl-jax train --method=dpn --workdir=runs/dpn      # train
    nhl-jax encode --workdir=runs/dpn                 # 1
    nhl-jax search --workdir=runs/dpn --query_split=query \
        --query_index=0,1,2 --bits=32 --k=5                         # 2

``encode.py`` restores the run's final parameters (``--params=last``: one
nested model, so only the longest code is stored and every length is its
prefix) or each length's best ones (``--params=best``, what results.json's
``map`` reports) and writes

- ``workdir/codes/<split>.npz``: packed bits, labels, ids and the params
  used (``nhl_jax.retrieval.load_codes`` reads them);
- ``workdir/codes/metrics.json``: per length mAP@k, precision@k, the
  precision-recall curve over Hamming radii and P/R within radius 2;
- ``workdir/plots/*.png``: mAP vs code length, P-R curves, training
  curves and the weighting trace.

``--dataset`` / ``--data_dir`` encode another dataset with the same image
shape (e.g. another CIFAR-10 protocol). The logic lives in
``nhl_jax.cli.inference`` and ``nhl_jax.train.plots``.
"""

import importlib.util
import sys

from absl import app, flags, logging

from nhl_jax.cli import inference
from nhl_jax.errors import UsageError

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run directory.',
                               required=True)
_PARAMS = flags.DEFINE_enum('params', 'last', ['last', 'best'],
                            'Final parameters, or the best per length.')
_DATASET = flags.DEFINE_string('dataset', None,
                               'Dataset to encode (default: the run\'s).')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'Its data directory (default: the run\'s).')
_SPLITS = flags.DEFINE_list('splits', ['query', 'database'],
                            'Splits to encode (query, train, database).')
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', None, 'Images per forward pass (default: the run\'s).')
_PLOTS = flags.DEFINE_bool('plots', True, 'Draw workdir/plots/*.png.')


def main(argv):
    del argv
    if not flags.FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every restore
    if _PLOTS.value and importlib.util.find_spec('matplotlib') is None:
        sys.exit('error: plots need matplotlib: pip install -e ".[plots]", '
                 'or pass --noplots.')
    try:
        out = inference.export_codes(
            _WORKDIR.value, params=_PARAMS.value, dataset=_DATASET.value,
            data_dir=_DATA_DIR.value, splits=tuple(_SPLITS.value),
            batch_size=_BATCH_SIZE.value)
        if _PLOTS.value:
            from nhl_jax.train import plots
            out['plots'] = plots.plot_workdir(_WORKDIR.value)
    except (UsageError, ImportError) as e:
        sys.exit(f'error: {e}')
    if out['metrics'] is not None:
        print(inference.format_summary(out['metrics'], top_k=out['top_k']))
    for path in [*out['paths'].values(), *out.get('plots', [])]:
        print(f'wrote {path}')


def cli(argv=None) -> None:
    """Runs the command on ``argv`` (default: ``sys.argv``)."""
    app.run(main, argv=argv)


if __name__ == '__main__':
    cli()
