"""What the checkpoints' checksums cost: save and restore, with and without.

    python benchmarks/checkpoint_integrity.py [--blocks 7] [--resnet50]
    python benchmarks/checkpoint_integrity.py --smoke   # digits MLP, 2 blocks

For the train state (and one best-model copy per length) of the default
run (the MLP on mnist5k, 5 lengths) and, with ``--resnet50``, of a
ResNet-50 run (224 x 224 x 3, random weights: the cost depends on the
bytes alone), times in interleaved blocks:

- save: ``nhl_jax.train.checkpoint.save`` (SHA-256 of every array, the
  identity, the free-space check, then orbax) against orbax's save of the
  same items alone, each followed by ``wait`` (the files on disk);
- restore: ``restore_latest`` (reads the meta, restores, verifies every
  array) against orbax's restore of the same step alone.

Prints the median seconds of each and the median ratio of the block pairs
(the machine drifts, so each block times both, in alternating order).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import orbax.checkpoint as ocp
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nhl_jax import train
from nhl_jax.cli import config as config_lib
from nhl_jax.cli import registry
from nhl_jax.cli.configs import default
from nhl_jax.train import checkpoint


def _state(backbone: str, image_shape, dataset: str):
    """(state, best) as the loop saves them, for one config."""
    config = default.get_config()
    config.update({'backbone': backbone, 'dataset': dataset})
    spec = config_lib.resolve(config)
    info = train.DataInfo(tuple(image_shape), 10, {'train': 1})
    _, state = registry.create_train_state(spec, info)
    host = jax.device_get((state.params, state.rest))
    best = {str(b): {'params': host[0], 'rest': host[1]} for b in spec.bits}
    return state, best


def _orbax_save(mngr, step, state, best, meta):
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        best=ocp.args.StandardSave(dict(best)),
        meta=ocp.args.JsonSave(meta)))


def _orbax_restore(mngr, state, best):
    mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(checkpoint._abstract(state)),
        best=ocp.args.StandardRestore(checkpoint._abstract(best)),
        meta=ocp.args.JsonRestore()))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(name, state, best, blocks: int) -> dict:
    """Interleaved blocks of (checked, orbax-only) saves and restores."""
    nbytes = sum(x.nbytes for x in jax.tree.leaves((state, best)))
    times = {k: [] for k in ('save', 'save_orbax', 'restore',
                             'restore_orbax')}
    with tempfile.TemporaryDirectory() as tmp:
        for block in range(blocks):
            runs = [('save', 'restore', True), ('save_orbax', 'restore_orbax',
                                                False)]
            for save_key, restore_key, checked in (
                    runs if block % 2 == 0 else runs[::-1]):
                directory = os.path.join(tmp, f'{block}_{save_key}')
                with checkpoint.manager(directory) as mngr:
                    def save(mngr=mngr, checked=checked):
                        if checked:
                            checkpoint.save(mngr, 1, state, best, {'e': 1},
                                            identity={'run': name})
                        else:
                            _orbax_save(mngr, 1, state, best, {'e': 1})
                        checkpoint.wait(mngr)
                    times[save_key].append(_timed(save))
                with checkpoint.manager(directory) as mngr:
                    def restore(mngr=mngr, checked=checked):
                        if checked:
                            checkpoint.restore_latest(
                                mngr, state, best, identity={'run': name})
                        else:
                            _orbax_restore(mngr, state, best)
                    times[restore_key].append(_timed(restore))
    out = {k: statistics.median(v) for k, v in times.items()}
    for op in ('save', 'restore'):
        out[f'{op}_ratio'] = statistics.median(
            a / b for a, b in zip(times[op], times[f'{op}_orbax']))
    out['megabytes'] = nbytes / 2**20
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--blocks', type=int, default=7)
    parser.add_argument('--resnet50', action='store_true')
    parser.add_argument('--smoke', action='store_true')
    parser.add_argument('--out')
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    cases = [('default run (mnist5k)', None, (28, 28, 1), 'mnist5k')]
    if args.smoke:
        cases, args.blocks = [('smoke (mlp, digits)', 'mlp', (8, 8, 1),
                               'digits')], 2
    if args.resnet50:
        cases.append(('resnet50 (224x224x3)', 'resnet50', (224, 224, 3),
                      'mnist5k'))
    results = {}
    print(f'{"state":<24} {"MiB":>7} {"save s":>8} {"orbax s":>8} '
          f'{"ratio":>6} {"restore s":>9} {"orbax s":>8} {"ratio":>6}')
    for name, backbone, shape, dataset in cases:
        state, best = _state(backbone, shape, dataset)
        r = results[name] = measure(name, state, best, args.blocks)
        print(f'{name:<24} {r["megabytes"]:>7.1f} {r["save"]:>8.3f} '
              f'{r["save_orbax"]:>8.3f} {r["save_ratio"]:>6.2f} '
              f'{r["restore"]:>9.3f} {r["restore_orbax"]:>8.3f} '
              f'{r["restore_ratio"]:>6.2f}', flush=True)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=2)


if __name__ == '__main__':
    main()
