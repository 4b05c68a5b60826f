"""The study's benchmark scripts run end to end (``--smoke``) and print
their Markdown tables."""

import json
import os
import subprocess
import sys

import pytest

from tests.support import ROOT


def _smoke(script: str, *flags: str) -> str:
    env = dict(os.environ, JAX_PLATFORMS='cpu',
               # Compile fast: the smoke runs check the scripts, not speed.
               XLA_FLAGS='--xla_backend_optimization_level=0')
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', script), '--smoke',
         *flags],
        check=False, capture_output=True, text=True, env=env, cwd=ROOT,
        timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _rows(out: str, first: str) -> list[list[str]]:
    """Cells of the Markdown rows whose first cell is ``first``."""
    rows = [[c.strip() for c in line.strip().strip('|').split('|')]
            for line in out.splitlines() if line.startswith('|')]
    return [r for r in rows if r[0] == first]


def test_nested_vs_single_prints_both_modes_and_the_ratio(tmp_path):
    # The interleaved rounds and the bracketing repeat of the nested run:
    # tests/benchmarks/test_turns.py, in-process.
    out = _smoke('nested_vs_single.py', f'--out={tmp_path / "runs.json"}',
                 '--rounds=0', '--no_bracket')
    (nested_run,) = json.loads((tmp_path / 'runs.json').read_text())['dpn'][
        'nested']
    assert 'train_seconds_runs' not in nested_run  # --no_bracket
    assert '| mode | 8 bits | 16 bits | mean mAP | train s |' in out
    (nested,), (single,) = _rows(out, 'nested'), _rows(out, 'single')
    assert nested[-1].endswith('x') and float(nested[-1][:-1]) > 0
    for cell in nested[1:4] + single[1:4]:  # one seed: the mAP, no std
        assert '±' not in cell and 0 < float(cell) <= 1
    (line,) = [x for x in out.splitlines()
               if x.startswith('single / nested per seed: ')]
    per_seed = float(line.split(': ')[1].split('x')[0])
    assert per_seed == pytest.approx(float(nested[-1][:-1]), rel=0.01)
    assert 'x at equal epochs' in line
    # Fresh processes: the command line's start-up is a phase too.
    assert '| mode | startup | data | setup | trace | compile | train |' in out
    for mode in ('nested (s)', 'single (s)'):
        (row,) = _rows(out, mode)
        total = float(row[-1])
        assert total > 0 and sum(map(float, row[1:-1])) == pytest.approx(
            total, abs=0.05)
    assert 'interleaved' not in out  # --rounds=0


def test_step_overhead_prints_each_rule_against_plain_nested():
    out = _smoke('step_overhead.py', '--only=paper', '--stacked')
    assert '| variant | ms / step | overhead vs plain nested |' in out
    (plain,) = _rows(out, 'nested, plain')
    assert plain[2] == '+0.0 %' and float(plain[1]) > 0
    for name in ('nested + weighting paper', 'nested, plain, stacked lengths',
                 'nested + weighting paper, stacked lengths'):
        (row,) = _rows(out, name)
        assert row[2].endswith('%') and float(row[1]) > 0


def test_ablation_prints_per_length_rows():
    out = _smoke('ablation.py')
    assert '| variant | 8 bits | 16 bits | train s |' in out
    for variant in ('none', 'full'):
        (row,) = _rows(out, variant)
        assert all(0 < float(v) <= 1 for v in row[1:3])



def test_accelerator_prints_both_dtypes_and_the_device():
    out = _smoke('accelerator.py')
    assert out.startswith('device: ')
    rows = _rows(out, 'cnn')
    assert [r[3] for r in rows] == ['float32', 'bfloat16']
    for row in rows:
        assert float(row[4]) > 0 and row[6].endswith('%')


# A diagnosis of the CPU's evaluation (issue 31), not a library path.
@pytest.mark.slow
def test_eval_overlap_prints_both_variants_and_their_ratio():
    out = _smoke('eval_overlap.py')
    assert out.startswith('digits, 2 lengths, 2 rounds, the full evaluation')
    for name in ('epoch', 'evaluation', 'epoch, then evaluation',
                 'evaluation beside the epoch'):
        (row,) = _rows(out, name)
        assert float(row[1]) > 0
    (line,) = [x for x in out.splitlines() if x.startswith('beside / after')]
    assert float(line.split('median ')[1].split()[0]) > 0


def test_map_speed_prints_every_section():
    out = _smoke('map_speed.py')
    assert "mAP@all, ties='expected':" in out
    (row,) = [r for r in _rows(out, 'mAP@all')
              if r[1] == "nhl_jax, ties='expected'"]
    assert row[4].endswith('x')
    assert _rows(out, "nhl_jax retrieval_metrics (numpy, ties='stable')"
                 )[0][3] == 'yes'


# The conv-path study settled the library's convolution (issue 19); its
# two smoke runs take 20 s of CI, so they run with the slow checks. The
# custom vjps it compares stay checked in CI (below).
@pytest.mark.slow
def test_conv_paths_prints_every_variant_of_every_case():
    out = _smoke('conv_paths.py')
    rows = _rows(out, 'small CNN, batch 2')
    for variant in ('im2col', 'im2col-vjp', 'lax', 'lax-vjp', 'lax + jnp-max',
                    'lax + reduce_window'):
        assert sorted(r[2] for r in rows if r[1] == variant) == [
            'XLA default', 'library']
    (base,) = [r for r in rows if r[1:3] == ['lax', 'library']]
    assert base[4] == base[6] == '1.00x' and float(base[3]) > 0


@pytest.mark.slow
def test_conv_paths_times_every_conv_backbone_under_both_options():
    out = _smoke('conv_paths.py', '--backbones')
    for name in ('cnn', 'bnn_cnn'):  # the smoke run's two
        rows = _rows(out, name)
        assert sorted(r[1] for r in rows) == ['XLA default', 'library']
        (ours,) = [r for r in rows if r[1] == 'library']
        assert ours[3] == ours[5] == '1.00x' and float(ours[4]) > 0


def test_against_torch_prints_every_ratio_when_torch_is_installed():
    __import__('pytest').importorskip('torch')
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'step_overhead.py'),
         '--against-torch', '--rounds=1', '--steps=1', '--batch_size=4',
         '--bits=8,16'], check=False, capture_output=True, text=True,
        env=dict(os.environ, JAX_PLATFORMS='cpu'), cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ('single length (64 bits)', 'nested, plain',
                 'full NHL (paper + distillation)', 'backbone forward',
                 'backbone forward + backward'):
        (row,) = _rows(done.stdout, name)
        assert float(row[3].rstrip('x')) > 0
    assert 'full NHL (nhl_jax) / plain nested (PyTorch):' in done.stdout
    assert done.stdout.count('NHL extras over plain nested') == 2


def test_torch_step_runs_every_variant_when_torch_is_installed():
    torch = __import__('pytest').importorskip('torch')
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    import torch_step
    for weighting, distill in (('none', 0.0), ('paper', 0.1)):
        step = torch_step.TorchStep((8, 16), weighting=weighting,
                                    distill_weight=distill, batch_size=4)
        first, second = float(step()), float(step())
        assert torch.isfinite(torch.tensor([first, second])).all()
        assert first != second  # Adam moved the weights
    grads = [torch.ones(16, 3), -2 * torch.ones(16, 3)]
    # Length 2 anti-dominates length 1 (cosine -1): its weight is capped.
    weights = torch_step.paper_weights(grads, (8, 16))
    assert weights[1] < weights[0] and abs(float(weights.sum()) - 2) < 1e-6


@__import__('pytest').mark.parametrize('stride', [1, 2])
def test_conv_paths_custom_vjps_give_xla_gradients(stride):
    # Only correct alternatives make the timing comparison mean anything.
    import jax
    import jax.numpy as jnp
    import numpy as np
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    import conv_paths
    from nhl_jax.models import layers
    rng = np.random.default_rng(stride)
    x = jnp.asarray(rng.standard_normal((2, 9, 9, 3)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)

    def grads(conv):
        return jax.grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k, stride))),
                        argnums=(0, 1))(x, k)

    expected = grads(layers.conv3x3)
    for conv in (conv_paths.conv_im2col_vjp, conv_paths.conv_lax_vjp):
        for got, want in zip(grads(conv), expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_import_time_prints_a_row_per_module():
    out = _smoke('import_time.py')
    assert 'ml_dtypes ' in out.splitlines()[0]
    for module in ('ml_dtypes', 'jax'):
        (row,) = _rows(out, module)
        assert float(row[1]) > 0
