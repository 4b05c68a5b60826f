"""``train_and_evaluate``: one trainer for NHL, MAH and ODH.

The flax-examples layout: ``train_and_evaluate(config, workdir)`` validates
the config and resolves it ONCE into a ``RunSpec`` (``resolve``), applies
the workdir policy (refuse an existing run; resume only with the same
config), loads the data, trains with ``nhl_jax.train.loop.fit`` (one joint
run, or one per length with ``single_length``), and writes results.json,
the final table and, when matplotlib is installed, the plots of the run
(workdir/plots). Only process 0 writes files other than checkpoints.
"""

import glob
import importlib.util
import json
import os

from nhl_jax import config as config_lib
from nhl_jax import data, parallel, runlog, systems
from nhl_jax.errors import UsageError
from nhl_jax.nested import check_bits
from nhl_jax.systems.base import DataInfo, RunSpec
from nhl_jax.train import loop


def _as_json(value):
    return json.loads(json.dumps(value))  # tuples -> lists, ConfigDicts too


def resolve(config) -> RunSpec:
    """Validates a run config and resolves it into an explicit ``RunSpec``.

    Every default that depends on something else (the dataset's backbone
    and mAP cut-off, the system of ``--method``) is worked out here, once.

    Args:
      config: a ConfigDict as in ``experiments/configs/default.py``.

    Raises:
      UsageError: naming the first invalid field and how to fix it.
    """
    config_lib.check_config(config)  # the method first, among the rest
    system = systems.system_of(config.method)
    if config.get('head', 'nested') not in system.heads:
        raise UsageError(
            f'head {config.head!r} is only used by --method=mah; '
            f'{system.name} trains {" or ".join(system.heads)} (leave --head '
            'unset or pass --head=nested).')
    system.check(config)
    dataset = data.get_spec(config.dataset, config.get('data_dir'))
    get = config.get
    return RunSpec(
        system=system.name, method=config.method, dataset=config.dataset,
        data_dir=get('data_dir'), backbone=config.backbone or dataset.backbone,
        backbone_kwargs=dict(get('backbone_kwargs') or {}),
        pretrained=get('pretrained') or None,
        bits=check_bits(tuple(config.bits)),
        single_length=bool(get('single_length', False)), seed=config.seed,
        batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
        data_workers=get('data_workers'), devices=get('devices'),
        epochs=config.epochs, eval_every=config.eval_every,
        patience=config.patience,
        top_k=config.top_k if get('top_k') is not None else dataset.top_k,
        learning_rate=config.learning_rate, weight_decay=config.weight_decay,
        backbone_learning_rate=get('backbone_learning_rate'),
        freeze_backbone=bool(get('freeze_backbone', False)),
        compute_dtype=get('compute_dtype', 'float32'),
        log_every=get('log_every'),
        profile_steps=(None if get('profile_steps') is None
                       else tuple(int(s) for s in config.profile_steps)),
        options=system.options(config), config=_as_json(config.to_dict()))


def _holds_run(workdir: str) -> bool:
    """Whether ``workdir`` (or a ``len_<b>`` run in it) has checkpoints."""
    found = glob.glob(os.path.join(workdir, 'checkpoints', '*'))
    return bool(found or glob.glob(
        os.path.join(workdir, 'len_*', 'checkpoints', '*')))


def _outputs(workdir: str) -> list[str]:
    """The results and logs of an earlier run in ``workdir`` (relative)."""
    found = [name for name in ('results.json', 'metrics.jsonl')
             if os.path.exists(os.path.join(workdir, name))]
    return found + sorted(os.path.relpath(p, workdir) for p in glob.glob(
        os.path.join(workdir, 'len_*', 'metrics.jsonl')))


# Fields a resumed run may change: they do not change what is computed.
_FREE = frozenset({'epochs', 'log_every', 'profile_steps'})


def check_workdir_policy(workdir: str, resume: bool) -> None:
    """Refuses to overwrite, or to resume unchecked, an earlier run.

    Without ``resume`` a workdir that holds checkpoints, results or a
    metrics log is refused (a new run would truncate the log and replace
    the results). With it, the run's config.json must be there (it is what
    the new config is checked against), and so must its checkpoints when it
    has results: a finished run without checkpoints cannot be continued.
    A log without checkpoints is a run stopped before its first one:
    ``resume`` starts it again. Writes nothing.

    Raises:
      UsageError: naming the workdir, what it holds and the fix.
    """
    checkpoints, outputs = _holds_run(workdir), _outputs(workdir)
    if not resume:
        if checkpoints:
            raise UsageError(
                f'{workdir} already holds a run; pass --resume to continue '
                'it or choose another --workdir.')
        if 'results.json' in outputs:
            raise UsageError(
                f'{workdir} already holds a run ({", ".join(outputs)}) whose '
                'checkpoints are gone, so it cannot be continued; choose '
                'another --workdir.')
        if outputs:
            raise UsageError(
                f'{workdir} already holds a run ({", ".join(outputs)}) that '
                'stopped before its first checkpoint; pass --resume to start '
                'it again with the same config, or choose another --workdir.')
        return
    if not (checkpoints or outputs):
        return  # nothing to resume: a new run
    if not os.path.exists(os.path.join(workdir, 'config.json')):
        held = 'checkpoints' if checkpoints else ', '.join(outputs)
        raise UsageError(
            f'workdir {workdir} has {held} but no config.json, so this '
            "config cannot be checked against the run's; restore its "
            'config.json or choose another --workdir.')
    if not checkpoints and 'results.json' in outputs:
        raise UsageError(
            f'workdir {workdir} holds results.json but no checkpoints, so '
            'there is nothing to resume (a new run would replace the '
            'results); choose another --workdir.')


def _read_config(path: str) -> dict:
    """A run's saved config.json; a one-line error if it is corrupt."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        saved = e
    if not isinstance(saved, dict):
        raise UsageError(
            f'{path} cannot be read as a run config ({saved}); restore it or '
            'choose another --workdir.')
    return saved


def check_same_config(workdir: str, spec: RunSpec, resume: bool) -> None:
    """Stores config.json, after refusing to overwrite or mix runs.

    Without ``resume`` a workdir that already holds a run is refused (before
    its config.json is touched); with it, a run made with another config
    (only ``epochs``, ``log_every`` and ``profile_steps`` may change); see
    ``check_workdir_policy``.
    """
    check_workdir_policy(workdir, resume)
    path = os.path.join(workdir, 'config.json')
    current = {k: v for k, v in spec.config.items() if k not in _FREE}
    if resume and os.path.exists(path):
        saved = {k: v for k, v in _read_config(path).items()
                 if k not in _FREE}
        diff = sorted(k for k in set(saved) | set(current)
                      if saved.get(k) != current.get(k))
        if diff:
            raise UsageError(
                f'{workdir} holds a run with a different config (fields '
                f'{diff}); resume with the same config or use another '
                '--workdir.'
            )
    os.makedirs(workdir, exist_ok=True)
    if parallel.is_main_process():
        runlog.write_json_atomic(path, dict(spec.config))


def training_runs(spec: RunSpec, workdir: str):
    """(bits, workdir) of each training run: one joint, or one per length."""
    if spec.single_length:
        return [((b,), os.path.join(workdir, f'len_{b}')) for b in spec.bits]
    return [(spec.bits, workdir)]


def train_and_evaluate(config, workdir: str, *, resume: bool = False,
                       create_parents: bool = False) -> dict:
    """Trains and evaluates as configured; writes ``workdir/results.json``.

    Args:
      config: a ConfigDict as in ``experiments/configs/default.py``;
        ``config.method`` picks the system (a base loss: NHL; 'mah'; 'odh').
      workdir: run directory (created; its parent must exist).
      resume: continue from the latest checkpoint in ``workdir``.
      create_parents: create missing parents of ``workdir`` (after every
        check); by default its parent must exist.

    Returns:
      The results dict written to ``results.json``.
    """
    spec = resolve(config)  # every check before anything is written
    workdir = os.path.expanduser(workdir)
    config_lib.check_workdir(workdir, create_parents=create_parents)
    check_workdir_policy(workdir, resume)  # before the data are loaded
    system = systems.SYSTEMS[spec.system]
    splits = data.load_splits(spec.dataset, seed=spec.seed,
                              data_dir=spec.data_dir)
    system.check_data(spec, splits)
    config_lib.check_batches(system, spec, splits)
    check_same_config(workdir, spec, resume)
    summaries = [loop.fit(system, spec, splits, bits, run_dir, resume=resume)
                 for bits, run_dir in training_runs(spec, workdir)]
    results = make_results(system, spec, DataInfo.of(splits), summaries)
    if parallel.is_main_process():
        runlog.write_json_atomic(os.path.join(workdir, 'results.json'),
                                 results)
        print(format_results(system, spec, results))
        for path in _plots(workdir):
            print(f'wrote {path}')
    return results


def make_results(system, spec: RunSpec, info: DataInfo, summaries) -> dict:
    """The results.json of every system: one schema, plus its extras.

    ``map`` / ``map_last`` are the best and last value per length of the
    system's first evaluator; each other evaluator ``name`` adds
    ``map_<name>`` (best) and ``map_<name>_last``.
    """
    def merged(key):
        return {b: v for s in summaries for b, v in s[key].items()}

    results = {
        'system': spec.system, 'method': spec.method,
        'dataset': spec.dataset, 'backbone': spec.backbone,
        'bits': [int(b) for b in spec.bits],
        'mode': 'single_length' if spec.single_length else 'nested',
        'seed': spec.seed, 'top_k': spec.top_k,
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
    kind = '' if primary == 'symmetric' else f' ({primary})'
    lines = [(f'{system.title(spec)}, mAP@{k}{kind}, train '
              f'{results["train_seconds"]:.1f} s'),
             f'{"bits":>6} ' + ' '.join(f'{t:>{width}}' for t, _ in columns)]
    for b in results['bits']:
        lines.append(f'{b:>6} ' + ' '.join(
            f'{results[key][str(b)]:>{width}.4f}' for _, key in columns))
    return '\n'.join(lines)


def _plots(workdir: str) -> list[str]:
    """The run's plots in workdir/plots, when matplotlib is installed."""
    if importlib.util.find_spec('matplotlib') is None:
        return []
    from nhl_jax import plots
    return plots.plot_workdir(workdir)
