"""Input pipeline: decoded images/s of list-file datasets, and input waits.

Writes ``--files`` JPEGs (``--side`` x ``--side``, smooth random colour
fields plus pixel noise, quality 90: about 40 KB at 320x320) and a
DeepHash-style list file of ``--rows`` lines cycling over them into a
temporary directory, reads it back as a ``FileDataset`` (resize the shorter
side to 256, random 224 crop and flip) and measures, for each way of
building batches (inline, the automatic default, ``--threads`` decoding
threads, ``--processes`` worker processes):

1. Decoding: one epoch of ``data.train_batches`` (``--batch`` images a
   batch) per block, timed from creating the iterator to its last batch,
   so worker start-up counts as it does in training (one iterator per
   epoch); images/s and the time to the first batch.
2. A training-like loop: the same epoch feeds a jitted dummy step of fixed
   cost (``--matrix`` matmuls, as many as take about as long as decoding
   one batch inline, or ``--step_ms``), dispatched asynchronously as the
   trainer does. Printed: ms per step against the step alone (on a
   prepared batch), the share of the loop the step could not account for
   (the device idling for input), and the share of the loop the host spent
   blocked in ``next()``.

Methods run in ``--repeats`` interleaved blocks (each block runs every
method once) and the tables give medians, so drift of a shared machine
hits all methods alike. When run as a script the step's XLA CPU code is
single-threaded, so on a CPU-only host it stands for an accelerator that
leaves the other cores to decoding (on a GPU host it runs on the GPU).

Usage:
  python benchmarks/input_pipeline.py [--files 512] [--side 320]
      [--rows 1024] [--batch 64] [--threads 1,2,4] [--processes 1,2]
      [--repeats 3] [--step_ms MS] [--smoke]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from nhl_jax import data
from nhl_jax.data import files, listfile, pipeline

_CLASSES = 10


def write_list_dataset(root: str, num_files: int, side: int, rows: int,
                       seed: int = 0) -> str:
    """Writes JPEGs and a list file of ``rows`` lines; returns its path.

    The images are upsampled 8x8 random colour fields with pixel noise:
    random enough that JPEG cannot shortcut them, smooth enough to
    compress like photographs rather than like white noise.
    """
    rng = np.random.default_rng(seed)
    names = []
    for i in range(num_files):
        field = Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8))
        pixels = np.asarray(field.resize((side, side),
                                         Image.Resampling.BICUBIC), np.int16)
        pixels = pixels + rng.integers(-16, 17, pixels.shape)
        name = f'img_{i:05d}.jpg'
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            os.path.join(root, name), quality=90)
        names.append(name)
    path = os.path.join(root, 'train.txt')
    with open(path, 'w') as f:
        for i in range(rows):
            labels = ['0'] * _CLASSES
            labels[i % _CLASSES] = '1'
            f.write(f'{names[i % num_files]} {" ".join(labels)}\n')
    return path


def _methods(ds, threads, processes):
    """Label -> the ``workers`` argument of ``data.train_batches``."""
    methods = {'inline (0)': 0}
    for t in threads:
        methods[f'{t} thread{"s" * (t > 1)}'] = pipeline.Workers(0, t)
    for p in processes:
        methods[f'{p} process{"es" * (p > 1)}'] = p
    auto = pipeline.resolve_workers(ds, None)
    same = [k for k, v in methods.items()
            if pipeline.resolve_workers(ds, v) == auto]
    if not same:
        methods[f'auto ({auto.processes} processes, {auto.threads} '
                'threads)'] = None
    # The default is one of the rows: mark it rather than time it twice.
    return {f'{k}, auto' if same and k == same[0] else k: v
            for k, v in methods.items()}


def _close(batches) -> None:
    # grain's worker processes hold shared memory until their iterator is
    # closed; garbage collection may come too late.
    if hasattr(batches, 'close'):
        batches.close()


def _decode_epoch(ds, batch, epoch, workers):
    """(images/s over the epoch, seconds to the first batch)."""
    start = time.perf_counter()
    batches = data.train_batches(ds, batch, seed=0, epoch=epoch,
                                 workers=workers)
    next(batches)
    first = time.perf_counter() - start
    count = 1 + sum(1 for _ in batches)
    seconds = time.perf_counter() - start
    _close(batches)
    return count * batch / seconds, first


def _make_step(matrix: int, repeats: int):
    """A jitted step: ``repeats`` [matrix, matrix] matmuls, then the batch.

    The batch enters through its mean, so every step reads its images (the
    transfer an accelerator would make) at almost no cost of its own.
    """
    weight = jnp.asarray(np.random.default_rng(0).standard_normal(
        (matrix, matrix), np.float32) / np.sqrt(matrix))

    @jax.jit
    def step(x, images):  # x [matrix, matrix], images [B, H, W, 3] uint8
        x = jax.lax.fori_loop(0, repeats, lambda _, y: jnp.tanh(y @ weight),
                              x)
        return x + 1e-6 * jnp.mean(images, dtype=jnp.float32)

    return step


def _calibrate(matrix: int, target_ms: float, images: np.ndarray):
    """A step of about ``target_ms`` milliseconds, and its input state."""
    x = jnp.ones((matrix, matrix), jnp.float32)
    repeats = 16
    for _ in range(2):  # scale once from a probe, then once more
        step = _make_step(matrix, repeats)
        jax.block_until_ready(step(x, images))  # compile
        ms = min(_step_alone(step, x, images, 3) for _ in range(3))
        repeats = max(1, round(repeats * target_ms / ms))
    step = _make_step(matrix, repeats)
    jax.block_until_ready(step(x, images))
    return step, x


def _step_alone(step, x, images, steps):
    """ms per step of ``steps`` asynchronously dispatched steps."""
    start = time.perf_counter()
    for _ in range(steps):
        x = step(x, images)
    jax.block_until_ready(x)
    return 1e3 * (time.perf_counter() - start) / steps


def _train_epoch(step, x, ds, batch, epoch, workers):
    """(ms per step, share of the loop blocked in ``next()``)."""
    start = time.perf_counter()
    batches = data.train_batches(ds, batch, seed=0, epoch=epoch,
                                 workers=workers)
    waiting, steps = 0.0, 0
    while True:
        asked = time.perf_counter()
        try:
            images = next(batches)['image']
        except StopIteration:
            break
        waiting += time.perf_counter() - asked
        x = step(x, images)  # asynchronous, as in the trainer
        steps += 1
    jax.block_until_ready(x)
    total = time.perf_counter() - start
    _close(batches)
    return 1e3 * total / steps, waiting / total


def _median(values, index=None):
    return statistics.median(v if index is None else v[index]
                             for v in values)


def run(args) -> str:
    """Runs the benchmark in a fresh temporary directory; returns tables."""
    with tempfile.TemporaryDirectory(prefix='input_pipeline_') as root:
        path = write_list_dataset(root, args.files, args.side, args.rows)
        ds = files.from_list_split(listfile.read_list_file(path, root),
                                   resize=args.resize, crop=args.crop)
        methods = _methods(ds, args.threads, args.processes)
        steps = data.steps_per_epoch(args.rows, args.batch)
        decoding = {name: [] for name in methods}
        for block in range(args.repeats):
            for name, workers in methods.items():
                decoding[name].append(
                    _decode_epoch(ds, args.batch, block, workers))
        inline_ms = 1e3 * args.batch / _median(decoding['inline (0)'], 0)
        target = args.step_ms or inline_ms
        images = files.gather(ds, np.arange(args.batch), None)
        step, x = _calibrate(args.matrix, target, images)
        alone, loops = [], {name: [] for name in methods}
        for block in range(args.repeats):
            alone.append(_step_alone(step, x, images, steps))
            for name, workers in methods.items():
                loops[name].append(_train_epoch(step, x, ds, args.batch,
                                                block, workers))
    step_ms = _median(alone)
    title = (f'{args.rows} rows over {args.files} JPEGs of {args.side}x'
             f'{args.side}, resize {args.resize} + crop {args.crop}, batch '
             f'{args.batch}, {pipeline.available_cpus()} CPUs, step on '
             f'{jax.devices()[0].device_kind}, median of {args.repeats} '
             'interleaved blocks')
    header = ('| workers | images / s | first batch s | ms / step '
              f'(step alone {step_ms:.1f}) | device idle | host in next() |')
    lines = [title, '', header, '|---|---|---|---|---|---|']
    for name in methods:
        per_step = _median(loops[name], 0)
        idle = max(0.0, 1 - step_ms / per_step)
        lines.append(
            f'| {name} | {_median(decoding[name], 0):.0f} | '
            f'{_median(decoding[name], 1):.2f} | {per_step:.1f} | '
            f'{100 * idle:.0f} % | {100 * _median(loops[name], 1):.0f} % |')
    return '\n'.join(lines)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(',') if t)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--files', type=int, default=512)
    p.add_argument('--side', type=int, default=320)
    p.add_argument('--rows', type=int, default=1024)
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--resize', type=int, default=256)
    p.add_argument('--crop', type=int, default=224)
    p.add_argument('--threads', type=_ints, default=(1, 2, 4))
    p.add_argument('--processes', type=_ints, default=(1, 2))
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--matrix', type=int, default=256)
    p.add_argument('--step_ms', type=float, default=None,
                   help='dummy step time (default: inline decode of a '
                        'batch)')
    p.add_argument('--smoke', action='store_true',
                   help='CI: 16 tiny images, 4 batches of 4, 1 block')
    args = p.parse_args(argv)
    if args.smoke:
        args.files, args.side, args.rows, args.batch = 16, 40, 16, 4
        args.resize, args.crop, args.threads = 32, 28, (2,)
        args.processes, args.repeats, args.matrix = (1,), 1, 32
    table = run(args)
    print(table)
    return table


if __name__ == '__main__':
    # Before the backend starts: one CPU thread for the dummy step, which
    # stands for an accelerator, so the other cores are left to decoding.
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               ' --xla_cpu_multi_thread_eigen=false').strip()
    main(sys.argv[1:])
