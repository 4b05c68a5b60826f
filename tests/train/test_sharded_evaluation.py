"""Encoding over a mesh gives the codes and mAP of one device."""

import os
import subprocess
import sys

import numpy as np

from tests.support import ROOT, multiprocess, sharded_eval_worker

WORKER = os.path.join(ROOT, 'tests', 'support', 'sharded_eval_worker.py')
KEYS = ('query', 'database', 'outputs', *sharded_eval_worker.EVALUATORS)


def test_four_devices_give_the_codes_and_map_of_one(tmp_path):
    out = tmp_path / 'codes.npz'
    done = subprocess.run([sys.executable, WORKER, 'devices', '4', str(out)],
                          check=False, timeout=300, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as f:
        for key in KEYS:
            np.testing.assert_array_equal(f[f'many_{key}'], f[f'one_{key}'],
                                          err_msg=key)
        assert set(np.unique(f['one_query'])) == {-1, 1}
        # Expected-ties mAP is its own number (digits' codes have ties).
        assert not np.array_equal(f['one_symmetric'],
                                  f['one_symmetric_expected'])
        # 2 and 12 batches compile no gather of their own (issue 32).
        assert f['gather_compiles'].tolist() == [0, 0]


def test_two_processes_give_the_codes_and_map_of_one(tmp_path):
    out = tmp_path / 'codes.npz'
    multiprocess.run_two_workers(WORKER, out)
    single = sharded_eval_worker.encode_and_score()
    with np.load(out) as f:
        for key in KEYS:
            np.testing.assert_array_equal(f[key], single[key], err_msg=key)
