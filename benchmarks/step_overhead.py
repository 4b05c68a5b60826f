"""Milliseconds per train step and each rule's overhead over plain nested.

    python benchmarks/step_overhead.py [--method=dpn] [--backbone=cnn]
                                       [--rounds=7]
    python benchmarks/step_overhead.py --smoke      # CI: seconds, digits MLP
    python benchmarks/step_overhead.py --only=paper --stacked

Times the jitted ``nhl_jax.train`` step of the small MNIST CNN
(conv32-pool-conv64-pool-fc256, batch 64, lengths 8/16/32/64/128) on a
fixed random batch for: plain nested (weighting 'none', no distillation),
+ distillation (0.1), + each weighting rule of ``objective.WEIGHTINGS``
without distillation (the dominance rules 'paper' and 'released', the
baselines), and full NHL (paper + distillation); one single-length step
(64 bits) for reference. ``--stacked`` adds each nested variant again
with every length in one vmap (``config.stack_lengths``,
``nhl_jax.nhl.stacked``). Variants are interleaved round by round so that
machine noise hits them alike; a variant's overhead is the median over
rounds of its time divided by plain nested's time in the same round, minus
one. Target for the dominance weighting: <= 3 % (the NHL paper reports
about 11 %). Supersedes benchmarks/step_time.py.

    python benchmarks/step_overhead.py --against-torch --rounds=9

times the same steps against PyTorch's (``benchmarks/torch_step.py``; torch
is optional) for single length, plain nested, + distillation, + weighting
'paper' and full NHL, and the backbone's forward and forward + backward
alone; each pair alternates round by round, and the table reports the
median of the per-round ratios nhl_jax / PyTorch. Then the full NHL step
over PyTorch's plain nested step, and each framework's NHL extras (full
over plain nested, timed back to back A B B A in every round, since a
few per cent drown in the drift between blocks a whole round apart).
"""

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nhl_jax import cli, compiler, train
from nhl_jax.cli.configs import default
from nhl_jax.nhl import objective

PLAIN = 'nested, plain'
FULL = 'full NHL (paper + distillation)'


def _variants(bits, only=None):
    """name -> (bits, weighting, distill_weight); ``only``: rules to time."""
    if only is None:
        rules = [r for r in objective.WEIGHTINGS if r != 'none']
        single = bits[-2] if len(bits) > 1 else bits[0]
        variants = {f'single length ({single} bits)': ((single,), 'none', 0.0),
                    PLAIN: (bits, 'none', 0.0),
                    'nested + distillation': (bits, 'none', 0.1)}
    else:
        rules, variants = only.split(','), {PLAIN: (bits, 'none', 0.0)}
    for name in rules:
        objective.get_weighting(name, bits)  # unknown name: fail now
        variants[f'nested + weighting {name}'] = (bits, name, 0.0)
    if only is None:
        variants[FULL] = (bits, 'paper', 0.1)
    return variants


def _batch(shape, classes, batch, seed=0):
    rng = np.random.default_rng(seed)
    return {
        'image': rng.integers(0, 256, (batch, *shape), dtype=np.uint8),
        'label': np.eye(classes, dtype=np.float32)[
            rng.integers(0, classes, batch)],
        'index': rng.permutation(2000)[:batch].astype(np.int32),
    }


def _stepper(args, bits, weighting, distill_weight, stack=False):
    config = default.get_config()
    config.stack_lengths = stack
    config.method, config.backbone = args.method, args.backbone
    config.weighting, config.distill_weight = weighting, distill_weight
    config.bits = bits
    info = train.DataInfo(tuple(args.shape), 10,
                          {'train': 2000, 'query': 1, 'database': 1})
    setup, state = cli.create_train_state(cli.resolve(config), info)
    compiled = train.compile_step(setup.steps['train'])

    def step(state, batch):
        return compiled(state, batch, None)

    batch = _batch(args.shape, 10, args.batch_size)
    for _ in range(3):  # compile and warm up
        state, _ = step(state, batch)
    jax.block_until_ready(state)
    return step, state, batch


def _time(step, state, batch, steps):
    start = time.perf_counter()
    for _ in range(steps):
        state, _ = step(state, batch)
    jax.block_until_ready(state)
    return state, 1e3 * (time.perf_counter() - start) / steps


TORCH_VARIANTS = {  # name -> (bits or None for all, weighting, distill)
    'single length (64 bits)': ((64,), 'none', 0.0),
    PLAIN: (None, 'none', 0.0),
    'nested + distillation': (None, 'none', 0.1),
    'nested + weighting paper': (None, 'paper', 0.0),
    FULL: (None, 'paper', 0.1),
}


def _jax_backbone(args, backward: bool):
    """The cnn backbone alone, jitted: features, or grad of sum(f^2)."""
    from flax import nnx

    from nhl_jax.models import small
    graphdef, params = nnx.split(small.SmallCNN(tuple(args.shape),
                                                rngs=nnx.Rngs(0)))
    images = jax.numpy.asarray(
        np.random.default_rng(0).random((args.batch_size, *args.shape)),
        jax.numpy.float32)

    def value(p):
        return jax.numpy.sum(nnx.merge(graphdef, p)(images) ** 2)

    # compiler.jit: the backbone compiled as the library's steps are.
    fn = compiler.jit(jax.grad(value) if backward
                      else lambda p: nnx.merge(graphdef, p)(images))
    return lambda: fn(params)


def _time_call(fn, steps):
    jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return 1e3 * (time.perf_counter() - start) / steps


def against_torch(args):
    """Prints nhl_jax / PyTorch step-time ratios from interleaved rounds."""
    import torch_step  # benchmarks/torch_step.py; needs torch
    bits = tuple(int(b) for b in args.bits.split(','))
    pairs = {}
    for name, (b, weighting, distill) in TORCH_VARIANTS.items():
        b = b or bits
        step, state, batch = _stepper(args, b, weighting, distill)
        holder = [state]

        def jax_call(step=step, holder=holder, batch=batch):
            holder[0], metrics = step(holder[0], batch)
            return metrics
        pairs[name] = (jax_call, torch_step.TorchStep(
            b, weighting=weighting, distill_weight=distill,
            batch_size=args.batch_size))
    for backward in (False, True):
        name = ('backbone forward + backward' if backward
                else 'backbone forward')
        pairs[name] = (_jax_backbone(args, backward),
                       torch_step.TorchBackbone(backward=backward,
                                                batch_size=args.batch_size))
    times = {name: ([], []) for name in pairs}
    extras = ([], [])  # per round, full / plain of each framework
    for _ in range(args.rounds):
        for name, (jax_fn, torch_fn) in pairs.items():
            times[name][0].append(_time_call(jax_fn, args.steps))
            times[name][1].append(_time_call(torch_fn, args.steps))
        for i in (0, 1):  # back to back, A B B A: the extras are small
            plain, full = pairs[PLAIN][i], pairs[FULL][i]
            a = _time_call(plain, args.steps)
            b = _time_call(full, args.steps) + _time_call(full, args.steps)
            extras[i].append(b / (a + _time_call(plain, args.steps)))
    torch = torch_step.torch
    print(f'{args.method}, {args.backbone}, batch {args.batch_size}, bits '
          f'{args.bits}, {jax.devices()[0].device_kind}, torch '
          f'{torch.__version__} ({torch.get_num_threads()} threads), median '
          f'of {args.rounds} interleaved rounds x {args.steps} steps')
    print('| variant | nhl_jax ms | PyTorch ms | nhl_jax / PyTorch |')
    print('|---|---|---|---|')
    for name, (ours, theirs) in times.items():
        ratio = statistics.median(a / b for a, b in zip(ours, theirs))
        print(f'| {name} | {statistics.median(ours):.1f} | '
              f'{statistics.median(theirs):.1f} | {ratio:.2f}x |')
    ours_full, torch_plain = times[FULL][0], times[PLAIN][1]
    cross = statistics.median(a / b for a, b in zip(ours_full, torch_plain))
    print(f'\nfull NHL (nhl_jax) / plain nested (PyTorch): {cross:.2f}x')
    for label, ratios in zip(('nhl_jax', 'PyTorch'), extras):
        extra = statistics.median(ratios) - 1
        print(f'NHL extras over plain nested, {label}: {100 * extra:+.1f} % '
              '(full NHL vs plain nested back to back, A B B A per round)')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--method', default='dpn')
    parser.add_argument('--backbone', default='cnn')
    parser.add_argument('--bits', default='8,16,32,64,128')
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--only', default=None,
                        help='comma-separated weighting rules to time '
                             '(default: all of objective.WEIGHTINGS)')
    parser.add_argument('--smoke', action='store_true',
                        help='CI: digits MLP, 8/16 bits, plain nested, '
                             'paper and pcgrad (or --only), 1 round of 2 '
                             'steps')
    parser.add_argument('--stacked', action='store_true',
                        help='also each nested variant with '
                             '--config.stack_lengths=true')
    parser.add_argument('--against-torch', action='store_true',
                        help='ratios to the same step in PyTorch (cnn)')
    args = parser.parse_args()
    if args.against_torch:
        if args.backbone != 'cnn' or args.method != 'dpn':
            parser.error('--against-torch times the dpn step of the cnn.')
        args.shape = (28, 28, 1)
        against_torch(args)
        return
    if args.smoke:
        args.backbone, args.bits, args.batch_size = 'mlp', '8,16', 32
        args.rounds, args.steps = 1, 2
        args.only = args.only or 'paper,pcgrad'
    args.shape = (28, 28, 1) if args.backbone == 'cnn' else (8, 8, 1)
    variants = _variants(tuple(int(b) for b in args.bits.split(',')),
                         args.only)
    if args.stacked:
        variants.update({f'{name}, stacked lengths': (*v, True)
                         for name, v in variants.items() if len(v[0]) > 1})
    runs = {name: list(_stepper(args, *v)) for name, v in variants.items()}
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in runs.items():
            run[1], ms = _time(*run, args.steps)
            times[name].append(ms)
    print(f'{args.method}, {args.backbone}, batch {args.batch_size}, bits '
          f'{args.bits}, {jax.devices()[0].device_kind}, median of '
          f'{args.rounds} interleaved rounds x {args.steps} steps')
    print('| variant | ms / step | overhead vs plain nested |')
    print('|---|---|---|')
    for name, values in times.items():
        ratio = statistics.median(
            v / p for v, p in zip(values, times[PLAIN]))
        print(f'| {name} | {statistics.median(values):.1f} | '
              f'{100 * (ratio - 1):+.1f} % |')


if __name__ == '__main__':
    main()
