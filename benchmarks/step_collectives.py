"""The collectives of the NHL train step on N fake CPU devices.

    python benchmarks/step_collectives.py [--devices 4]

About a minute on 2 CPU cores. Each case builds the NHL step (DPN,
weighting ``paper``, distillation 0.1) from an abstract state
(``jax.eval_shape``: nothing is initialised), jits it with
``train.compile_step`` over a mesh of ``--devices`` fake CPU devices, the
batch sharded ``P('data')``, compiles it at XLA backend level 0 (the HLO
passes, collective combiners included, run at every level) and prints one
Markdown row per case: the all-gathers and all-reduces of the compiled
program, with their shapes. Issue 32: a step whose batch is split gathers
no features, per-length output gradients or codes; what crosses devices is
the weighting's [M, D, K] products and the distillation's [K, K] sums.
"""

import argparse
import collections
import os
import re
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# name -> (tiny_config overrides, backbone_kwargs, compile_step options).
CASES = {
    'MLP D=256, B=256, bits 8/16/32': (
        {'bits': (8, 16, 32), 'batch_size': 256}, {}, {}),
    'MLP D=256, B=64, bits 8-128': (
        {'bits': (8, 16, 32, 64, 128), 'batch_size': 64}, {}, {}),
    'ResNet-18, B=32, bits 8/16, sync_batch_stats=false': (
        {'backbone': 'resnet18', 'batch_size': 32}, {'input_size': None},
        {'sync_batch_stats': False}),
}
_OP = re.compile(r'= (.*?) (all-gather|all-reduce)(?:-start)?\(')


def compiled_text(config, **options) -> str:
    """The step of ``config`` over every device, compiled, as HLO text."""
    from nhl_jax import data
    from nhl_jax.cli import lowering
    lowered = lowering.lower_train_step(
        config, data.load_splits(config.dataset, seed=0), **options)
    return lowered.compile(lowering.FAST_COMPILE).as_text()


def collectives(text: str) -> dict[str, list[str]]:
    """op -> the result shapes of each of its instructions."""
    found = collections.defaultdict(list)
    for line in text.splitlines():
        match = _OP.search(line)
        if match:
            shapes = re.findall(r'[a-z]+\d+\[[\d,]*\]', match.group(1))
            found[match.group(2)].append(
                shapes[0] if len(shapes) == 1 else f'({len(shapes)} arrays)')
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--devices', type=int, default=4)
    args = parser.parse_args()
    jax.config.update('jax_num_cpu_devices', args.devices)
    from tests.support import systems
    print(f'| step ({args.devices} devices) | all-gathers | all-reduces |')
    print('|---|---|---|')
    for name, (overrides, backbone_kwargs, options) in CASES.items():
        config = systems.tiny_config('nhl', weighting='paper',
                                     distill_weight=0.1, **overrides)
        config.backbone_kwargs = backbone_kwargs
        found = collectives(compiled_text(config, **options))
        cells = [f'{len(found[op])}: ' + ', '.join(found[op])
                 if found[op] else '0' for op in ('all-gather', 'all-reduce')]
        print(f'| {name} | {cells[0]} | {cells[1]} |', flush=True)


if __name__ == '__main__':
    main()
