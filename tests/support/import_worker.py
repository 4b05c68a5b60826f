"""Imports each named nhl_jax module first in a fresh process (test_layout).

    python tests/support/import_worker.py nhl_jax.odh.step nhl_jax.types ...

The third-party libraries are imported once, then every module is imported
in a child forked from that state, with no module of nhl_jax loaded: an
import cycle shows up exactly as in a new interpreter, where the order of
first imports decides whether a partly initialised module is read. Prints
one line per failing module and exits 1 if any failed.
"""

import importlib
import os
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

# What nhl_jax imports from outside, loaded before the children fork.
_THIRD_PARTY = ('numpy', 'jax', 'jax.numpy', 'flax.nnx', 'optax', 'chex',
                'grain', 'orbax.checkpoint', 'ml_collections', 'absl.flags',
                'scipy.special')
_PARALLEL = 2


def _child(name: str) -> None:
    try:
        importlib.import_module(name)
    except BaseException:  # noqa: BLE001 (reported, then the child exits)
        lines = traceback.format_exc().strip().splitlines()
        print(f'{name}: {lines[-1]}', flush=True)
        os._exit(1)
    os._exit(0)


def main(names) -> int:
    for lib in _THIRD_PARTY:
        importlib.import_module(lib)
    assert not any(m.startswith('nhl_jax') for m in sys.modules)
    failed, running = 0, {}
    pending = list(names)
    while pending or running:
        while pending and len(running) < _PARALLEL:
            name = pending.pop()
            pid = os.fork()
            if pid == 0:
                _child(name)
            running[pid] = name
        pid, status = os.wait()
        running.pop(pid)
        failed += status != 0
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
