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

# The checkout's root (where experiments/ and benchmarks/ are).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
