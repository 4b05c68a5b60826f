"""Speed of nhl_jax's mAP against the common DeepHash-pytorch NumPy loop.

Times, on random ±1 codes and single-label data, median of several runs:
- ``nhl_jax.evaluate.mean_average_precision`` at top_k=None and 1000, on
  every CPU (default) and on one thread;
- a faithful copy of DeepHash-pytorch's per-query ``CalcTopMap`` loop
  (default, unstable ``np.argsort``), with topk = N for "all";
- the same loop with ``kind='stable'``, whose ties are ordered like ours,
  so its mAP must agree with ours (to float rounding).

Usage:
  python benchmarks/map_speed.py [--queries 1000] [--database 54000]
      [--bits 64] [--classes 10] [--seed 0] [--repeats 3]
"""

import argparse
import os
import statistics
import time

import numpy as np

from nhl_jax import evaluate


def calc_top_map(q_codes, db_codes, q_labels, db_labels, topk, kind=None):
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
            continue
        count = np.linspace(1, tsum, tsum)

        tindex = np.asarray(np.where(tgnd == 1)) + 1.0
        topkmap_ = np.mean(count / (tindex))
        topkmap = topkmap + topkmap_
    return topkmap / num_query


def median_seconds(fns, repeats):
    """Times each of ``fns`` ``repeats`` times, interleaved.

    Interleaving spreads load from other processes over all the methods
    instead of penalising whichever ran during it.

    Returns:
      One (median seconds, last result) pair per function.
    """
    times = [[] for _ in fns]
    results = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            results[i] = fn()
            times[i].append(time.perf_counter() - start)
    return [(statistics.median(t), r) for t, r in zip(times, results)]


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

    q_codes, q_labels, db_codes, db_labels = make_data(args)
    num_items = len(db_codes)

    rows = []
    for label, top_k in [('mAP@all', None), ('mAP@1000', 1000)]:
        ref_k = num_items if top_k is None else top_k

        def ours(num_threads, top_k=top_k):
            return evaluate.mean_average_precision(
                q_codes, q_labels, db_codes, db_labels, top_k=top_k,
                num_threads=num_threads)

        def loop(kind, ref_k=ref_k):
            return calc_top_map(q_codes, db_codes, q_labels, db_labels,
                                ref_k, kind=kind)

        timed = median_seconds([lambda: ours(args.num_threads),
                                lambda: ours(1),
                                lambda: loop(None),
                                lambda: loop('stable')], args.repeats)
        (ours_s, ours_map), (one_s, one_map), (loop_s, loop_map), (
            stable_s, stable_map) = timed
        assert one_map == ours_map, (one_map, ours_map)
        # Same ties, same AP terms; only the summation order differs.
        if abs(ours_map - stable_map) > 1e-12:
            raise SystemExit(f'{label}: nhl_jax {ours_map!r} != stable '
                             f'reference {stable_map!r}')
        rows.append((label, ours_s, one_s, loop_s, stable_s, ours_map,
                     abs(ours_map - stable_map), loop_map))

    print(f'{args.queries} queries x {num_items} database, {args.bits} bits, '
          f'{args.classes} classes, seed {args.seed}; median of '
          f'{args.repeats} runs; {os.cpu_count()} CPUs; NumPy '
          f'{np.__version__}\n')
    print('| metric | nhl_jax (s) | nhl_jax, 1 thread (s) '
          '| CalcTopMap loop (s) | speed-up | loop, stable sort (s) '
          '| mAP, nhl_jax | vs stable loop | mAP, loop (unstable ties) |')
    print('|---|---|---|---|---|---|---|---|---|')
    for (label, ours_s, one_s, loop_s, stable_s, ours_map, diff,
         loop_map) in rows:
        print(f'| {label} | {ours_s:.3f} | {one_s:.3f} | {loop_s:.3f} | '
              f'{loop_s / ours_s:.1f}x | {stable_s:.3f} | {ours_map:.6f} | '
              f'{diff:.0e} | {loop_map:.6f} |')

if __name__ == '__main__':
    main()
