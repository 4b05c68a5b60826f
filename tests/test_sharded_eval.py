"""Encoding over a mesh gives the codes and mAP of one device."""

import os
import socket
import subprocess
import sys

import numpy as np

from tests import sharded_eval_worker

WORKER = os.path.join(os.path.dirname(__file__), 'sharded_eval_worker.py')
KEYS = ('query', 'database', 'outputs', *sharded_eval_worker.EVALUATORS)


def _free_port():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


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


def test_two_processes_give_the_codes_and_map_of_one(tmp_path):
    out = tmp_path / 'codes.npz'
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, WORKER, 'process', str(i), str(port), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-3000:]
    single = sharded_eval_worker.encode_and_score()
    with np.load(out) as f:
        for key in KEYS:
            np.testing.assert_array_equal(f[key], single[key], err_msg=key)
