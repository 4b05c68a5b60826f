"""nhl_jax.compiler: which XLA options each platform's jits get."""

import jax
import jax.numpy as jnp
import numpy as np

from nhl_jax import compiler, parallel
from nhl_jax.models import layers


def _has_ynn_convolution(hlo: str) -> bool:
    """Whether a YNNPACK fusion of the optimized HLO holds a convolution."""
    fused = {}  # computation name -> its text
    name = None
    for line in hlo.splitlines():
        if line.startswith('%') and '{' in line:
            name = line.split()[0][1:]
            fused[name] = ''
        elif name is not None:
            fused[name] += line + '\n'
    for line in hlo.splitlines():
        if '__ynn_fusion' in line and 'calls=%' in line:
            called = line.split('calls=%')[1].split(',')[0].split()[0]
            if 'convolution(' in fused.get(called, ''):
                return True
    return False


def test_cpu_options_keep_convolutions_out_of_ynnpack():
    assert jax.default_backend() == 'cpu'
    assert compiler.options() == compiler.CPU_OPTIONS
    # The small CNN's second convolution (compiled, not run): XLA's cost
    # model gives small convolutions to YNNPACK only from some size on.
    x = jnp.ones((64, 14, 14, 32))
    k = jnp.ones((3, 3, 32, 64))
    grad = jax.grad(lambda x, k: jnp.sum(layers.conv3x3(x, k) ** 2),
                    argnums=(0, 1))
    ours = compiler.jit(grad).lower(x, k).compile().as_text()
    assert not _has_ynn_convolution(ours)
    # The check can fail: XLA's default puts the convolutions in YNNPACK.
    default = jax.jit(grad).lower(x, k).compile().as_text()
    assert _has_ynn_convolution(default)


def test_other_platforms_and_xla_flags_get_no_options(monkeypatch):
    assert compiler.options('gpu') == {}
    assert compiler.options('tpu') == {}
    monkeypatch.setenv('XLA_FLAGS', f'--{compiler.YNN_FUSION}=')
    assert compiler.options('cpu') == {}


def test_an_option_this_xla_rejects_is_dropped():
    assert not compiler._accepted((('xla_cpu_no_such_option', True),))
    assert compiler._accepted(tuple(compiler.CPU_OPTIONS.items()))


def test_jit_with_a_mesh_takes_the_mesh_platform_and_shardings():
    mesh = parallel.make_mesh()
    x = jnp.ones((2 * mesh.size, 14, 14, 8))
    k = jnp.ones((3, 3, 8, 16))
    fn = compiler.jit(layers.conv3x3, mesh=mesh,
                      in_shardings=(parallel.batch_sharding(mesh),
                                    parallel.replicated(mesh)))
    assert not _has_ynn_convolution(fn.lower(x, k).compile().as_text())
    np.testing.assert_allclose(fn(x, k), layers.conv3x3(x, k), rtol=1e-6)
