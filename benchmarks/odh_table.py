"""Full-precision vs binary backbone, with and without ODH's centres.

    python benchmarks/odh_table.py            # mnist5k: six runs
    python benchmarks/odh_table.py --smoke    # digits, 1 epoch: a check

For every backbone (``cnn``: full precision, ``bnn_cnn``: binary) and every
variant, one nested run trains all lengths at once in a temporary
directory:

- ``odh``: ODH with its semantic self-adaptive centres (prefix tables),
  experiments/configs/odh.py (warm-up, exploration, aggregation);
- ``odh_hadamard``: the same two-stage ODH training with CSQ's fixed
  Hadamard centres instead (no semantic centres);
- ``csq``: NHL with the CSQ loss (fixed centres, dominance weighting,
  distillation), the default config, for the same number of main epochs.

The printed Markdown table gives the best mAP per length (last evaluation
in brackets), the hashing network's size (deployed: binary layers packed
to 1 bit, ``nhl_jax.models.bnn.packed.model_bytes``; and all-float32) and its
inference time per image in eval mode (the float graph, and the packed
XNOR-popcount graph for binary backbones), on this machine's default
device. The warm-up classifier and the centre MLP are training-only and
not counted.
"""

import argparse
import os
import sys
import tempfile

from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax
import jax.numpy as jnp
from flax import nnx

from nhl_jax import cli, data, models
from nhl_jax.cli.configs import default, odh
from nhl_jax.models.bnn import packed
from nhl_jax.odh import model as odh_model


def _odh_config(centers):
    def make(base):
        config = odh.get_config()
        config.odh.centers = centers
        return _apply(config, base)
    return make


def _csq_config(base):
    config = default.get_config()
    config.method = 'csq'
    return _apply(config, base)


def _apply(config, base):
    for key, value in base.items():
        if key.startswith('odh.'):
            config.odh[key[4:]] = value
        else:
            config[key] = value
    if config.method != 'odh':  # NHL: main epochs only
        config.epochs = base.get('epochs', odh.get_config().epochs)
    return config


VARIANTS = {
    'odh': _odh_config('prefix'),
    'odh_hadamard': _odh_config('hadamard'),
    'csq': _csq_config,
}


def _hashing_network(backbone, shape, bits, method):
    """A fresh hashing network of the run's architecture (its size and
    speed do not depend on the trained values) and a forward on [0, 1]
    images."""
    rngs = nnx.Rngs(0)
    net = models.get_backbone(backbone, shape, rngs=rngs)
    if method == 'odh':
        return odh_model.Hasher(net, bits, rngs=rngs)
    return _FloatInput(models.HashNet(net, bits, rngs=rngs))


class _FloatInput(nnx.Module):
    """HashNet on [0, 1] float images (as the ODH hasher takes them)."""

    def __init__(self, net):
        self.net = net

    def __call__(self, x):
        return self.net.head(self.net.backbone(
            odh_model.normalise(self.net.backbone, x)))


def _cost(backbone, shape, bits, method, batch):
    module = _hashing_network(backbone, shape, bits, method)
    size = packed.model_bytes(module)
    images = jnp.asarray(batch, jnp.float32) / 255.0
    float_s = packed.seconds_per_image(module, images)
    binary = size.binary_weights > 0
    packed_s = (packed.seconds_per_image(packed.pack(module), images)
                if binary else float_s)
    return size, float_s, packed_s


def run(args) -> list[dict]:
    """Trains every (backbone, variant); returns one row dict each."""
    base = {'dataset': args.dataset, 'bits': args.bits, 'seed': args.seed}
    if args.epochs:
        base['epochs'] = args.epochs
    if args.smoke:
        base.update({'epochs': 1, 'eval_every': 1, 'batch_size': 100,
                     'odh.warmup_epochs': 0, 'odh.transition_epoch': 0})
    splits = data.load_splits(args.dataset, seed=args.seed)
    shape = data.image_shape(splits.train)
    batch = splits.query.images[:args.timing_batch]
    rows = []
    for backbone in args.backbones:
        for variant in args.variants:
            config = VARIANTS[variant](dict(base, backbone=backbone))
            with tempfile.TemporaryDirectory() as workdir:
                result = cli.train_and_evaluate(config, workdir)
            size, float_s, packed_s = _cost(backbone, shape, args.bits,
                                            config.method, batch)
            rows.append({'backbone': backbone, 'variant': variant,
                         'result': result, 'size': size, 'float_s': float_s,
                         'packed_s': packed_s})
    return rows


def table(rows, bits) -> str:
    """The Markdown table of ``run``'s rows."""
    head = ('| backbone | variant | ' + ' | '.join(f'{b} bits' for b in bits)
            + ' | deployed bytes | float32 bytes | ms / image (float) '
            '| ms / image (packed) | train s |')
    lines = [head, '|---' * (len(bits) + 7) + '|']
    for r in rows:
        res = r['result']
        cells = [f'{res["map"][str(b)]:.3f} ({res["map_last"][str(b)]:.3f})'
                 for b in bits]
        lines.append(
            f'| {r["backbone"]} | {r["variant"]} | ' + ' | '.join(cells)
            + f' | {r["size"].deployed:,} | {r["size"].float32:,} | '
            f'{1e3 * r["float_s"]:.3f} | {1e3 * r["packed_s"]:.3f} | '
            f'{res["train_seconds"]:.1f} |')
    return '\n'.join(lines)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', default='mnist5k')
    parser.add_argument('--backbones', default='cnn,bnn_cnn')
    parser.add_argument('--variants', default='odh,odh_hadamard,csq')
    parser.add_argument('--bits', default='8,16,32,64,128')
    parser.add_argument('--epochs', type=int, default=None,
                        help='main epochs (default: odh.py:mnist5k)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--timing_batch', type=int, default=256)
    parser.add_argument('--smoke', action='store_true',
                        help='digits, 8 bits, bnn_cnn, 1 epoch: a CI check')
    args = parser.parse_args(argv)
    if args.smoke:
        args.dataset, args.bits = 'digits', '8'
        args.backbones, args.variants = 'bnn_cnn', 'odh,csq'
        args.timing_batch = 8
    args.bits = tuple(int(b) for b in args.bits.split(','))
    args.backbones = args.backbones.split(',')
    args.variants = args.variants.split(',')
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f'unknown variants {unknown}; choose from '
                     f'{sorted(VARIANTS)}')
    return args


def main(argv=None):
    args = parse(argv)
    logging.set_verbosity(logging.WARNING)
    rows = run(args)
    k = 'all' if rows[0]['result']['top_k'] is None else rows[0]['result'][
        'top_k']
    print(f'\n{args.dataset}, seed {args.seed}, nested runs, best mAP@{k} '
          f'per length (last in brackets); device {jax.devices()[0]}\n')
    print(table(rows, args.bits))
    return rows


if __name__ == '__main__':
    main()
