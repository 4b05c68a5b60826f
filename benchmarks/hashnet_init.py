r"""HashNet's mAP against the initialisation of its layers (issue 28).

    python benchmarks/hashnet_init.py --inits=nhl,head_kernel --seeds=0,1,2

Trains ``--method=hashnet --dataset=digits --single_length --bits=16
--epochs=20`` (the library recipe) per seed with the ``nnx.Linear`` layers
initialised as named, and prints best mAP@all per seed and their mean:

- ``nhl``: as shipped (hash layer N(0, 0.01) weights and zero bias; MLP
  layers lecun normal weights and zero biases);
- ``torch``: torch's ``nn.Linear`` default everywhere: weights and biases
  U(±1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5));
- ``torch_head`` / ``torch_mlp``: torch's default in the hash layer / in
  the MLP only;
- ``head_kernel`` / ``head_bias``: torch's default for the hash layer's
  weights / bias only.

The hash layer is told apart by its width (``--bits``); a measurement
tool only: it patches ``flax.nnx.Linear`` in this process.
"""

import argparse
import math
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nhl_jax import cli
from nhl_jax.cli.configs import default

_LINEAR_INIT = nnx.Linear.__init__

# init -> (which of the hash layer's (weights, bias), which of the MLP's
# (weights, bias) take torch's default).
INITS = {
    'nhl': ((False, False), (False, False)),
    'torch': ((True, True), (True, True)),
    'torch_head': ((True, True), (False, False)),
    'torch_mlp': ((False, False), (True, True)),
    'head_kernel': ((True, False), (False, False)),
    'head_bias': ((False, True), (False, False)),
}


def _uniform(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def patch(name: str, bits: int) -> None:
    """Makes ``nnx.Linear`` initialise as ``INITS[name]`` says."""
    head, mlp = INITS[name]

    def linear_init(self, in_features, out_features, **kwargs):
        kernel, bias = head if out_features == bits else mlp
        if kernel:
            kwargs['kernel_init'] = _uniform(in_features)
        if bias:
            kwargs['bias_init'] = _uniform(in_features)
        _LINEAR_INIT(self, in_features, out_features, **kwargs)

    nnx.Linear.__init__ = linear_init


def best_map(seed: int, bits: int, epochs: int) -> float:
    config = default.get_config()
    config.update(dict(method='hashnet', dataset='digits', single_length=True,
                       bits=(bits,), epochs=epochs, seed=seed,
                       patience=epochs))
    with tempfile.TemporaryDirectory() as workdir:
        return cli.train_and_evaluate(config, workdir)['map'][str(bits)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--inits', default=','.join(INITS))
    parser.add_argument('--seeds', default='0,1,2,3,4')
    parser.add_argument('--bits', type=int, default=16)
    parser.add_argument('--epochs', type=int, default=20)
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(',')]
    lines = ['| init | ' + ' | '.join(f'seed {s}' for s in seeds)
             + ' | mean ± std |', '|---' * (len(seeds) + 2) + '|']
    for name in args.inits.split(','):
        patch(name, args.bits)
        maps = [best_map(s, args.bits, args.epochs) for s in seeds]
        lines.append(f'| {name} | ' + ' | '.join(f'{m:.3f}' for m in maps)
                     + f' | {np.mean(maps):.3f} ± {np.std(maps):.3f} |')
        print(lines[-1], flush=True)
    nnx.Linear.__init__ = _LINEAR_INIT
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
