"""Input pipeline: decoded images/s per core of list-file datasets.

Writes ``--files`` JPEGs of ``--size`` (WxH, default 500x375, ImageNet's
typical photograph; smooth random colour fields plus pixel noise, quality
90: about 64 KB each) and a DeepHash-style list file of ``--rows`` lines
cycling over them into a temporary directory, reads it back as a
``FileDataset`` (resize the shorter side to 256, random 224 crop and flip)
and times one epoch of ``data.train_batches`` (``--batch`` images a batch)
per way of building batches (inline, ``--threads`` decoding threads,
``--processes`` worker processes) and per variant:

- ``before``: the ``full`` decoder (the whole image decoded at full scale
  and resized, then cropped) and worker processes started per iterator
  (grain ``mp_prefetch``: one set each epoch), as up to issue 32;
- ``after``: the ``draft`` decoder (reduced JPEG scale where the resize
  allows it, only the crop resampled) and one ``WorkerPool`` serving every
  epoch, started once before the blocks (its start is printed apart).

Each epoch is timed from creating the iterator to its last batch, so a
per-epoch worker start counts as it does in training. Printed: images/s;
the CPU seconds of this process and its workers over the epoch as cores
kept busy; images/s per core (images per CPU second, which other jobs on
a shared machine disturb far less than wall time); the time to the first
batch; and the cores needed to feed a step of ``--step_ms`` at
``--batch`` (default: 3,000 images/s, one H100 training ResNet-50).
Variants alternate within each of ``--repeats`` interleaved blocks; the
tables give medians, and after / before as the median of the blocks'
ratios.

``--loop`` also feeds each epoch to a jitted dummy step of fixed cost
(``--matrix`` matmuls taking as long as decoding a batch inline),
dispatched asynchronously as the trainer does: ms per step against the
step alone, the device's idle share and the host's share in ``next()``.
As a script the step's XLA CPU code is single-threaded, so on a CPU-only
host it stands for an accelerator that leaves the other cores to decoding.

Usage:
  python benchmarks/input_pipeline.py [--files 256] [--size 500x375]
      [--rows 1024] [--batch 64] [--threads 1,2,4] [--processes 1,2]
      [--variants before,after] [--repeats 5] [--step_ms MS] [--loop]
      [--smoke]
"""

import argparse
import contextlib
import os
import resource
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
# (decoder, whether worker processes serve the whole run) per variant.
VARIANTS = {'before': ('full', False), 'after': ('draft', True)}


def write_list_dataset(root: str, num_files: int, size: tuple[int, int],
                       rows: int, seed: int = 0) -> str:
    """Writes JPEGs of ``size`` (W, H) and a list file; returns its path.

    The images are upsampled 8x8 random colour fields with pixel noise:
    random enough that JPEG cannot shortcut them, smooth enough to
    compress like photographs rather than like white noise.
    """
    rng = np.random.default_rng(seed)
    names = []
    for i in range(num_files):
        field = Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8))
        pixels = np.asarray(field.resize(size, Image.Resampling.BICUBIC),
                            np.int16)
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


def _cpu_seconds(pids=()) -> float:
    """CPU seconds of this process, its waited-for children and ``pids``.

    grain's per-epoch workers count once joined (their iterator closed);
    a pool's live workers are read from /proc (Linux).
    """
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = time.process_time() + children.ru_utime + children.ru_stime
    for pid in pids:
        with open(f'/proc/{pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf(
            'SC_CLK_TCK')
    return total


def _close(batches) -> None:
    # grain's worker processes hold shared memory until their iterator is
    # closed; garbage collection may come too late.
    if hasattr(batches, 'close'):
        batches.close()


def _decode_epoch(ds, batch, epoch, workers):
    """(images/s, CPU seconds per wall second, seconds to first batch)."""
    pids = getattr(workers, 'pids', ())
    cpu = _cpu_seconds(pids)
    start = time.perf_counter()
    batches = data.train_batches(ds, batch, seed=0, epoch=epoch,
                                 workers=workers)
    next(batches)
    first = time.perf_counter() - start
    count = 1 + sum(1 for _ in batches)
    seconds = time.perf_counter() - start
    _close(batches)
    cores = (_cpu_seconds(pids) - cpu) / seconds
    return count * batch / seconds, cores, first


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


def _cases(ds, methods, variants, stack):
    """(method, variant) -> (dataset, workers); pools enter ``stack``.

    Returns the cases and the seconds each pool took to serve its first
    element (its processes' start).
    """
    cases, starts = {}, {}
    for variant in variants:
        decoder, persistent = VARIANTS[variant]
        source = ds._replace(decoder=decoder)
        for name, plan in methods.items():
            if persistent and pipeline.resolve_workers(ds, plan).processes:
                begun = time.perf_counter()
                plan = stack.enter_context(pipeline.run_workers(plan, ds))
                batches = data.eval_batches(source, 1, workers=plan)
                next(batches)
                _close(batches)
                starts[name] = time.perf_counter() - begun
            cases[name, variant] = source, plan
    return cases, starts


def _time(cases, args, epoch_fn):
    """Case -> one ``epoch_fn`` result per block, variants alternating."""
    results = {case: [] for case in cases}
    order = list(cases)
    for block in range(args.repeats):
        # Alternate which variant goes first, so drift favours neither.
        for case in (order if block % 2 == 0 else order[::-1]):
            source, plan = cases[case]
            results[case].append(epoch_fn(source, block, plan))
    return results


def _table(args, methods, variants, decoding, starts) -> list[str]:
    feed = 1e3 * args.batch / args.step_ms  # images/s a step consumes
    header = ('| workers | variant | images / s | cores busy | images / s '
              f'per core | first batch s | cores for {args.batch} images / '
              f'{args.step_ms:.1f} ms |')
    lines = [header, '|---|---|---|---|---|---|---|']
    for name in methods:
        for variant in variants:
            runs = decoding[name, variant]
            per_core = _median([r[0] / r[1] for r in runs])
            lines.append(
                f'| {name} | {variant} | {_median(runs, 0):.0f} | '
                f'{_median(runs, 1):.2f} | {per_core:.0f} | '
                f'{_median(runs, 2):.2f} | {feed / per_core:.1f} |')
    if starts:
        lines += ['', 'Pool start (once per run): ' + ', '.join(
            f'{name} {seconds:.1f} s' for name, seconds in starts.items())]
    return lines


def _ratios(methods, variants, decoding) -> list[str]:
    if variants != ('before', 'after'):
        return []
    header = ('| workers | per core, after / before | images / s, after / '
              'before |')
    lines = ['', header, '|---|---|---|']
    for name in methods:
        pairs = zip(decoding[name, 'before'], decoding[name, 'after'])
        per_core = [(a[0] / a[1]) / (b[0] / b[1]) for b, a in pairs]
        wall = [a[0] / b[0] for b, a in zip(decoding[name, 'before'],
                                             decoding[name, 'after'])]
        lines.append(f'| {name} | {_median(per_core):.2f} | '
                     f'{_median(wall):.2f} |')
    return lines


def _loop_table(args, ds, cases) -> list[str]:
    inline = cases['inline (0)', args.variants[0]][0]
    images = files.gather(inline, np.arange(args.batch), None)
    start = time.perf_counter()
    files.gather(inline, np.arange(args.batch), (0, 0))
    target = 1e3 * (time.perf_counter() - start)
    step, x = _calibrate(args.matrix, target, images)
    steps = data.steps_per_epoch(args.rows, args.batch)
    alone = []

    def epoch(source, block, plan):
        alone.append(_step_alone(step, x, images, steps))
        return _train_epoch(step, x, source, args.batch, block, plan)

    loops = _time(cases, args, epoch)
    step_ms = _median(alone)
    header = (f'| workers | variant | ms / step (step alone {step_ms:.1f}) '
              '| device idle | host in next() |')
    lines = ['', header, '|---|---|---|---|---|']
    for (name, variant), runs in loops.items():
        per_step = _median(runs, 0)
        idle = max(0.0, 1 - step_ms / per_step)
        lines.append(f'| {name} | {variant} | {per_step:.1f} | '
                     f'{100 * idle:.0f} % | {100 * _median(runs, 1):.0f} % |')
    return lines


def run(args) -> str:
    """Runs the benchmark in a fresh temporary directory; returns tables."""
    with (tempfile.TemporaryDirectory(prefix='input_pipeline_') as root,
          contextlib.ExitStack() as stack):
        path = write_list_dataset(root, args.files, args.size, args.rows)
        ds = files.from_list_split(listfile.read_list_file(path, root),
                                   resize=args.resize, crop=args.crop)
        methods = _methods(ds, args.threads, args.processes)
        cases, starts = _cases(ds, methods, args.variants, stack)
        decoding = _time(cases, args, lambda source, block, plan:
                         _decode_epoch(source, args.batch, block, plan))
        loop = _loop_table(args, ds, cases) if args.loop else []
    width, height = args.size
    title = (f'{args.rows} rows over {args.files} JPEGs of {width}x{height}, '
             f'resize {args.resize} + crop {args.crop}, batch {args.batch}, '
             f'{pipeline.available_cpus()} CPUs, median of {args.repeats} '
             'interleaved blocks')
    lines = [title, '', *_table(args, methods, args.variants, decoding,
                                starts),
             *_ratios(methods, args.variants, decoding), *loop]
    return '\n'.join(lines)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(',') if t)


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.partition('x')
    if not (width.isdigit() and height.isdigit()):
        raise argparse.ArgumentTypeError(
            f'--size takes WIDTHxHEIGHT, e.g. 500x375, got {text!r}')
    return int(width), int(height)


def _variants(text: str) -> tuple[str, ...]:
    names = tuple(t for t in text.split(',') if t)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f'--variants takes names from {sorted(VARIANTS)}, got {text!r}')
    return names


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--files', type=int, default=256)
    p.add_argument('--size', type=_size, default=(500, 375),
                   help='WIDTHxHEIGHT of the JPEGs')
    p.add_argument('--rows', type=int, default=1024)
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--resize', type=int, default=256)
    p.add_argument('--crop', type=int, default=224)
    p.add_argument('--threads', type=_ints, default=(1, 2, 4))
    p.add_argument('--processes', type=_ints, default=(1, 2))
    p.add_argument('--variants', type=_variants, default=('before', 'after'))
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--step_ms', type=float, default=None,
                   help='step to feed (default: batch / 3,000 images/s)')
    p.add_argument('--loop', action='store_true',
                   help='also feed a jitted dummy step (see above)')
    p.add_argument('--matrix', type=int, default=256)
    p.add_argument('--smoke', action='store_true',
                   help='CI: 16 tiny images, 4 batches of 4, 1 block')
    args = p.parse_args(argv)
    if args.smoke:
        args.files, args.size, args.rows, args.batch = 16, (40, 30), 16, 4
        args.resize, args.crop, args.threads = 32, 28, (2,)
        args.processes, args.repeats, args.matrix = (1,), 1, 32
    args.step_ms = args.step_ms or 1e3 * args.batch / 3000
    table = run(args)
    print(table)
    return table


if __name__ == '__main__':
    # Before the backend starts: one CPU thread for the dummy step, which
    # stands for an accelerator, so the other cores are left to decoding.
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               ' --xla_cpu_multi_thread_eigen=false').strip()
    main(sys.argv[1:])
