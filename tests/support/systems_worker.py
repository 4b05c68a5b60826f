"""Subprocess helper of tests/cli/test_systems.py (not collected by pytest).

    python tests/support/systems_worker.py <num_devices> <workdir> <out.json>
        [<system>,...]

With N fake CPU devices, for every system: one step of each of its stages
on one device and sharded over all N (the largest metric difference), and
the 64-bit array types of each of its steps and hooks lowered for a TPU
(``tests.support.lowering``); and for the systems listed (default: all)
the whole tiny run on one device and on all N (per-round losses, mAP).
"""

import json
import os
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

# Per-length loss terms of each system's records.
_TERMS = ('losses', 'distill', 'weights', 'objective', 'hash_center', 'asd')


def _losses(workdir):
    """Per round: the total loss and every per-length term."""
    from nhl_jax import runlog
    records = runlog.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
    return [[r['loss'], *(v for key in _TERMS
                          for v in r.get(key, {}).values())]
            for r in records]


def _one_step(system, spec, splits, stage, mesh):
    """The metrics of the first step of ``stage`` (host arrays)."""
    from nhl_jax import parallel, train
    setup, state = system.create(spec, train.DataInfo.of(splits), spec.bits)
    consts = system.consts(spec, splits)
    plan = system.plan(spec, splits, 1)
    if mesh is not None:
        state = parallel.replicate(state, mesh)
        consts = None if consts is None else parallel.replicate(consts, mesh)
    if plan.begin is not None:  # MAH: draw Omega first
        state, _ = train.compile_hook(setup.hooks[plan.begin], mesh)(
            state, consts)
    batch = next(iter(plan.batches(state, 0)))
    if mesh is not None:
        batch = parallel.global_batch(batch, mesh, spec.batch_size)
    step = train.compile_step(setup.steps[stage], mesh)
    return parallel.to_host(step(state, batch, consts)[1])


def _first_steps(name: str, num_devices: int) -> float:
    """Largest metric difference of one step per stage, 1 vs N devices."""
    from nhl_jax import cli, data, parallel, train
    from nhl_jax.cli import registry
    from tests.support import systems
    splits = data.load_splits('digits', seed=0)
    spec = cli.resolve(systems.tiny_config(name))
    system = registry.SYSTEMS[spec.system]
    mesh = parallel.make_mesh(num_devices)
    worst = 0.0
    for stage in system.create(spec, train.DataInfo.of(splits),
                               spec.bits)[0].steps:
        one, many = (_one_step(system, spec, splits, stage, m)
                     for m in (None, mesh))
        worst = max(worst, *(
            float(np.max(np.abs(np.asarray(a, np.float64) - b)))
            for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many))))
    return worst


def _tpu_wide_types(name: str) -> dict:
    """{step or hook: sorted 64-bit array types of its TPU lowering}."""
    from nhl_jax import cli, data, train
    from nhl_jax.cli import registry
    from tests.support import lowering, systems
    splits = data.load_splits('digits', seed=0)
    spec = cli.resolve(systems.tiny_config(name))
    system = registry.SYSTEMS[spec.system]
    setup, state = system.create(spec, train.DataInfo.of(splits), spec.bits)
    consts = system.consts(spec, splits)
    batch = next(iter(system.plan(spec, splits, 1).batches(state, 0)))
    programs = {**{stage: (fn, (state, batch, consts))
                   for stage, fn in setup.steps.items()},
                **{hook: (fn, (state, consts))
                   for hook, fn in setup.hooks.items()}}
    return {program: sorted(lowering.wide_types(
        lowering.tpu_module(jax.jit(fn), *args)))
        for program, (fn, args) in programs.items()}


def main(num_devices: int, workdir: str, out: str, runs=None) -> None:
    from tests.support import use_cpu_devices
    use_cpu_devices(num_devices)
    from nhl_jax import cli
    from tests.support import systems
    result = {}
    for name in systems.TINY:
        result[f'{name}_step'] = _first_steps(name, num_devices)
        result[f'{name}_tpu_wide'] = _tpu_wide_types(name)
        if runs is not None and name not in runs:
            continue
        for devices in (1, num_devices):
            run = os.path.join(workdir, f'{name}_{devices}')
            results = cli.train_and_evaluate(
                systems.tiny_config(name, devices=devices), run)
            result[f'{name}_{devices}'] = {
                'losses': _losses(run), 'map': results['map'],
                'map_last': results['map_last']}
    with open(out, 'w') as f:
        json.dump(result, f)


if __name__ == '__main__':
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3],
         sys.argv[4].split(',') if len(sys.argv) > 4 else None)
