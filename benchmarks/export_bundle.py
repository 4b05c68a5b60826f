"""Exporting a trained run as a bundle: seconds, and bytes per code length.

    python benchmarks/export_bundle.py [--epochs 1] [--repeats 3]
                                       [--resnet50] [--out results.json]
    python benchmarks/export_bundle.py --smoke     # digits, MLP, seconds

1. The small CNN on mnist5k (the default config, 8/16/32/64/128 bits):
   trains one run of ``--epochs`` epochs (the export does not depend on
   how well it learned), then times ``nhl_jax.cli.export_run`` end to end
   (``--repeats`` times into fresh directories; median and range), which
   restores the run, encodes the database, exports the encoder for CPU,
   CUDA and TPU and writes every file; and, on their own, the encoder's
   ``jax.export`` + ``serialize()``. Then ``nhl_jax.serving.load`` and the
   first ``encode`` of the 1,000 query images (its compile included).
   Prints the bundle's files: the encoder and the database codes file
   serve every length; per length the faiss index and the N x ceil(b / 8)
   bytes of the codes.
2. ``--resnet50``: the encoder of a ResNet-50 head (224 x 224 x 3 images,
   the same lengths) with RANDOM initial weights, not trained and without
   a database: only ``jax.export`` + ``serialize()`` seconds and bytes,
   which depend on the shapes alone.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import jax
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nhl_jax import cli, serving, train
from nhl_jax.cli import bundle, inference, registry
from nhl_jax.cli import config as config_lib
from nhl_jax.cli.configs import default

_SMOKE = {'dataset': 'digits', 'backbone': 'mlp', 'bits': (8, 16),
          'epochs': 1, 'eval_every': 1, 'batch_size': 32}


def _config(args):
    config = default.get_config()
    config.update({'backbone': 'cnn', 'epochs': args.epochs,
                   'eval_every': args.epochs})
    if args.smoke:
        config.update(_SMOKE)
    return config


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _seconds(values) -> str:
    if len(values) == 1:
        return f'{values[0]:.2f}'
    return (f'{statistics.median(values):.2f} ({min(values):.2f}-'
            f'{max(values):.2f})')


def _encoder_seconds(workdir) -> tuple[float, int]:
    """(seconds, bytes) of the encoder's jax.export + serialize()."""
    sets = inference.load_data(inference.read_config(workdir))
    run = inference.load_run_for(workdir, sets.database)
    fn = inference.packed_codes_fn(run)
    shape = sets.database.images.shape[1:]
    exported, seconds = _timed(lambda: bundle.export_encoder(fn, shape)[0])
    data, serialize = _timed(exported.serialize)
    return seconds + serialize, len(data)


def _serving_seconds(out, workdir) -> tuple[float, float]:
    """(load seconds, first encode of the query split seconds)."""
    images = inference.load_data(inference.read_config(workdir)).query.images
    searcher, load = _timed(lambda: serving.load(out))
    _, encode = _timed(lambda: searcher.encode(images))
    return load, encode


def cnn(args, root) -> tuple[list[str], dict]:
    """The trained run's export: timing lines, size table, and numbers."""
    workdir = os.path.join(root, 'run')
    cli.train_and_evaluate(_config(args), workdir)
    times = []
    for i in range(args.repeats):
        out = os.path.join(root, f'bundle{i}')
        manifest, seconds = _timed(lambda o=out: cli.export_run(workdir, o))
        times.append(seconds)
    encoder, encoder_bytes = _encoder_seconds(workdir)
    load, encode = _serving_seconds(out, workdir)
    files = {n: os.path.getsize(os.path.join(out, n)) for n in os.listdir(out)}
    size = manifest['database']['size']
    source = manifest['source']
    title = (
        f'\n**{source["backbone"]} on {source["dataset"]}**: export_run '
        f'{_seconds(times)} s over {args.repeats} run(s); the encoder\'s '
        f'jax.export + serialize {encoder:.2f} s ({encoder_bytes:,} bytes, '
        f'platforms {", ".join(manifest["encoder"]["platforms"])}); '
        f'serving.load {load:.3f} s, first encode of the queries '
        f'{encode:.2f} s\n')
    lines = [
        title,
        '| bits | faiss index bytes | codes bytes (N x ceil(b / 8)) |',
        '|---|---|---|']
    for b in manifest['bits']:
        lines.append(f'| {b} | {files[manifest["faiss"][str(b)]]:,} | '
                     f'{size * -(-b // 8):,} |')
    lines += ['', '| file (every length) | bytes |', '|---|---|']
    lines += [f'| {name} | {files[name]:,} |' for name in
              ('encoder.jaxexport', 'database.npz', 'manifest.json')]
    lines.append(f'| whole bundle | {sum(files.values()):,} |')
    return lines, {'export_seconds': times, 'encoder_seconds': encoder,
                   'load_seconds': load, 'encode_seconds': encode,
                   'files': files, 'database_size': size}


def resnet50(args) -> tuple[list[str], dict]:
    """The export of a randomly initialised ResNet-50 head's encoder."""
    config = default.get_config()
    config.update({'backbone': 'resnet50'})
    spec = config_lib.resolve(config)
    shape = (224, 224, 3)
    info = train.DataInfo(shape, 10, dict.fromkeys(('train', 'query',
                                                     'database'), 1))
    (setup, state), init = _timed(
        lambda: registry.create_train_state(spec, info))
    fn = inference.codes_function(
        [(spec.bits, setup.encode, state.params, state.rest)],
        registry.SYSTEMS[spec.system].layout(spec.bits), spec.bits)
    exported, seconds = _timed(lambda: bundle.export_encoder(fn, shape)[0])
    data, serialize = _timed(exported.serialize)
    params = sum(x.size for x in jax.tree.leaves(state.params))
    lines = [(f'\n**ResNet-50 head, random init, {shape} images, '
              f'{params:,} parameters**: init {init:.1f} s, jax.export '
              f'{seconds:.2f} s, serialize {serialize:.2f} s, encoder '
              f'{len(data):,} bytes (platforms '
              f'{", ".join(exported.platforms)})')]
    return lines, {'init_seconds': init, 'export_seconds': seconds,
                   'serialize_seconds': serialize, 'bytes': len(data)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--epochs', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--resnet50', action='store_true')
    parser.add_argument('--out', default=None, help='JSON of the numbers')
    parser.add_argument('--smoke', action='store_true',
                        help='digits, the MLP, one export')
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    if args.smoke:
        args.repeats, args.resnet50 = 1, False
    with tempfile.TemporaryDirectory() as root:
        lines, numbers = cnn(args, root)
    results = {'cnn': numbers}
    if args.resnet50:
        more, results['resnet50'] = resnet50(args)
        lines += more
    print('\n'.join(lines))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
