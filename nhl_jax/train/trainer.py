"""``run_training``: one trainer for every system (NHL, MAH, ODH).

The flax-examples layout, for a resolved run (``RunSpec``) of a ``System``:
``run_training`` holds the workdir's lock (one run per directory) and
applies its policy (refuse an existing run; resume only with the same
config), loads the data, trains with
``nhl_jax.train.loop.fit`` (one joint run, or one per length with
``single_length``), and writes results.json, the final table and, when
matplotlib is installed, the plots of the run (workdir/plots). Only process
0 writes files other than checkpoints. The command line resolves a config
into its system and spec (``nhl_jax.cli``).
"""

import contextlib
import importlib.util
import os
import shutil
import time

from nhl_jax import data, parallel, runlog
from nhl_jax.errors import RunError, UsageError, disk_errno
from nhl_jax.train import loop
from nhl_jax.train.phases import Phases, format_phases
from nhl_jax.train.system import DataInfo, RunSpec
from nhl_jax.train.workdir import (
    check_same_config,
    check_workdir,
    check_workdir_policy,
    owned,
    saved_steps,
)


def training_runs(spec: RunSpec, workdir: str):
    """(bits, workdir) of each training run: one joint, or one per length."""
    if spec.single_length:
        return [((b,), os.path.join(workdir, f'len_{b}')) for b in spec.bits]
    return [(spec.bits, workdir)]


def run_training(system, spec: RunSpec, workdir: str, *,
                 resume: bool = False, create_parents: bool = False,
                 started: float | None = None) -> dict:
    """Trains and evaluates a run; writes ``workdir/results.json``.

    Args:
      system: the ``System`` that trains it.
      spec: the resolved run (``nhl_jax.cli.config.resolve``).
      workdir: run directory (created; its parent must exist).
      resume: continue from the latest checkpoint in ``workdir``.
      create_parents: create missing parents of ``workdir`` (removed
        again if the run fails before writing anything); by default its
        parent must exist.
      started: ``time.time()`` at which the process started, if the
        run's ``phase_seconds`` should count its ``startup`` (imports,
        flags: the command line's).

    Returns:
      The results dict written to ``results.json``.
    """
    phases = Phases()
    if started is not None:
        phases.add('startup', started, time.time())
    workdir = os.path.expanduser(workdir)
    check_workdir(workdir, create_parents=create_parents)
    with owned(workdir):
        try:
            return _run(system, spec, workdir, resume, phases)
        except Exception as e:
            code = disk_errno(e)
            if code is None:
                raise
            raise RunError(_disk_message(workdir, code)) from e


def _disk_message(workdir: str, code: int) -> str:
    """One line for a write the disk refused: where, why, and what next."""
    try:
        free = f'{shutil.disk_usage(workdir).free / 2**20:.1f} MiB free'
    except OSError:
        free = 'free space unknown'
    steps = saved_steps(workdir)
    kept = (f'checkpoints up to step {steps[-1]} are intact'
            if steps else 'no checkpoint was saved')
    return (f'could not write the run in {workdir}: {os.strerror(code)} '
            f'({free} there); {kept}: free space or fix the folder, then '
            'rerun with --resume.')


def run_splits(spec: RunSpec) -> data.Splits:
    """The data splits of a run: its dataset, seed, folder and options."""
    return data.load_splits(spec.dataset, seed=spec.seed,
                            data_dir=spec.data_dir,
                            options=data.DataOptions.of(spec.config))


def _run(system, spec: RunSpec, workdir: str, resume: bool,
         phases: Phases) -> dict:
    with phases('data'):
        check_workdir_policy(workdir, resume)  # before the data are loaded
        splits = run_splits(spec)
        system.check_data(spec, splits)
        check_batches(system, spec, splits)
        check_same_config(workdir, spec, resume)
    main = parallel.is_main_process()
    plotting = main and spec.plots and _has_matplotlib()
    with _plots_warmed_up(plotting) as warm:  # matplotlib: while it trains
        summaries = [loop.fit(system, spec, splits, bits, run_dir,
                              resume=resume, phases=phases,
                              after_round=None if warm is None else warm.start)
                     for bits, run_dir in training_runs(spec, workdir)]
        path = os.path.join(workdir, 'results.json')
        with phases('results'):
            results = make_results(system, spec, DataInfo.of(splits),
                                   summaries)
            if plotting:  # the plots read results.json; written again below
                runlog.write_json_atomic(path, results)
        with phases('plots'):
            plotted = _plots(workdir, warm) if plotting else []
    results['phase_seconds'] = phases.rounded()
    results['programs'] = phases.programs()
    if main:
        runlog.write_json_atomic(path, results)
        print(format_results(system, spec, results))
        for plot in plotted:
            print(f'wrote {plot}')
    return results


def check_batches(system, spec, splits) -> None:
    """Raises if a round of the run would have no batch.

    Called once the splits are loaded (their sizes are known only then) and
    before anything is written: a batch larger than the training split
    would otherwise fail in the first round, after config.json and the
    checkpoint directory exist.

    Args:
      system: the run's ``nhl_jax.cli.registry.System``.
      spec: the resolved run (``nhl_jax.cli.registry.RunSpec``).
      splits: its loaded ``data.Splits``.

    Raises:
      UsageError: naming the batch size and the largest one that fits.
    """
    for r in range(1, system.schedule(spec).rounds + 1):
        plan = system.plan(spec, splits, r)  # lazy: counts, loads nothing
        if plan.num_batches < 1:
            n = len(splits.train.labels)
            raise UsageError(
                f'batch_size {spec.batch_size} is larger than the {n} '
                f'training images of {spec.dataset}, so a {plan.stage} round '
                f'has no batch; pass --config.batch_size={n} or less.'
            )


def make_results(system, spec: RunSpec, info: DataInfo, summaries) -> dict:
    """The results.json of every system: one schema, plus its extras.

    ``map`` / ``map_last`` are the best and last value per length of the
    system's first evaluator; each other evaluator ``name`` adds
    ``map_<name>``, its value for the parameters kept as best (the first
    evaluator's), and ``map_<name>_last``.
    """
    def merged(key):
        return {b: v for s in summaries for b, v in s[key].items()}

    results = {
        'system': spec.system, 'method': spec.method,
        'dataset': spec.dataset, 'backbone': spec.backbone,
        'bits': [int(b) for b in spec.bits],
        'mode': 'single_length' if spec.single_length else 'nested',
        'seed': spec.seed, 'top_k': spec.top_k,
        'image_shape': [int(n) for n in info.image_shape],
        'num_classes': info.num_classes, 'split_sizes': dict(info.sizes),
        'evaluators': list(system.evaluators),
        'map': merged('best_map'), 'map_last': merged('last_map'),
        'train_seconds': sum(s['train_seconds'] for s in summaries),
        'stage_seconds': _summed(s['stage_seconds'] for s in summaries),
        'params_sha256': {str(b): s['params_sha256'] for s in summaries
                          for b in s['bits']},
        'epochs': {str(b): s['epoch'] for s in summaries for b in s['bits']},
    }
    for name in system.evaluators[1:]:
        results[f'map_{name}'] = {b: v for s in summaries
                                  for b, v in s['others'][name]['best'].items()}
        results[f'map_{name}_last'] = {
            b: v for s in summaries
            for b, v in s['others'][name]['last'].items()}
    results.update(system.results(spec, info))
    return results


def _summed(dicts) -> dict:
    total = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0.0) + v
    return total


# Short column titles of the final table.
_LABELS = {'symmetric_expected': 'tie-aware'}


def format_results(system, spec: RunSpec, results) -> str:
    """The final table: last and best mAP per length, every evaluator."""
    k = 'all' if results['top_k'] is None else results['top_k']
    primary, *others = system.evaluators
    columns = [('mAP (last)', 'map_last'), ('mAP (best)', 'map')]
    for name in others:
        label = _LABELS.get(name, name)
        columns += [(f'{label} (last)', f'map_{name}_last'),
                    (f'{label} (best)', f'map_{name}')]
    width = max(len(title) for title, _ in columns)
    timing = ('\n' + format_phases(results['phase_seconds'],
                                    results.get('programs'))
              if 'phase_seconds' in results else '')
    kind = '' if primary == 'symmetric' else f' ({primary})'
    lines = [(f'{system.title(spec)}, mAP@{k}{kind}, train '
              f'{results["train_seconds"]:.1f} s'),
             f'{"bits":>6} ' + ' '.join(f'{t:>{width}}' for t, _ in columns)]
    for b in results['bits']:
        lines.append(f'{b:>6} ' + ' '.join(
            f'{results[key][str(b)]:>{width}.4f}' for _, key in columns))
    return '\n'.join(lines) + timing


def _has_matplotlib() -> bool:
    return importlib.util.find_spec('matplotlib') is not None


def _plots_warmed_up(plotting: bool):
    """``plots.warmed_up()`` (a ``WarmUp``), or a context giving None."""
    if not plotting:
        return contextlib.nullcontext()
    from nhl_jax.train import plots
    return plots.warmed_up()


def _plots(workdir: str, warm) -> list[str]:
    """The run's plots in workdir/plots, once ``warm`` (a ``WarmUp``) has
    loaded matplotlib."""
    from nhl_jax.train import plots
    warm.join()
    return plots.plot_workdir(workdir)
