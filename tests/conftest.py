"""JAX configuration shared by every test (set once, before any jax use)."""

import atexit
import os
import shutil
import tempfile

import jax
import pytest

# Implicit rank promotion hides shape bugs ([B] + [B, 1] -> [B, B]).
jax.config.update('jax_numpy_rank_promotion', 'raise')

# The suite compiles far more than it runs: XLA's CPU loop emitters
# without the newer fusion emitters compile the nested NHL step in 0.73 s
# instead of 1.06 s (its step then runs 2-3 % slower), which cut the
# suite's CPU time by about 12 %. Set before the backend starts; the
# subprocess tests inherit it. Users' compiles keep XLA's default.
if 'xla_cpu_use_fusion_emitters' not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                               + ' --xla_cpu_use_fusion_emitters=false')

# One persistent compilation cache for the session: the CLI subprocesses
# (which inherit the environment) and the many tests that build the same
# step anew compile identical programs, so all but the first load them
# instead. A fresh directory per session keeps runs independent.
# pytest-xdist workers inherit the directory of the process that made it
# (NHL_JAX_TEST_CACHE), so the workers share one cache too.
_CACHE_DIR = os.environ.get('NHL_JAX_TEST_CACHE')
if not _CACHE_DIR:
    _CACHE_DIR = tempfile.mkdtemp(prefix='nhl_jax_test_xla_cache_')
    os.environ['NHL_JAX_TEST_CACHE'] = _CACHE_DIR
    atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
for _name, _value in (('jax_compilation_cache_dir', _CACHE_DIR),
                      # Small CPU programs too: they are most of the compiles.
                      ('jax_persistent_cache_min_compile_time_secs', 0),
                      ('jax_persistent_cache_min_entry_size_bytes', -1)):
    jax.config.update(_name, _value)
    os.environ[_name.upper()] = str(_value)


@pytest.fixture(autouse=True)
def _no_saved_traces(monkeypatch):
    """Saved traced programs off in this process unless a test turns them
    on: a test that runs the command line in-process turns them on, and a
    later test that patches a step would otherwise call the saved,
    unpatched program (the key is the package's source, not a patch).
    Subprocess runs keep them, in the session's cache folder."""
    from nhl_jax.train import traces  # after the flags above
    monkeypatch.setattr(traces, '_folder', [None])
