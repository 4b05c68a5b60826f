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


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(compiler.CACHE_ENV, raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    assert compiler.default_cache_dir() == str(tmp_path / 'nhl_jax' / 'xla')
    monkeypatch.setenv(compiler.CACHE_ENV, str(tmp_path / 'mine'))
    assert compiler.default_cache_dir() == str(tmp_path / 'mine')
    for off in ('', 'off', 'NONE', '0'):
        monkeypatch.setenv(compiler.CACHE_ENV, off)
        assert compiler.default_cache_dir() is None
    # The config's field wins over the environment.
    assert compiler.default_cache_dir('/x/y') == '/x/y'
    monkeypatch.setenv(compiler.CACHE_ENV, str(tmp_path / 'env'))
    assert compiler.default_cache_dir('off') is None


def test_the_cache_is_set_unless_the_user_set_one(tmp_path):
    names = ('jax_compilation_cache_dir', 'jax_compilation_cache_max_size',
             'jax_persistent_cache_min_compile_time_secs',
             'jax_persistent_cache_min_entry_size_bytes')
    saved = {name: getattr(jax.config, name) for name in names}
    try:
        assert saved['jax_compilation_cache_dir']  # the suite's (conftest)
        assert compiler.use_persistent_cache(str(tmp_path / 'a')) == saved[
            'jax_compilation_cache_dir']
        assert not (tmp_path / 'a').exists()
        jax.config.update('jax_compilation_cache_dir', None)
        assert compiler.use_persistent_cache(None) is None
        folder = str(tmp_path / 'b')
        assert compiler.use_persistent_cache(folder) == folder
        assert jax.config.jax_compilation_cache_dir == folder
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
        assert (jax.config.jax_compilation_cache_max_size
                == compiler.CACHE_MAX_BYTES)
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)


def test_compile_all_gives_each_program_in_order():
    fns = [lambda x: x + 1, lambda x: x * 3, lambda x: -x]
    x = jnp.arange(4.0)
    lowered = [jax.jit(f).lower(x) for f in fns]
    compiled = compiler.compile_all(lowered)
    assert len(compiled) == 3
    for f, program in zip(fns, compiled):
        np.testing.assert_array_equal(program(x), f(x))
    assert compiler.compile_all([]) == []
    np.testing.assert_array_equal(compiler.compile_all(lowered[:1])[0](x),
                                  x + 1)
