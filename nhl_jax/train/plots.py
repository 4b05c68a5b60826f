"""PNG figures of runs: mAP versus code length, P-R, training, weighting.

Drawn with matplotlib's object-oriented API (``matplotlib.figure.Figure``,
rendered by the Agg canvas), so nothing touches pyplot's global state or
needs a display. Each function writes one PNG atomically and returns its
path. ``plot_workdir`` draws everything a run directory has::

    plot_workdir('runs/mnist5k_dpn')   # -> runs/mnist5k_dpn/plots/*.png
    plot_map_vs_length([load_results('runs/a'), load_results('runs/b')],
                       'map_vs_length.png')

matplotlib is an optional extra: ``pip install '.[plots]'``.
``warmed_up`` imports it and draws a throwaway figure on a thread while the
caller goes on (a run: while it trains), so that the first plot does not
wait for either.
"""

import contextlib
import glob
import io
import json
import os
import threading
from collections.abc import Mapping, Sequence

import numpy as np

from nhl_jax import runlog


def _figure(rows: int = 1, cols: int = 1, *, width: float = 5.0,
            height: float = 3.6):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plots need matplotlib: pip install "
                          "'nhl_jax[plots]'") from None
    fig = Figure(figsize=(width * cols, height * rows))
    # Fixed margins: a layout engine draws every figure twice.
    fig.subplots_adjust(left=0.12 / cols, right=1 - 0.03 / cols,
                        bottom=0.14, top=0.9, wspace=0.28)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes.ravel()


def _save(fig, path: str) -> str:
    """Writes the PNG so that ``path`` is either the old or the new file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with runlog.atomic_file(path, 'wb', suffix='.png') as f:
        fig.savefig(f, format='png', dpi=100)
    return path


def _warm_up() -> None:
    """Imports matplotlib and renders a small figure, writing nothing.

    The first figure of a process loads the Agg backend and the fonts; a
    failure here is left for the real plots to report.
    """
    try:
        fig, (ax,) = _figure(width=1.0, height=1.0)
        _plot_series(ax, {8: ([1, 2], [0.0, 1.0])}, 'y')
        ax.set_title('t')
        fig.savefig(io.BytesIO(), format='png', dpi=10)
    except Exception:  # noqa: BLE001 (reported by the plots themselves)
        pass


class WarmUp:
    """``_warm_up`` on a thread, started when the caller has time to spare.

    A run starts it once its first round is trained: the import holds the
    interpreter, and would slow the tracing of the first steps.
    """

    def __init__(self):
        self._thread = None

    def start(self) -> None:
        """Starts the thread (once; later calls do nothing)."""
        if self._thread is None:
            self._thread = threading.Thread(target=_warm_up,
                                            name='nhl_jax plots warm-up')
            self._thread.start()

    def join(self) -> None:
        """Waits for the thread, if it was started."""
        if self._thread is not None:
            self._thread.join()


@contextlib.contextmanager
def warmed_up():
    """A ``WarmUp`` whose thread, if started, is joined on the way out.

    Nothing of it outlives the context; it only loads modules and fonts,
    which the plots drawn after it then find loaded.
    """
    warm = WarmUp()
    try:
        yield warm
    finally:
        warm.join()


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def load_results(workdir: str) -> dict:
    """A run's results.json, with ``label`` set to a short description."""
    path = os.path.join(workdir, 'results.json')
    if not os.path.isfile(path):
        raise ValueError(f'{workdir!r} has no results.json; finish the run '
                         '(nhl-jax train) first.')
    results = _read_json(path)
    results.setdefault('label', run_label(results))
    return results


def run_label(results: Mapping) -> str:
    """'dpn, nested, weighting=paper, λ=0.1' from a results dict."""
    parts = [str(results.get('method', '?')), str(results.get('mode', ''))]
    if results.get('weighting') is not None:
        parts.append(f'weighting={results["weighting"]}')
    if results.get('distill_weight') is not None:
        parts.append(f'λ={results["distill_weight"]:g}')
    return ', '.join(p for p in parts if p)


def plot_map_vs_length(runs: Sequence[Mapping], path: str, *,
                       key: str = 'map', title: str | None = None) -> str:
    """mAP against code length, one labelled line per run.

    Args:
      runs: results dicts (``load_results``), each with ``bits``, ``key``
        ({str(bits): mAP}) and an optional ``label``.
      path: the PNG to write.
      key: 'map' (best per length) or 'map_last'.
      title: the figure title (default: the first run's dataset).
    """
    if not runs:
        raise ValueError('plot_map_vs_length needs at least one run')
    fig, (ax,) = _figure()
    for results in runs:
        bits = sorted(int(b) for b in results[key])
        ax.plot(bits, [results[key][str(b)] for b in bits], marker='o',
                label=results.get('label') or run_label(results))
    all_bits = sorted({int(b) for r in runs for b in r[key]})
    ax.set_xscale('log', base=2)
    ax.set_xticks(all_bits, [str(b) for b in all_bits])
    ax.minorticks_off()
    ax.set_xlabel('code length (bits)')
    ax.set_ylabel('mAP' if key == 'map' else f'mAP ({key})')
    ax.set_title(title or f'mAP vs code length ({runs[0].get("dataset", "")})')
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
    return _save(fig, path)


def plot_pr_curves(curves: Mapping[str, Mapping], path: str) -> str:
    """Precision-recall over Hamming radii, one line per code length.

    Args:
      curves: {str(bits): {'precision': [K+1], 'recall': [K+1]}} (the
        ``pr_curve`` entries of codes/metrics.json).
      path: the PNG to write.
    """
    fig, (ax,) = _figure()
    for bits in sorted(curves, key=int):
        curve = curves[bits]
        ax.plot(curve['recall'], curve['precision'], marker='.',
                label=f'{bits} bits')
    ax.set_xlabel('recall')
    ax.set_ylabel('precision')
    ax.set_title('precision-recall (Hamming radius 0..K)')
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
    return _save(fig, path)


def read_records(workdir: str) -> list[dict]:
    """metrics.jsonl records of a run, merged over ``len_<b>`` sub-runs."""
    paths = [os.path.join(workdir, 'metrics.jsonl')]
    if not os.path.isfile(paths[0]):
        paths = sorted(glob.glob(os.path.join(workdir, 'len_*',
                                              'metrics.jsonl')))
    records = []
    for path in paths:
        with open(path) as f:
            records.extend(json.loads(line) for line in f if line.strip())
    # The per-round records; step scalars (kind 'step') have no epoch means.
    return [r for r in records if r.get('kind', 'round') == 'round']


def per_length(records: Sequence[Mapping], key: str):
    """{bits: (epochs [E], values [E])} of a per-length field of records.

    Records without ``key`` (e.g. ``map`` between evaluations) are skipped.
    """
    series = {}
    for record in records:
        for bits, value in record.get(key, {}).items():
            series.setdefault(int(bits), []).append((record['epoch'], value))
    return {b: tuple(np.array(v) for v in zip(*sorted(points)))
            for b, points in sorted(series.items())}


def _plot_series(ax, series, ylabel, *, marker='.'):
    from matplotlib.ticker import MaxNLocator
    for bits, (epochs, values) in series.items():
        ax.plot(epochs, values, marker=marker, label=f'{bits} bits')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel('epoch')
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize='small')


def plot_training_curves(records: Sequence[Mapping], path: str) -> str:
    """Loss per epoch and mAP per evaluation, one line per length."""
    fig, (loss_ax, map_ax) = _figure(1, 2)
    _plot_series(loss_ax, per_length(records, 'losses'), 'base loss')
    loss_ax.set_title('training loss')
    _plot_series(map_ax, per_length(records, 'map'), 'mAP', marker='o')
    map_ax.set_title('mAP at each evaluation')
    return _save(fig, path)


def plot_weighting_trace(records: Sequence[Mapping], path: str) -> str:
    """Per-length weights and anti-domination rate per epoch (epoch means)."""
    fig, (w_ax, a_ax) = _figure(1, 2)
    _plot_series(w_ax, per_length(records, 'weights'), 'weight (mean)')
    w_ax.set_title('weight of each length')
    rates = per_length(records, 'anti_domination_rate')
    _plot_series(a_ax, rates, 'fraction of steps')
    a_ax.set_title('anti-domination rate' if rates else
                   'anti-domination rate (not logged)')
    a_ax.set_ylim(-0.02, 1.02)
    return _save(fig, path)


def plot_workdir(workdir: str, *, out_dir: str | None = None) -> list[str]:
    """Every plot a run directory supports, as PNGs in ``workdir/plots``.

    mAP vs length (results.json), training curves and, where a weighting
    rule was logged (NHL), its trace (metrics.jsonl), and P-R curves
    (codes/metrics.json, written by nhl-jax encode).

    Returns:
      The paths written.
    """
    out_dir = out_dir or os.path.join(workdir, 'plots')
    written = []
    if os.path.isfile(os.path.join(workdir, 'results.json')):
        written.append(plot_map_vs_length(
            [load_results(workdir)], os.path.join(out_dir,
                                                  'map_vs_length.png')))
    records = read_records(workdir)
    if records:
        written.append(plot_training_curves(
            records, os.path.join(out_dir, 'training_curves.png')))
        if any('weights' in r for r in records):  # NHL's weighting rules
            written.append(plot_weighting_trace(
                records, os.path.join(out_dir, 'weighting.png')))
    summary = os.path.join(workdir, 'codes', 'metrics.json')
    if os.path.isfile(summary):
        lengths = _read_json(summary)['lengths']
        curves = {b: v['pr_curve'] for b, v in lengths.items()
                  if 'pr_curve' in v}
        if curves:
            written.append(plot_pr_curves(
                curves, os.path.join(out_dir, 'pr_curves.png')))
    return written
