"""Exports a trained run as a bundle that searches without this repository.

    nhl-jax train --method=dpn --workdir=runs/dpn
    nhl-jax export --workdir=runs/dpn --out=bundles/dpn
    # elsewhere, with jax and numpy (and faiss) only:
    python -c "from nhl_jax import serving; s = serving.load('bundles/dpn')"

The bundle holds the encoder (``jax.export``: uint8 images in, packed codes
of every length out), the database codes, a faiss index per length and a
manifest with the SHA-256 of every file; ``nhl_jax.cli.bundle`` writes it
and ``nhl_jax.serving`` reads it.
"""

import sys

from absl import flags, logging

from nhl_jax import checks
from nhl_jax.cli import bundle, command
from nhl_jax.errors import UsageError

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS) -> None:
    """Defines the command's flags on ``flag_values``."""
    fv = {'flag_values': flag_values}
    flags.DEFINE_string('workdir', None, 'A trained run directory.', **fv)
    flags.DEFINE_string('out', None, 'The bundle directory to create.', **fv)
    flags.DEFINE_enum('params', 'last', ['last', 'best'],
                      'Final parameters, or the best per length.', **fv)
    flags.DEFINE_list('platforms', list(bundle.PLATFORMS),
                      'Platforms to export the encoder for (those that do '
                      'not lower here are left out).', **fv)
    flags.DEFINE_integer('batch_size', None,
                         'Images per forward pass (default: the run\'s).',
                         **fv)
    flags.DEFINE_string('images', None,
                        'An .npy of [N, H, W, C] uint8 images to be the '
                        "database (default: the run's database split).",
                        **fv)
    flags.DEFINE_string('labels', None,
                        'An .npy of [N, C] labels of --images (default: '
                        'unlabelled).', **fv)


def run(flag_values=FLAGS) -> dict:
    """The export of parsed flags, as ``main`` does it; the manifest.

    Raises:
      UsageError: a missing flag, a batch size that is not positive, or
        what ``bundle.export_run`` raises.
    """
    for name in ('workdir', 'out'):
        if not flag_values[name].value:
            raise UsageError(f'pass --{name} (nhl-jax export --help).')
    checks.positive_or_unset(flag_values['batch_size'].value, '--batch_size',
                             "the run's eval batch size")
    images, labels = _database_images(flag_values)
    return bundle.export_run(
        flag_values['workdir'].value, flag_values['out'].value,
        params=flag_values['params'].value,
        platforms=tuple(flag_values['platforms'].value),
        batch_size=flag_values['batch_size'].value,
        images=images, labels=labels)


def _database_images(flag_values):
    """(images, labels) of ``--images`` / ``--labels``, or (None, None)."""
    path, labels = flag_values['images'].value, flag_values['labels'].value
    if path is None:
        if labels is not None:
            raise UsageError('--labels needs --images (the images they '
                             'label).')
        return None, None
    images = checks.load_images(path, '--images')
    if labels is not None:
        labels = checks.load_npy(labels, '[N, C] labels')
    return images, labels


def main(argv):
    """nhl-jax export: a trained run as a self-contained serving bundle."""
    del argv
    if not FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every restore
    try:
        manifest = run()
    except (UsageError, ImportError) as e:
        sys.exit(f'error: {e}')
    database = manifest['database']
    print(f'{database["size"]} database codes of '
          f'{", ".join(map(str, manifest["bits"]))} bits; encoder for '
          f'{", ".join(manifest["encoder"]["platforms"])}')
    print(f'wrote {FLAGS.out}')


def cli(argv=None) -> None:
    """Runs the command on ``argv`` (default: ``sys.argv``)."""
    command.run(main, define_flags, argv, defines='out')


if __name__ == '__main__':
    cli()
