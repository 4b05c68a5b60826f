"""Subprocess helper of tests/retrieval/test_ranking_jax.py (not a test).

    python tests/support/ranking_worker.py <num_devices> <out.npz>

With N fake CPU devices, ranks the test data of ``test_ranking_jax`` with
the JAX backend on the first device and split over all N, and writes both
results, with the number of devices each chunk's output was spread over.
"""

import os
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
OPTIONS = dict(map_at=(None, 5), precision_at=(7,), radius=(2,))


def main(num_devices, out):
    from tests.support import use_cpu_devices
    use_cpu_devices(num_devices)
    from nhl_jax.retrieval import metrics, ranking_jax
    from tests.retrieval.test_ranking_jax import make_data
    results, spread = {}, []
    finish = ranking_jax._finish

    def counting_finish(device_stats, *args):
        spread.append(min(len(x.sharding.device_set)
                          for x in jax.tree.leaves(device_stats)))
        return finish(device_stats, *args)

    ranking_jax._finish = counting_finish
    devices = jax.local_devices()
    # A ranking of multi-hot labels, and the histograms of class ids.
    for multi_label, ties in ((True, 'stable'), (False, 'expected')):
        data = make_data(0, multi_label)
        for name, on in (('one', devices[:1]), ('all', devices)):
            got = metrics.retrieval_metrics(
                *data, **OPTIONS, ties=ties, backend='jax', chunk_size=8,
                devices=on)
            for metric, value in got.items():
                results[f'{name}/{ties}/{metric}'] = value
    np.savez(out, spread=spread, **results)


if __name__ == '__main__':
    main(int(sys.argv[1]), sys.argv[2])
