r"""Which 3x3 convolution and pooling path is fastest here, with gradients.

    python benchmarks/conv_paths.py --rounds=9

Compares, on the current backend, for the small CNN's two convolutions
(batch 64, 28x28x1 -> 32 and 14x14x32 -> 64) and for the whole small CNN
(conv-relu-pool twice, fc256), each under XLA's default compiler options
and under the library's (``nhl_jax.compiler.options``: on the CPU,
YNNPACK for dots and reductions but not convolutions):
- ``im2col``: nine shifted slices, one matmul, differentiated by JAX (the
  library's form before ``lax``);
- ``im2col-vjp``: the same forward with a custom VJP whose kernel gradient
  is one matmul over the patches and whose input gradient is the
  convolution of the (dilated) output gradient with the flipped kernel,
  again as im2col + matmul;
- ``lax``: ``lax.conv_general_dilated`` differentiated by JAX
  (``nhl_jax.models.layers.conv3x3``, the library's form);
- ``lax-vjp``: the same forward, with the kernel gradient as one matmul
  over im2col patches and the input gradient as XLA's forward
  convolution of the dilated output gradient with the flipped kernel.
For the whole CNN, the pooling: ``max_pool_2x2`` (the library's: reshape +
max, gradient to the first maximum of a window as torch's), ``jnp-max``
(the same max differentiated by JAX, which splits ties) and
``reduce_window``.
The machine drifts, so the variants alternate in short blocks and the
table reports medians and the median per-round ratio to the library's
form (``lax`` with ``max_pool_2x2``, library options).

    python benchmarks/conv_paths.py --backbones --rounds=5

times instead every convolutional backbone of the library as it is
(``nhl_jax.models.get_backbone``: cnn and bnn_cnn on 28x28x1, resnet18 and
reactnet18 on 32x32x3 fed as they are, batch 16, train mode) under both
option sets; ratio to the library options.
"""

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nhl_jax import compiler
from nhl_jax.models import layers, small


def conv_im2col(x, k, stride=1):
    """The former form: im2col + matmul, differentiated by JAX."""
    return layers.im2col_3x3(x, stride) @ k.reshape(-1, k.shape[-1])


def dilate_to(dy, h, w, stride):
    """dy [B, H', W', O] with stride - 1 zeros between its entries, then
    zero-padded at the end to [B, H, W, O]: convolved ('SAME') with the
    flipped, channel-transposed kernel it gives the input gradient."""
    b, ho, wo, o = dy.shape
    if stride > 1:
        spread = jnp.zeros((b, ho, stride, wo, stride, o), dy.dtype)
        dy = spread.at[:, :, 0, :, 0].set(dy).reshape(
            b, ho * stride, wo * stride, o)
        dy = dy[:, :stride * (ho - 1) + 1, :stride * (wo - 1) + 1]
    return jnp.pad(dy, ((0, 0), (0, h - dy.shape[1]), (0, w - dy.shape[2]),
                        (0, 0)))


def _kernel_grad(x, dy, stride, shape):
    """dL/dW [3, 3, C, O] = im2col(x)^T dy, one matmul over the patches."""
    patches = layers.im2col_3x3(x, stride).reshape(-1, 9 * x.shape[-1])
    return (patches.T @ dy.reshape(-1, dy.shape[-1])).reshape(shape)


def _flipped(k):
    return k[::-1, ::-1].transpose(0, 1, 3, 2)  # [3, 3, O, C]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_im2col_vjp(x, k, stride=1):
    """im2col forward; both gradients as im2col matmuls."""
    return conv_im2col(x, k, stride)


def _im2col_vjp_bwd(stride, res, dy):
    x, k = res
    _, h, w, _ = x.shape
    flipped = _flipped(k).reshape(-1, x.shape[-1])
    dx = layers.im2col_3x3(dilate_to(dy, h, w, stride)) @ flipped
    return dx, _kernel_grad(x, dy, stride, k.shape)


conv_im2col_vjp.defvjp(lambda x, k, s: (conv_im2col(x, k, s), (x, k)),
                       _im2col_vjp_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_lax_vjp(x, k, stride=1):
    """XLA's convolution; kernel gradient as one im2col matmul, input
    gradient as XLA's forward convolution of the dilated dy."""
    return layers.conv3x3(x, k, stride)


def _lax_vjp_bwd(stride, res, dy):
    x, k = res
    _, h, w, _ = x.shape
    dx = layers.conv3x3(dilate_to(dy, h, w, stride), _flipped(k))
    return dx, _kernel_grad(x, dy, stride, k.shape)


conv_lax_vjp.defvjp(lambda x, k, s: (layers.conv3x3(x, k, s), (x, k)),
                    _lax_vjp_bwd)


def pool_reduce_window(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1),
                                 (1, 2, 2, 1), 'VALID')


def pool_jnp_max(x):
    """Reshape + max differentiated by JAX (splits the gradient of ties)."""
    return layers._windows(x).max(axis=(2, 4))


CONVS = {'im2col': conv_im2col, 'im2col-vjp': conv_im2col_vjp,
         'lax': layers.conv3x3, 'lax-vjp': conv_lax_vjp}
POOLS = {'max_pool_2x2': layers.max_pool_2x2, 'jnp-max': pool_jnp_max,
         'reduce_window': pool_reduce_window}
OPTIONS = {'XLA default': {}, 'library': compiler.options()}
BASELINE = ('lax', 'library')  # (variant, options), the library's form


def _jit_both(fn, value, argnums=(0, 1)):
    """{options: (jit(fn), jit(grad(value)))} for each OPTIONS entry."""
    return {name: (jax.jit(fn, compiler_options=opts or None),
                   jax.jit(jax.grad(value, argnums=argnums),
                           compiler_options=opts or None))
            for name, opts in OPTIONS.items()}


def layer_fns(shape, rng):
    """{(variant, options): (forward, forward + backward)}, inputs."""
    b, h, cin, cout = shape
    x = jnp.asarray(rng.standard_normal((b, h, h, cin)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, cin, cout)), jnp.float32)
    fns = {}
    for name, conv in CONVS.items():
        both = _jit_both(lambda x, k, conv=conv: conv(x, k),
                         lambda x, k, conv=conv: jnp.sum(conv(x, k) ** 2))
        fns.update({(name, opts): pair for opts, pair in both.items()})
    return fns, (x, k)


def cnn_fns(batch, rng):
    """The small CNN's forward and forward + backward per variant."""
    x = jnp.asarray(rng.standard_normal((batch, 28, 28, 1)), jnp.float32)
    graphdef, params = nnx.split(small.SmallCNN((28, 28, 1),
                                                rngs=nnx.Rngs(0)))

    def forward(p, conv, pool):
        model = nnx.merge(graphdef, p)
        h = x
        for layer in model.convs:
            h = pool(jax.nn.relu(conv(h, layer.kernel[...])
                                 + layer.bias[...]))
        return jax.nn.relu(model.fc(h.reshape(h.shape[0], -1)))

    variants = {name: (conv, layers.max_pool_2x2)
                for name, conv in CONVS.items()}
    variants.update({f'lax + {name}': (layers.conv3x3, pool)
                     for name, pool in POOLS.items() if name != 'max_pool_2x2'})
    fns = {}
    for name, (conv, pool) in variants.items():
        f = functools.partial(forward, conv=conv, pool=pool)
        both = _jit_both(f, lambda p, f=f: jnp.sum(f(p) ** 2), argnums=0)
        fns.update({(name, opts): pair for opts, pair in both.items()})
    return fns, (params,)


BACKBONES = {  # name: (input shape, keyword arguments)
    'cnn': ((28, 28, 1), {}), 'bnn_cnn': ((28, 28, 1), {}),
    'resnet18': ((32, 32, 3), {'input_size': None}),
    'reactnet18': ((32, 32, 3), {'input_size': None}),
}


def backbone_fns(name, batch, rng):
    """One backbone's forward and forward + backward per option set."""
    from nhl_jax import models
    shape, kwargs = BACKBONES[name]
    model = models.get_backbone(name, shape, rngs=nnx.Rngs(0), **kwargs)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jnp.asarray(rng.standard_normal((batch, *shape)), jnp.float32)

    def forward(p, r, x):  # train mode: the batch statistics are inputs
        # Fresh Variables of this trace, which BatchNorm may update.
        return nnx.merge(graphdef, p, jax.tree.map(lambda v: v, r))(x)

    both = _jit_both(forward, lambda p, r, x: jnp.sum(forward(p, r, x) ** 2),
                     argnums=0)
    return ({(name, opts): pair for opts, pair in both.items()},
            (params, rest, x))


def timed(fn, args, steps):
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(steps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def measure(fns, args, rounds, steps, baseline=BASELINE):
    """Median ms and median ratio to ``baseline`` of each variant's fns."""
    times = {n: ([], []) for n in fns}
    for _ in range(rounds):  # interleaved: every variant in every round
        for name, pair in fns.items():
            for i, fn in enumerate(pair):
                times[name][i].append(timed(fn, args, steps))
    base = times[baseline]
    return {name: [(1e3 * np.median(t[i]),
                    np.median(np.array(t[i]) / np.array(base[i])))
                   for i in (0, 1)]
            for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=9)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--smoke', action='store_true')
    parser.add_argument('--backbones', action='store_true',
                        help='every conv backbone under both option sets')
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.steps, args.batch = 1, 1, 2
    rng = np.random.default_rng(0)
    if args.backbones:
        return backbones(args, rng)
    cases = {f'conv 28x28x1->32, batch {args.batch}':
             layer_fns((args.batch, 28, 1, 32), rng),
             f'conv 14x14x32->64, batch {args.batch}':
             layer_fns((args.batch, 14, 32, 64), rng),
             f'small CNN, batch {args.batch}': cnn_fns(args.batch, rng)}
    print(f'\n{jax.default_backend()}, median of {args.rounds} interleaved '
          f'rounds of {args.steps} calls; ratio: median per-round ratio to '
          f'{BASELINE[0]} (max_pool_2x2) under the library options; library '
          f'options: {OPTIONS["library"]}\n')
    print('| case | variant | options | forward ms | ratio | forward + '
          'backward ms | ratio |')
    print('|---|---|---|---|---|---|---|')
    for case, (fns, inputs) in cases.items():
        for (name, opts), ((f_ms, f_r), (g_ms, g_r)) in measure(
                fns, inputs, args.rounds, args.steps).items():
            print(f'| {case} | {name} | {opts} | {f_ms:.2f} | {f_r:.2f}x | '
                  f'{g_ms:.2f} | {g_r:.2f}x |')


def backbones(args, rng):
    """Prints each backbone's times under XLA's and the library options."""
    batch = 16 if args.batch == 64 else args.batch
    print(f'\n{jax.default_backend()}, batch {batch}, median of '
          f'{args.rounds} interleaved rounds of {args.steps} calls; ratio: '
          f'median per-round ratio to the library options '
          f'{OPTIONS["library"]}\n')
    print('| backbone | options | forward ms | ratio | forward + backward ms '
          '| ratio |')
    print('|---|---|---|---|---|---|')
    # The smoke run checks the script: one float and one binary backbone.
    names = ('cnn', 'bnn_cnn') if args.smoke else BACKBONES
    for name in names:
        fns, inputs = backbone_fns(name, batch, rng)
        for (_, opts), ((f_ms, f_r), (g_ms, g_r)) in measure(
                fns, inputs, args.rounds, args.steps,
                baseline=(name, 'library')).items():
            print(f'| {name} | {opts} | {f_ms:.2f} | {f_r:.2f}x | '
                  f'{g_ms:.2f} | {g_r:.2f}x |')


if __name__ == '__main__':
    main()
