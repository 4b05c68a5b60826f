"""Subprocess helper of tests/train/test_sharded_evaluation.py (not a test).

    python tests/support/sharded_eval_worker.py devices <num_devices> <out.npz>
    python tests/support/sharded_eval_worker.py process <rank> <port> <out.npz>

``devices``: with N fake CPU devices, encodes the digits splits on one
device and over a mesh of all N, and writes both codes and mAPs, and the
programs compiled to encode two more database prefixes over the mesh.
``process``: one of two gloo processes (one device each) encoding over
their joint mesh; process 0 writes the codes and mAPs.
"""

import functools
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
# jax.monitoring's event of one XLA compilation.
BACKEND_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'


@functools.cache
def _setup():
    """(splits, setup, state, jitted encode), built once per process."""
    from nhl_jax import cli, data, train
    from nhl_jax.cli.configs import default
    config = default.get_config()
    config.update(dict(method='dsh', dataset='digits', bits=(8, 16, 32)))
    splits = data.load_splits('digits', seed=0)
    setup, state = cli.create_train_state(cli.resolve(config),
                                          train.DataInfo.of(splits))
    return splits, setup, state, train.compile_encode(setup)


def encode_and_score(mesh=None):
    """{name: array} of the codes, outputs and mAPs of one encoding."""
    from nhl_jax.train import evaluation
    splits, setup, state, encode = _setup()
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


def gather_compiles(mesh, batches=(2, 12)) -> list[int]:
    """Programs compiled to encode database prefixes of 2 and 12 batches
    over ``mesh``, once ``encode_and_score(mesh)`` has run: the gather
    compiles nothing that depends on the number of batches."""
    from nhl_jax.train import evaluation
    splits, _, state, encode = _setup()
    batch = -(-BATCH // mesh.devices.size) * mesh.devices.size
    compiled = []

    def listener(event, duration, **kwargs):
        del duration, kwargs
        compiled.append(event == BACKEND_COMPILE_EVENT)

    jax.monitoring.register_event_duration_secs_listener(listener)
    counts = []
    try:
        for count in batches:
            rows = count * batch - 1  # a partial last batch
            prefix = type(splits.database)(
                *(field[:rows] for field in splits.database))
            before = sum(compiled)
            evaluation.encode_codes(encode, state.params, state.rest, prefix,
                                    BATCH, mesh=mesh)
            counts.append(sum(compiled) - before)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return counts


def devices(num_devices, out):
    from tests.support import use_cpu_devices
    use_cpu_devices(num_devices)
    from nhl_jax import parallel
    mesh = parallel.make_mesh()
    assert mesh.devices.size == num_devices
    one = encode_and_score()
    many = encode_and_score(mesh)
    np.savez(out, **{f'one_{k}': v for k, v in one.items()},
             **{f'many_{k}': v for k, v in many.items()},
             gather_compiles=gather_compiles(mesh))


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
