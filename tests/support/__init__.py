"""What the tests share: paths, tiny configs, NumPy references, workers.

- ``cli``: the train command's flags parsed in-process;
- ``systems``: tiny configs of every system;
- ``references``, ``references_deephash``, ``references_params``:
  loop-based float64 NumPy references of the losses, weighting and
  distillation, written from the papers;
- ``loss_batches``, ``toy_losses``: the batches and the toy loss of the
  loss tests;
- ``lowering``: programs lowered for a TPU, read for 64-bit arrays;
- ``multiprocess`` and the ``*_worker.py`` scripts: subprocess runs;
- ``cifar``, ``cifar_archive``, ``folders``: CIFAR under tfds's mock data,
  CIFAR python-version files in the real format, class-folder trees.
"""

import os

import numpy as np

# The checkout's root (where experiments/ and benchmarks/ are).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def use_cpu_devices(num_devices: int) -> None:
    """``num_devices`` fake CPU devices, with the threads they need.

    Call before JAX's backend starts (in a subprocess worker). XLA's CPU
    client runs every device's part of a program on one pool of
    max(cores, devices) threads, and a dispatch held at a device's limit
    of 32 programs in flight blocks one of them: with 4 threads for 4
    devices, a collective's fourth part then never starts and XLA aborts
    the process after 40 s (issue 32; benchmarks/fake_device_rendezvous.py
    reproduces it). PJRT_NPROC sizes the pool; 2 N threads leave N for a
    collective whatever the next program's N dispatches hold.
    """
    import jax
    os.environ.setdefault('PJRT_NPROC',
                          str(max(os.cpu_count() or 1, 2 * num_devices)))
    jax.config.update('jax_num_cpu_devices', num_devices)


def assert_same_batches(expected, got) -> None:
    """Two sequences of batch dicts hold equal arrays under equal keys."""
    assert len(expected) == len(got)
    for x, y in zip(expected, got):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
