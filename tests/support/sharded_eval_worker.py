"""Subprocess helper of tests/train/test_sharded_evaluation.py (not a test).

    python tests/support/sharded_eval_worker.py devices <num_devices> <out.npz>
    python tests/support/sharded_eval_worker.py process <rank> <port> <out.npz>

``devices``: with N fake CPU devices, encodes the digits splits on one
device and over a mesh of all N, and writes both codes and mAPs.
``process``: one of two gloo processes (one device each) encoding over
their joint mesh; process 0 writes the codes and mAPs.
"""

import os
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
# 50 (2 devices) and 52 (50 rounded up to 4) leave a partial last batch
# of the 1,497 database rows of digits; 52 also of the 300 query rows.
BATCH = 50
EVALUATORS = ('symmetric', 'symmetric_expected')


def _setup():
    from nhl_jax import cli, data, train
    from nhl_jax.cli.configs import default
    config = default.get_config()
    config.update(dict(method='dsh', dataset='digits', bits=(8, 16, 32)))
    splits = data.load_splits('digits', seed=0)
    setup, state = cli.create_train_state(cli.resolve(config),
                                          train.DataInfo.of(splits))
    return splits, setup, state


def encode_and_score(mesh=None):
    """{name: array} of the codes, outputs and mAPs of one encoding."""
    from nhl_jax import train
    from nhl_jax.train import evaluation
    splits, setup, state = _setup()
    encode = train.compile_encode(setup)
    args = (encode, state.params, state.rest)
    result = {
        'query': evaluation.encode_codes(*args, splits.query, BATCH,
                                         mesh=mesh),
        'database': evaluation.encode_codes(*args, splits.database, BATCH,
                                            mesh=mesh),
        'outputs': evaluation.encode_outputs(*args, splits.query, BATCH,
                                             mesh=mesh)}
    maps = evaluation.evaluate_lengths(*args, splits, setup.bits,
                                       evaluators=EVALUATORS,
                                       batch_size=BATCH, mesh=mesh)
    for name in EVALUATORS:
        result[name] = np.array([maps[name][str(b)] for b in setup.bits])
    return result


def devices(num_devices, out):
    jax.config.update('jax_num_cpu_devices', num_devices)
    from nhl_jax import parallel
    mesh = parallel.make_mesh()
    assert mesh.devices.size == num_devices
    one = encode_and_score()
    many = encode_and_score(mesh)
    np.savez(out, **{f'one_{k}': v for k, v in one.items()},
             **{f'many_{k}': v for k, v in many.items()})


def process(process_id, port, out):
    jax.config.update('jax_num_cpu_devices', 1)
    from nhl_jax import parallel
    parallel.initialize(f'localhost:{port}', 2, process_id)
    result = encode_and_score(parallel.make_mesh())
    if parallel.is_main_process():
        np.savez(out, **result)
    jax.distributed.shutdown()


if __name__ == '__main__':
    if sys.argv[1] == 'devices':
        devices(int(sys.argv[2]), sys.argv[3])
    else:
        process(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
