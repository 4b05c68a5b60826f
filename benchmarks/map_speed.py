"""Speed of nhl_jax's retrieval metrics against the common NumPy loop.

Times, in one run on random ±1 codes and single-label data (median of
``--repeats`` runs, the methods interleaved so that load from other
processes spreads over all of them):

1. mAP@all and mAP@1000: ``nhl_jax.evaluate.mean_average_precision`` on
   every CPU and on one thread, against a faithful copy of
   DeepHash-pytorch's per-query ``CalcTopMap`` loop (default, unstable
   ``np.argsort``; topk = N for "all"; BLAS on one thread). The speed-up
   is loop / nhl_jax in wall-clock time.
   The loop with ``kind='stable'`` orders ties like nhl_jax, so its
   per-query APs must agree (max |difference| printed; it runs once).
   The CPU-time speed-up compares nhl_jax on one thread with the loop.
2. ``nhl_jax.metrics.retrieval_metrics``: several mAP@k in one call
   against one ``mean_average_precision`` call per k, the full suite
   (mAP@k, precision/recall@k, radius 2, P-R curve), and
   ``precision_recall_curve`` alone.

Usage:
  python benchmarks/map_speed.py [--queries 1000] [--database 54000]
      [--bits 64] [--classes 10] [--seed 0] [--repeats 3]
"""

import argparse
import os
import statistics
import time

import numpy as np
import threadpoolctl

from nhl_jax import evaluate, metrics

SEVERAL_K = (None, 100, 1000, 5000)


def calc_top_map(q_codes, db_codes, q_labels, db_labels, topk, kind=None,
                 per_query=None):
    """DeepHash-pytorch's ``CalcTopMap`` loop, written out step for step.

    The original is called with topk=-1 for mAP@all, and ``gnd[0:-1]``
    then silently drops the last database item; callers here pass topk=N.
    ``kind=None`` keeps the original's unstable default sort.

    Args:
      q_codes: [Q, K] ±1 codes.
      db_codes: [N, K] ±1 codes.
      q_labels: [Q, C] multi-hot labels.
      db_labels: [N, C] multi-hot labels.
      topk: number of top-ranked items scored.
      kind: ``np.argsort``'s ``kind``.
      per_query: a list to append each query's AP to (0 without hits), or
        None (the original).

    Returns:
      mAP as a float (queries without hits count as 0).
    """
    num_query = q_labels.shape[0]
    topkmap = 0
    for i in range(num_query):
        gnd = (np.dot(q_labels[i, :], db_labels.transpose()) > 0)
        gnd = gnd.astype(np.float32)
        hamm = 0.5 * (db_codes.shape[1] - np.dot(q_codes[i, :],
                                                  db_codes.transpose()))
        ind = np.argsort(hamm, kind=kind)
        gnd = gnd[ind]

        tgnd = gnd[0:topk]
        tsum = np.sum(tgnd).astype(int)
        if tsum == 0:
            if per_query is not None:
                per_query.append(0.0)
            continue
        count = np.linspace(1, tsum, tsum)

        tindex = np.asarray(np.where(tgnd == 1)) + 1.0
        topkmap_ = np.mean(count / (tindex))
        if per_query is not None:
            per_query.append(topkmap_)
        topkmap = topkmap + topkmap_
    return topkmap / num_query


def median_seconds(fns, repeats):
    """Times each of ``fns`` ``repeats`` times, interleaved.

    Interleaving spreads load from other processes over all the methods
    instead of penalising whichever ran during it. CPU time (of every
    thread of this process) is recorded too: on a loaded machine it
    measures the work better than the wall clock does.

    Returns:
      One (median wall seconds, median CPU seconds, last result) triple
      per function.
    """
    walls = [[] for _ in fns]
    cpus = [[] for _ in fns]
    results = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            wall, cpu = time.perf_counter(), time.process_time()
            results[i] = fn()
            walls[i].append(time.perf_counter() - wall)
            cpus[i].append(time.process_time() - cpu)
    return [(statistics.median(w), statistics.median(c), r)
            for w, c, r in zip(walls, cpus, results)]


def make_data(args):
    """Random ±1 codes and one-hot labels, [Q | N, K] and [Q | N, C]."""
    rng = np.random.default_rng(args.seed)

    def codes(count):
        return rng.choice(np.array([-1.0, 1.0], np.float32),
                          size=(count, args.bits))

    def labels(count):
        return np.eye(args.classes, dtype=np.float32)[
            rng.integers(0, args.classes, count)]

    return (codes(args.queries), labels(args.queries),
            codes(args.database), labels(args.database))


def map_rows(data, args):
    """Section 1: nhl_jax mAP against the loop, at all and 1000."""
    q_codes, q_labels, db_codes, db_labels = data
    num_items = len(db_codes)
    rows = []
    for label, top_k in [('mAP@all', None), ('mAP@1000', 1000)]:
        ref_k = num_items if top_k is None else top_k

        def ours(num_threads, top_k=top_k):
            return evaluate.mean_average_precision(
                *data, top_k=top_k, num_threads=num_threads)

        def loop(ref_k=ref_k):
            # One BLAS thread: its [N, K] x [K] products gain nothing from
            # more, and idle BLAS threads spinning on a loaded machine made
            # it 5-8x slower.
            with threadpoolctl.threadpool_limits(1, user_api='blas'):
                return calc_top_map(q_codes, db_codes, q_labels, db_labels,
                                    ref_k)

        (ours_s, _, ours_map), (one_s, one_cpu, one_map), (
            loop_s, loop_cpu, loop_map) = median_seconds(
                [lambda: ours(args.num_threads), lambda: ours(1), loop],
                args.repeats)
        assert one_map == ours_map, (one_map, ours_map)
        stable_aps = []
        start = time.perf_counter()
        with threadpoolctl.threadpool_limits(1, user_api='blas'):
            calc_top_map(q_codes, db_codes, q_labels, db_labels, ref_k,
                         kind='stable', per_query=stable_aps)
        stable_s = time.perf_counter() - start
        diff = np.max(np.abs(
            evaluate.average_precisions(*data, top_k=top_k) - stable_aps))
        # Same ties, same AP terms; only the summation order may differ.
        if diff > 1e-12:
            raise SystemExit(f'{label}: nhl_jax differs from the stable '
                             f'loop by {diff:.1e}')
        rows.append((label, ours_s, one_s, loop_s, loop_s / ours_s,
                     loop_cpu / one_cpu, stable_s, ours_map, diff, loop_map))
    return rows


def suite_rows(data, args):
    """Section 2: several k at once, the full suite, the P-R curve."""
    def separate():
        return {k: evaluate.mean_average_precision(
            *data, top_k=k, num_threads=args.num_threads)
            for k in SEVERAL_K}

    def together():
        return metrics.retrieval_metrics(
            *data, map_at=SEVERAL_K, num_threads=args.num_threads)

    def suite():
        return metrics.retrieval_metrics(
            *data, map_at=(None, 1000), precision_at=(100, 1000),
            recall_at=(1000,), radius=(2,), pr_curve=True,
            num_threads=args.num_threads)

    def curve():
        return metrics.precision_recall_curve(
            *data, num_threads=args.num_threads)

    timed = median_seconds([separate, together, suite, curve], args.repeats)
    (sep_s, _, sep), (tog_s, _, tog), (suite_s, _, _), (curve_s, _, _) = (
        timed)
    for k in SEVERAL_K:
        assert tog[f'map@{k or "all"}'] == sep[k], k
    names = ', '.join(f'{k or "all"}' for k in SEVERAL_K)
    return [(f'mAP@{{{names}}}, one call per k', sep_s),
            (f'mAP@{{{names}}}, one retrieval_metrics call', tog_s),
            (('suite: mAP@{all,1000}, P@{100,1000}, R@1000, radius 2, '
              'P-R curve'), suite_s),
            ('precision_recall_curve (radii 0..K)', curve_s)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--queries', type=int, default=1000)
    parser.add_argument('--database', type=int, default=54000)
    parser.add_argument('--bits', type=int, default=64)
    parser.add_argument('--classes', type=int, default=10)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--num-threads', type=int, default=None,
                        help='nhl_jax threads (default: every CPU)')
    args = parser.parse_args()

    data = make_data(args)
    print(f'{args.queries} queries x {args.database} database, {args.bits} '
          f'bits, {args.classes} classes, seed {args.seed}; median of '
          f'{args.repeats} runs; {os.cpu_count()} CPUs; NumPy '
          f'{np.__version__}\n')
    print('| metric | nhl_jax (s) | nhl_jax, 1 thread (s) '
          '| CalcTopMap loop (s) | speed-up | CPU-time speed-up, 1 thread '
          '| loop, stable sort (s, once) | mAP, nhl_jax '
          '| max |AP diff| vs stable loop | mAP, loop (unstable ties) |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for (label, ours_s, one_s, loop_s, ratio, cpu_ratio, stable_s, ours_map,
         diff, loop_map) in map_rows(data, args):
        print(f'| {label} | {ours_s:.3f} | {one_s:.3f} | {loop_s:.3f} | '
              f'{ratio:.1f}x | {cpu_ratio:.1f}x | {stable_s:.3f} | '
              f'{ours_map:.6f} | {diff:.0e} | {loop_map:.6f} |')
    print('\n| nhl_jax.metrics | seconds |\n|---|---|')
    for label, seconds in suite_rows(data, args):
        print(f'| {label} | {seconds:.3f} |')


if __name__ == '__main__':
    main()
