"""Binary layers, backbones and packed-bit inference (nhl_jax.models.bnn)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nhl_jax import cli, data, models, train
from nhl_jax.cli.configs import default
from nhl_jax.models import bnn
from nhl_jax.models.bnn import packed

# Points on both sides of every kink of the surrogate gradients.
_X = np.array([-2.0, -1.0, -0.75, -0.5, 0.0, 0.3, 0.999, 1.0, 1.5],
              np.float32)


def _np_sign(x):
    return np.where(x >= 0, 1.0, -1.0).astype(np.float32)


def _np_conv3x3(x, w, stride=1):
    """Zero-padded 3x3 cross-correlation [B,H,W,C] x [3,3,C,O], by loops."""
    b, h, wd, _ = x.shape
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, ho, wo, w.shape[-1]), np.float64)
    for i in range(ho):
        for j in range(wo):
            window = xp[:, i * stride:i * stride + 3, j * stride:j * stride + 3]
            out[:, i, j] = np.einsum('bhwc,hwco->bo', window, w)
    return out


def _call(module, x):
    return module(x)


class TestSigns:

    def test_forward_is_sign_with_zero_mapped_to_plus_one(self):
        for fn in bnn.SIGNS.values():
            np.testing.assert_array_equal(fn(jnp.asarray(_X)), _np_sign(_X))

    def test_ste_gradient_is_identity_inside_unit_interval(self):
        g = jax.jit(jax.grad(lambda x: jnp.sum(3.0 * bnn.ste_sign(x))))(_X)
        # 1{|x| <= 1}, boundary inside: -2, 1.5 outside; -1, 1 inside.
        np.testing.assert_array_equal(g, 3.0 * np.array(
            [0, 1, 1, 1, 1, 1, 1, 1, 0], np.float32))

    def test_approx_sign_gradient_is_piecewise_polynomial_derivative(self):
        g = jax.jit(jax.grad(lambda x: jnp.sum(bnn.approx_sign(x))))(_X)
        # 2 + 2x on [-1, 0), 2 - 2x on [0, 1), 0 elsewhere (Bi-Real).
        expected = [0.0, 0.0, 0.5, 1.0, 2.0, 1.4, 0.002, 0.0, 0.0]
        np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-6)

    def test_unknown_sign_lists_valid_names(self):
        with pytest.raises(ValueError, match=r"Unknown sign 'tanh'.*'approx'"):
            bnn.RSign(3, sign='tanh')


class TestBinaryWeights:

    def test_scale_is_mean_absolute_weight_per_output_channel(self):
        w = np.random.default_rng(0).normal(size=(3, 3, 4, 5)).astype('f4')
        np.testing.assert_allclose(bnn.weight_scale(jnp.asarray(w)),
                                   np.abs(w).mean(axis=(0, 1, 2)), rtol=1e-6)

    def test_binary_weights_are_plus_minus_alpha(self):
        conv = bnn.BinaryConv3x3(4, 5, rngs=nnx.Rngs(0))
        w = np.asarray(conv.kernel[...])
        alpha = np.abs(w).mean(axis=(0, 1, 2))
        wb = np.asarray(conv.binary_kernel())
        np.testing.assert_allclose(np.abs(wb), np.broadcast_to(alpha, w.shape),
                                   rtol=1e-6)
        np.testing.assert_array_equal(np.sign(wb), _np_sign(w))

    def test_weight_gradient_is_alpha_times_clipped_straight_through(self):
        w = np.array([[0.5, -2.0], [-0.25, 1.0], [3.0, -0.5]], np.float32)
        gout = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)
        grad = jax.jit(jax.grad(
            lambda k: jnp.sum(bnn.binarize_weights(k) * gout)))(w)
        alpha = np.abs(w).mean(axis=0)  # [1.25, 1.1667]; carries no gradient
        mask = (np.abs(w) <= 1).astype(np.float32)
        np.testing.assert_allclose(grad, alpha * gout * mask, rtol=1e-6)

    @pytest.mark.parametrize('stride', [1, 2])
    def test_conv_equals_numpy_conv_with_binary_weights(self, stride):
        conv = bnn.BinaryConv3x3(3, 4, stride=stride, rngs=nnx.Rngs(1))
        x = _np_sign(np.random.default_rng(1).normal(size=(2, 5, 6, 3)))
        w = np.asarray(conv.kernel[...])
        expected = _np_conv3x3(x, np.abs(w).mean((0, 1, 2)) * _np_sign(w),
                               stride)
        out = nnx.jit(_call)(conv, x)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)

    def test_conv_weight_gradient_goes_through_binary_weights(self):
        conv = bnn.BinaryConv3x3(2, 3, rngs=nnx.Rngs(2))
        x = _np_sign(np.random.default_rng(2).normal(size=(2, 4, 4, 2)))
        ours = nnx.jit(nnx.grad(lambda m: jnp.sum(jnp.sin(m(x)))))(conv)
        w = conv.kernel[...]

        def via_lax(wb):
            y = jax.lax.conv_general_dilated(
                x, wb, (1, 1), ((1, 1), (1, 1)),
                dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
            return jnp.sum(jnp.sin(y))

        alpha = jnp.mean(jnp.abs(w), axis=(0, 1, 2))[None, None, None, :]
        d_wb = jax.jit(jax.grad(via_lax))(alpha * jnp.where(w >= 0, 1., -1.))
        expected = alpha * d_wb * (jnp.abs(w) <= 1)
        np.testing.assert_allclose(ours['kernel'][...], expected,
                                   rtol=1e-4, atol=1e-6)

    def test_dense_equals_numpy(self):
        dense = bnn.BinaryDense(6, 3, rngs=nnx.Rngs(3))
        x = _np_sign(np.random.default_rng(3).normal(size=(4, 6)))
        w = np.asarray(dense.kernel[...])
        expected = x @ (np.abs(w).mean(0) * _np_sign(w))
        np.testing.assert_allclose(nnx.jit(_call)(dense, x), expected,
                                   rtol=1e-5, atol=1e-6)


class TestReActShifts:

    def test_rsign_matches_numpy_and_its_threshold_gets_gradient(self):
        rsign = bnn.RSign(3)
        beta = np.array([0.5, -0.2, 0.0], np.float32)
        rsign.beta[...] = jnp.asarray(beta)
        x = np.random.default_rng(4).normal(size=(2, 4, 3)).astype('f4')
        np.testing.assert_array_equal(nnx.jit(_call)(rsign, x),
                                      _np_sign(x - beta))
        grad = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x))))(rsign)
        d = np.maximum(0.0, 2.0 - 2.0 * np.abs(x - beta))
        np.testing.assert_allclose(grad['beta'][...], -d.sum((0, 1)),
                                   rtol=1e-5)

    def test_rprelu_matches_numpy(self):
        act = bnn.RPReLU(3)
        gamma, slope, zeta = (np.array(v, np.float32) for v in (
            [0.1, -0.3, 0.0], [0.25, 0.5, 2.0], [1.0, 0.0, -1.0]))
        act.gamma[...], act.slope[...], act.zeta[...] = (
            jnp.asarray(gamma), jnp.asarray(slope), jnp.asarray(zeta))
        x = np.random.default_rng(5).normal(size=(2, 5, 3)).astype('f4')
        y = x - gamma
        expected = np.where(y >= 0, y, slope * y) + zeta
        np.testing.assert_allclose(nnx.jit(_call)(act, x), expected,
                                   rtol=1e-6)

    def test_rprelu_starts_as_prelu_with_quarter_slope(self):
        x = jnp.array([[-2.0, 3.0]])
        np.testing.assert_allclose(bnn.RPReLU(2)(x), [[-0.5, 3.0]])


# The offline digits' shape, so the eager init ops compile once for all.
_DIGITS = (8, 8, 1)
_SMALL_REACTNET = dict(layers=(1, 1, 1, 1), input_size=None)


@pytest.fixture(scope='module')
def trained():
    """A HashNet on bnn_cnn after 15 NHL steps (full objective) on digits.

    Returns:
      (model in eval mode, initial params, losses per step, a batch).
    """
    config = default.get_config()
    config.update(dict(dataset='digits', backbone='bnn_cnn', bits=(8, 16),
                       batch_size=64, method='dpn'))
    splits = data.load_splits('digits', seed=0)
    setup, state = cli.create_train_state(cli.resolve(config),
                                          train.DataInfo.of(splits))
    batch = next(iter(data.train_batches(splits.train, 64, seed=0, epoch=1)))
    initial = jax.tree.map(np.asarray, state.params)

    def step_fn(state, batch):
        return setup.steps['train'](state, batch, None)

    # One trace: no parameter changes dtype or weak type after a step.
    train_step = jax.jit(chex.assert_max_traces(step_fn, n=1))
    losses = []
    for _ in range(15):
        state, metrics = train_step(state, batch)
        losses.append(float(metrics['loss']))
    model = nnx.merge(setup.graphdef, state.params, state.rest)
    model.eval()
    return model, initial, losses, batch


@pytest.fixture(scope='module')
def reactnet():
    """A small ReActNet18 with random NumPy values in every variable.

    Built abstractly and filled from NumPy: an eager init would compile one
    XLA program per parameter shape (seconds on a CPU).
    """
    net = nnx.eval_shape(lambda: models.get_backbone(
        'reactnet18', (16, 16, 3), rngs=nnx.Rngs(0), **_SMALL_REACTNET))
    rng = np.random.default_rng(0)

    def fill(path, v):
        if path[-1] == 'var':
            return np.float32(rng.uniform(0.5, 1.5, v.shape))
        return np.float32(rng.normal(0.0, 0.1, v.shape))

    flat = nnx.to_flat_state(nnx.state(net))
    nnx.update(net, nnx.from_flat_state([
        (path, v.replace(jnp.asarray(fill(path, v)))) for path, v in flat]))
    return net


def _finite_and_learning(grads):
    """All gradients finite; every binary layer's latent weights get some."""
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    binary = [np.abs(np.asarray(v[...])).sum()
              for path, v in nnx.to_flat_state(grads)
              if path[-1] == 'kernel' and path[-2] in ('conv', 'fc')]
    assert binary and min(binary) > 0


class TestBackbones:

    @pytest.mark.slow  # ~10 s of compilation on a CPU
    def test_reactnet18_features_and_finite_gradients(self, reactnet):
        x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))

        def loss(net):
            features = net(x)
            return jnp.mean(features ** 2), features

        (value, features), grads = nnx.jit(
            nnx.value_and_grad(loss, has_aux=True))(nnx.clone(reactnet))
        assert features.shape == (3, 512) and np.isfinite(value)
        _finite_and_learning(grads)
        projections = [v for path, v in nnx.to_flat_state(grads)
                       if 'project' in path]
        assert projections and all(np.abs(v[...]).sum() > 0
                                   for v in projections)

    def test_reactnet18_is_sixteen_binary_blocks_on_fp_stem(self):
        net = nnx.eval_shape(lambda: models.get_backbone(
            'reactnet18', (224, 224, 3), rngs=nnx.Rngs(0)))
        convs = [n for _, n in nnx.iter_graph(net)
                 if isinstance(n, bnn.BinaryConv3x3)]
        assert len(convs) == 16 and net.features == 512
        assert [c.stride for c in convs].count(2) == 3
        assert isinstance(net.stem, nnx.Conv)  # full precision

    def test_tiled_shortcut_needs_a_channel_multiple(self):
        with pytest.raises(ValueError, match='project=True'):
            bnn.BinaryBlock(32, 48, rngs=nnx.Rngs(0))

    def test_avg_pool_handles_odd_sides(self):
        x = jnp.arange(15.0).reshape(1, 3, 5, 1)
        out = jnp.squeeze(bnn.backbones.avg_pool_2x2(x))
        expected = [[3.0, 5.0, 6.5], [10.5, 12.5, 14.0]]
        np.testing.assert_allclose(out, expected)


def _both(deployed, net, x):
    return deployed(x), net(x)


class TestPacked:

    def test_pack_bits_matches_numpy_packbits(self):
        bits = np.random.default_rng(6).random((3, 70)) > 0.5
        ours = np.asarray(packed.pack_bits(jnp.asarray(bits)))
        padded = np.pad(bits, ((0, 0), (0, 26)))
        ref = np.packbits(padded, axis=-1, bitorder='little')
        np.testing.assert_array_equal(ours, ref.view('<u4'))

    def test_xnor_popcount_is_masked_plus_minus_one_dot(self):
        rng = np.random.default_rng(7)
        a = rng.choice([-1.0, 0.0, 1.0], size=(4, 45)).astype('f4')
        w = _np_sign(rng.normal(size=(45, 3)))
        dots = packed.xnor_popcount_dot(
            packed.pack_bits(jnp.asarray(a > 0)),
            packed.pack_bits(jnp.asarray(a != 0)),
            packed.pack_bits(jnp.asarray(w.T > 0)))
        np.testing.assert_array_equal(dots, (a @ w).astype(np.int32))

    def test_packed_trained_hashnet_equals_its_forward(self, trained):
        model, _, _, batch = trained
        deployed = packed.pack(model)
        (f_ours, h_ours), (f_ref, h_ref) = nnx.jit(_both)(
            deployed, model, batch['image'])
        assert f_ref.shape == (64, 256) and h_ref.shape == (64, 16)
        np.testing.assert_allclose(f_ours, f_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(h_ours, h_ref, rtol=1e-5, atol=1e-5)
        kinds = {type(n) for _, n in nnx.iter_graph(deployed)}
        assert {packed.PackedConv3x3, packed.PackedDense} <= kinds
        assert not kinds & {bnn.BinaryConv3x3, bnn.BinaryDense}
        assert isinstance(model.backbone.fc, bnn.BinaryDense)  # untouched

    def test_packed_reactnet18_equals_training_forward(self, reactnet):
        net = nnx.clone(reactnet)
        net.eval()
        x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
        ours, ref = nnx.jit(_both)(packed.pack(net), net, x)
        assert ref.shape == (2, 512)
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)

    def test_model_bytes_arithmetic(self):
        class Tiny(nnx.Module):
            def __init__(self):
                self.rsign = bnn.RSign(40)
                self.fc = bnn.BinaryDense(40, 3, rngs=nnx.Rngs(0))
                self.bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))

        sizes = packed.model_bytes(Tiny())
        # 3 rows of ceil(40 / 32) = 2 words + 3 scales; beta 40; BN 4 x 3.
        assert sizes.deployed == 3 * 2 * 4 + 3 * 4 + 40 * 4 + 12 * 4
        assert sizes.float32 == (40 * 3 + 40 + 12) * 4
        assert sizes.binary_weights == 120 and sizes.float_values == 55

    def test_model_bytes_of_bnn_cnn(self, trained):
        backbone = trained[0].backbone
        sizes = packed.model_bytes(backbone)
        # 9 x 32 -> 64, 9 x 64 -> 64, (2 x 2 x 64) -> 256: whole words.
        binary = 9 * 32 * 64 + 9 * 64 * 64 + 2 * 2 * 64 * 256
        assert sizes.binary_weights == binary
        floats = sum(x.size for x in jax.tree.leaves(nnx.state(
            backbone, (nnx.Param, nnx.BatchStat)))) - binary
        assert sizes.deployed == binary // 8 + 4 * (floats + 64 + 64 + 256)
        assert sizes.float32 == 4 * (floats + binary)

    def test_seconds_per_image_is_positive(self):
        seconds = packed.seconds_per_image(bnn.RPReLU(3), jnp.ones((2, 3)),
                                           repeats=2)
        assert 0 < seconds < 1


def test_hashnet_with_bnn_cnn_trains_through_the_nhl_step(trained):
    model, initial, losses, _ = trained
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.8 * losses[0]
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    before = nnx.to_flat_state(initial)
    assert all(np.isfinite(v[...]).all() for _, v in params)
    # Gradients reach every binary layer's latent weights through the STEs.
    moved = {path: np.abs(np.asarray(v[...]) - np.asarray(w[...])).max()
             for (path, v), (_, w) in zip(params, before)
             if path[-1] == 'kernel' and path[-2] in ('conv', 'fc')}
    assert len(moved) == 3 and min(moved.values()) > 0  # 2 convs + fc
