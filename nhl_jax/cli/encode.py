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

- ``workdir/codes/<split>.npz``: packed bits, labels, ids, the params
  used and where the codes came from (the run's config digest and the
  dataset, which ``nhl-jax search`` checks; ``nhl_jax.retrieval.load_codes``
  reads them);
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

from absl import flags, logging

from nhl_jax import checks
from nhl_jax.cli import command, inference
from nhl_jax.errors import UsageError

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS) -> None:
    """Defines the command's flags on ``flag_values``."""
    fv = {'flag_values': flag_values}
    flags.DEFINE_string('workdir', None, 'A trained run directory.', **fv)
    flags.DEFINE_enum('params', 'last', ['last', 'best'],
                      'Final parameters, or the best per length.', **fv)
    flags.DEFINE_string('dataset', None,
                        'Dataset to encode (default: the run\'s).', **fv)
    flags.DEFINE_string('data_dir', None,
                        'Its data directory (default: the run\'s).', **fv)
    flags.DEFINE_list('splits', ['query', 'database'],
                      'Splits to encode (query, train, database).', **fv)
    flags.DEFINE_integer(
        'batch_size', None,
        'Images per forward pass, > 0 (default: the run\'s).', **fv)
    flags.DEFINE_bool('plots', True, 'Draw workdir/plots/*.png.', **fv)


def run(flag_values=FLAGS) -> dict:
    """The encoding of parsed flags, as ``main`` does it (codes, metrics
    and plots); tests call it in-process.

    Returns:
      ``inference.export_codes``'s summary, with ``'plots'`` when drawn.

    Raises:
      UsageError: a missing or bad flag (before any work), or what
        ``inference.export_codes`` raises.
    """
    workdir = flag_values['workdir'].value
    if not workdir:
        raise UsageError('pass --workdir (nhl-jax encode --help).')
    checks.positive_or_unset(flag_values['batch_size'].value, '--batch_size',
                             "the run's eval batch size")
    plots = flag_values['plots'].value
    if plots and importlib.util.find_spec('matplotlib') is None:
        raise UsageError('plots need matplotlib: pip install -e ".[plots]", '
                         'or pass --noplots.')
    dataset = flag_values['dataset'].value
    out = inference.export_codes(
        workdir, params=flag_values['params'].value, dataset=dataset,
        data_dir=flag_values['data_dir'].value,
        splits=tuple(flag_values['splits'].value),
        batch_size=flag_values['batch_size'].value)
    if plots:
        from nhl_jax.train import plots as plots_lib
        out['plots'] = plots_lib.plot_workdir(workdir)
    return out


def main(argv):
    """nhl-jax encode: a trained run's packed codes, metrics and plots."""
    del argv
    if not FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every restore
    try:
        out = run()
    except (UsageError, ImportError) as e:
        sys.exit(f'error: {e}')
    if out['metrics'] is not None:
        print(inference.format_summary(out['metrics'], top_k=out['top_k']))
    for path in [*out['paths'].values(), *out.get('plots', [])]:
        print(f'wrote {path}')


def cli(argv=None) -> None:
    """Runs the command on ``argv`` (default: ``sys.argv``)."""
    command.run(main, define_flags, argv, defines='splits')


if __name__ == '__main__':
    cli()
