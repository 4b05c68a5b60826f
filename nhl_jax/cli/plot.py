"""Draws mAP versus code length for several runs in one figure.

    nhl-jax plot --workdirs=runs/dpn,runs/dpn_plain \
        --labels="NHL (DPN),DPN without weighting/distillation" \
        --out=docs/map_vs_length.png

Each run contributes one line from its results.json (``--key=map``: best
per length, or ``map_last``). The per-run plots (P-R curves, training
curves, weighting trace) are drawn by ``nhl-jax encode``, or by
``--all`` here. The logic lives in ``nhl_jax.train.plots``.
"""

import sys

from absl import app, flags

_WORKDIRS = flags.DEFINE_list('workdirs', None, 'Run directories.',
                              required=True)
_LABELS = flags.DEFINE_list('labels', None,
                            'One legend label per run (default: its config).')
_OUT = flags.DEFINE_string('out', 'map_vs_length.png', 'The PNG to write.')
_KEY = flags.DEFINE_enum('key', 'map', ['map', 'map_last'],
                         'Best mAP per length, or the last evaluation.')
_TITLE = flags.DEFINE_string('title', None, 'Figure title.')
_ALL = flags.DEFINE_bool('all', False,
                         'Also draw every run\'s own plots (workdir/plots).')


def main(argv):
    """nhl-jax plot: mAP against code length for several runs."""
    del argv
    from nhl_jax.train import plots
    labels = _LABELS.value or [None] * len(_WORKDIRS.value)
    try:
        if len(labels) != len(_WORKDIRS.value):
            raise ValueError(f'--labels has {len(labels)} entries for '
                             f'{len(_WORKDIRS.value)} --workdirs; give one '
                             'per run')
        runs = [plots.load_results(w) for w in _WORKDIRS.value]
        for results, label in zip(runs, labels):
            if label:
                results['label'] = label
        written = [plots.plot_map_vs_length(runs, _OUT.value, key=_KEY.value,
                                            title=_TITLE.value)]
        if _ALL.value:
            for workdir in _WORKDIRS.value:
                written.extend(plots.plot_workdir(workdir))
    except (ValueError, ImportError) as e:
        sys.exit(f'error: {e}')
    for path in written:
        print(f'wrote {path}')


def cli(argv=None) -> None:
    """Runs the command on ``argv`` (default: ``sys.argv``)."""
    app.run(main, argv=argv)


if __name__ == '__main__':
    cli()
