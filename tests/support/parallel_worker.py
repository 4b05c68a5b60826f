"""Subprocess helper of tests/test_parallel.py (not collected by pytest).

    python tests/support/parallel_worker.py sharded <devices> <m1,m2,...> <out>
    python tests/support/parallel_worker.py process <process_id> <port> <out>

``sharded``: with N fake CPU devices, runs the same steps with and without
the mesh and writes the largest differences, the all-reduces of the
ResNet-18 step without synchronised batch statistics
(``resnet18_batch_stats``) and the collectives of the NHL step with
weighting 'paper' (``nhl_paper_collectives``). ``process``: one of two gloo
processes of a multi-host run; process 0 writes the final parameters.
"""

import json
import os
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
STEPS, BATCH = 3, 32


def _conflict():
    """A loss whose longer lengths oppose the 8-bit one on the shared prefix
    (registered only inside this subprocess), so the weighting caps them."""
    import jax.numpy as jnp

    from nhl_jax import losses

    def init(key, *, num_train, num_classes, bits):
        del num_train, num_classes
        sign = 1.0 if bits == 8 else -1.0
        return sign * (2.0 + jax.random.uniform(key, (bits,)))

    def apply(state, codes, labels, index):
        del labels, index
        return jnp.sum(jnp.mean((codes - state[None, :]) ** 2, 0)), state

    return losses.HashLoss(init, apply)


def _setup(method='dsh'):
    from nhl_jax import losses
    if method == 'conflict':  # the registry of this process only
        losses.LOSSES.setdefault('conflict', _conflict)
    if method == 'classifier':  # a loss with its own parameters
        from tests.support import toy_losses
        losses.LOSSES.setdefault('classifier', toy_losses.classifier)
    from nhl_jax import cli, data, train
    from nhl_jax.cli.configs import default
    config = default.get_config()
    config.update(dict(method=method, dataset='digits', bits=(8, 16, 32),
                       weighting='paper', distill_weight=0.1,
                       batch_size=BATCH))
    splits = data.load_splits('digits', seed=0)
    setup, state = cli.create_train_state(cli.resolve(config),
                                          train.DataInfo.of(splits))
    return splits, setup, state


def _compiled(setup, mesh=None):
    from nhl_jax import train
    step = train.compile_step(setup.steps['train'], mesh)
    step_fn = lambda state, batch: step(state, batch, None)
    step_fn.compiled = step
    return step_fn


def _batches(splits, rows=slice(None)):
    from nhl_jax import data
    batches = data.train_batches(splits.train, BATCH, seed=0, epoch=1,
                                 rows=rows)
    return [next(batches) for _ in range(STEPS)]


def _max_diff(a, b, relative=False):
    def diff(x, y):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = np.maximum(np.abs(x), 1.0) if relative else 1.0
        return float(np.max(np.abs(x - y) / scale))

    return max(jax.tree.leaves(jax.tree.map(diff, a, b)), default=0.0)


def sharded(num_devices, methods, out):
    """Every method of the comma-separated ``methods`` in one process."""
    from tests.support import use_cpu_devices
    use_cpu_devices(num_devices)
    result = {m: _sharded(m) for m in methods.split(',')}
    result['resnet18_batch_stats'] = _resnet18_batch_stats()
    result['nhl_paper_collectives'] = _nhl_paper_collectives()
    with open(out, 'w') as f:
        json.dump(result, f)


def _sharded(method):
    from nhl_jax import parallel
    splits, setup, state = _setup(method)
    batches = _batches(splits)
    single = _compiled(setup)
    for batch in batches:
        state, metrics = single(state, batch)
    mesh = parallel.make_mesh()
    step = _compiled(setup, mesh)
    state4 = parallel.replicate(_setup(method)[2], mesh)
    for batch in batches:
        state4, metrics4 = step(state4, parallel.global_batch(batch, mesh,
                                                              BATCH))
    host4 = parallel.to_host(state4)
    return {
        'devices': len(mesh.devices.flat),
        'params': _max_diff(state.params, host4.params),
        'params_by_leaf': {
            jax.tree_util.keystr(path): _max_diff(x, y) for (path, x), y in
            zip(jax.tree_util.tree_leaves_with_path(state.params),
                jax.tree.leaves(host4.params))},
        'loss_states': _max_diff(state.extra.loss_states,
                                 host4.extra.loss_states),
        'weights': _max_diff(state.extra.weighting.weights,
                             host4.extra.weighting.weights),
        # Losses reach ~100 (DSH): compare them relatively.
        'metrics': _max_diff(metrics, parallel.to_host(metrics4), True),
        'weights_capped': bool(np.any(
            np.asarray(state.extra.weighting.capped))),
        'compiles': step.compiled._cache_size(),
        'replicated': all(x.sharding.is_fully_replicated
                          for x in jax.tree.leaves(state4)),
    }


def _abstract_step(config, **compile_kwargs):
    """``config``'s train step over the mesh, lowered from an abstract state
    (no init) and a digits batch; with it, its compile at XLA level 0."""
    from nhl_jax import data
    from nhl_jax.cli import lowering
    lowered = lowering.lower_train_step(
        config, data.load_splits('digits', seed=0), **compile_kwargs)
    return lowered, lambda: lowered.compile(
        lowering.FAST_COMPILE).as_text()


def _count(text, op):
    return sum(f' {op}(' in line or f' {op}-start(' in line
               for line in text.splitlines())


def _resnet18_batch_stats():
    """The NHL step of a ResNet-18 over the mesh:
    {'local_all_reduces': in the program compiled with
    sync_batch_stats=False, 'sync_unchanged': True's lowered program is
    the default one}."""
    from tests.support import systems
    config = systems.tiny_config('nhl', backbone='resnet18', batch_size=32)
    config.backbone_kwargs = {'input_size': None}  # digits' 8x8 as they are
    local = _abstract_step(config, sync_batch_stats=False)[1]()
    return {'local_all_reduces': _count(local, 'all-reduce'),
            'sync_unchanged': (
                _abstract_step(config, sync_batch_stats=True)[0].as_text()
                == _abstract_step(config)[0].as_text())}


def _nhl_paper_collectives():
    """The NHL step with weighting 'paper' and distillation over the mesh
    at B = 32 <= D = 256 (the MLP's width), where one device takes the
    [B, B] Gram paths: its all-gathers and all-reduces."""
    from tests.support import systems
    config = systems.tiny_config('nhl', bits=(8, 16, 32), weighting='paper',
                                 distill_weight=0.1, batch_size=BATCH)
    config.backbone_kwargs = {}  # the MLP's default width, 256
    text = _abstract_step(config)[1]()
    return {op: _count(text, op) for op in ('all-gather', 'all-reduce')}


def process(process_id, port, out):
    jax.config.update('jax_num_cpu_devices', 1)
    from nhl_jax import parallel
    parallel.initialize(f'localhost:{port}', 2, process_id)
    splits, setup, state = _setup()
    mesh = parallel.make_mesh()
    step = _compiled(setup, mesh)
    state = parallel.replicate(state, mesh)
    for local in _batches(splits, parallel.process_slice(BATCH)):
        state, _ = step(state, parallel.global_batch(local, mesh, BATCH))
    params = parallel.to_host(state.params)
    if parallel.is_main_process():
        np.savez(out, *jax.tree.leaves(params))
    jax.distributed.shutdown()


def single_process_params():
    """The reference: one process, one device, whole batches."""
    splits, setup, state = _setup()
    step = _compiled(setup)
    for batch in _batches(splits):
        state, _ = step(state, batch)
    return [np.asarray(x) for x in jax.tree.leaves(state.params)]


if __name__ == '__main__':
    if sys.argv[1] == 'sharded':
        sharded(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        process(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
