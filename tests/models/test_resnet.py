"""torchvision-compatible ResNets and the torchvision state-dict loader.

Everything runs offline: the "pretrained" weights are random state dicts in
torchvision's format built here, and the reference is an independent NumPy
(float64, NCHW, torch padding) implementation of torchvision's ResNet.
Models are built abstractly and filled by the loader, because eagerly
initialising one compiles a random kernel per weight shape (seconds on CPU).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nhl_jax.models import pretrained, resnet

EPS = 1e-5
ARCHS = {  # name -> (bottleneck?, blocks per stage, factory)
    'resnet18': (False, (2, 2, 2, 2), resnet.ResNet18),
    'resnet50': (True, (3, 4, 6, 3), resnet.ResNet50),
}


@nnx.jit
def _forward(model, x):
    return model(x)


# ---------------------------------------------------------------------------
# torchvision's state-dict layout, written out independently of the model.


def _recorders(sd, *, batches_tracked=True):
    """conv(name, out, in, k) and bn(name, ch) writing torchvision shapes."""

    def conv(name, out_ch, in_ch, k):
        sd[f'{name}.weight'] = (out_ch, in_ch, k, k)

    def bn(name, ch):
        for field in ('weight', 'bias', 'running_mean', 'running_var'):
            sd[f'{name}.{field}'] = (ch,)
        if batches_tracked:
            sd[f'{name}.num_batches_tracked'] = ()

    return conv, bn


def _unit_shapes(conv, bn, p, in_ch, planes, stride, bottleneck):
    """One block and its downsample (when the shape changes); out channels."""
    _block_shapes(conv, bn, p, in_ch, planes, bottleneck)
    out = planes * (4 if bottleneck else 1)
    if stride != 1 or in_ch != out:
        conv(p + 'downsample.0', out, in_ch, 1)
        bn(p + 'downsample.1', out)
    return out


def _torchvision_shapes(bottleneck, layers, prefix_fc=True):
    """torchvision resnet state-dict {key: shape}, in torchvision order."""
    sd = {}
    conv, bn = _recorders(sd)
    conv('conv1', 64, 3, 7)
    bn('bn1', 64)
    in_ch = 64
    for s, depth in enumerate(layers):
        for b in range(depth):
            stride = 2 if b == 0 and s > 0 else 1
            in_ch = _unit_shapes(conv, bn, f'layer{s + 1}.{b}.', in_ch,
                                 64 * 2 ** s, stride, bottleneck)
    if prefix_fc:
        sd['fc.weight'] = (1000, in_ch)
        sd['fc.bias'] = (1000,)
    return sd


def _block_shapes(conv, bn, p, in_ch, planes, bottleneck):
    if bottleneck:
        conv(p + 'conv1', planes, in_ch, 1)
        bn(p + 'bn1', planes)
        conv(p + 'conv2', planes, planes, 3)
        bn(p + 'bn2', planes)
        conv(p + 'conv3', planes * 4, planes, 1)
        bn(p + 'bn3', planes * 4)
    else:
        conv(p + 'conv1', planes, in_ch, 3)
        bn(p + 'bn1', planes)
        conv(p + 'conv2', planes, planes, 3)
        bn(p + 'bn2', planes)


def _is_buffer(key):
    return key.rsplit('.', 1)[-1] in (
        'running_mean', 'running_var', 'num_batches_tracked')


def _random_state_dict(shapes, seed=0):
    """Random torchvision-format weights that keep activations O(1)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in shapes.items():
        field = key.rsplit('.', 1)[-1]
        if field == 'num_batches_tracked':
            sd[key] = np.array(7, np.int64)
        elif len(shape) == 4:  # conv [O, I, H, W], He-scaled by fan-in
            fan_in = shape[1] * shape[2] * shape[3]
            sd[key] = rng.normal(0, np.sqrt(2 / fan_in), shape)
        elif field in ('weight', 'running_var') and len(shape) == 1:
            sd[key] = rng.uniform(0.5, 1.5, shape)  # BN scale, positive var
        else:  # BN bias / running_mean, fc
            sd[key] = rng.normal(0, 0.1, shape)
    return {k: np.asarray(v, v.dtype if k.endswith('tracked') else np.float32)
            for k, v in sd.items()}


def _blank(factory):
    """The module ``factory()`` builds, zero-filled without running inits."""
    graphdef, state = nnx.split(nnx.eval_shape(factory))
    state = jax.tree.map(
        lambda s: jax.device_put(np.zeros(s.shape, s.dtype)), state)
    return nnx.merge(graphdef, state)


def _state_copy(model):
    return [np.array(v) for v in jax.tree.leaves(nnx.state(model))]


# ---------------------------------------------------------------------------
# Independent NumPy reference (NCHW, float64, torch semantics).


def _np_conv(x, w, stride, pad):
    """torch.nn.functional.conv2d (cross-correlation) on [N, C, H, W]."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    _, _, h, wd = x.shape
    _, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = 0.0
    for a in range(kh):
        for b in range(kw):
            patch = x[:, :, a:a + stride * (oh - 1) + 1:stride,
                      b:b + stride * (ow - 1) + 1:stride]
            out = out + np.einsum('nchw,oc->nohw', patch, w[:, :, a, b])
    return out


def _np_bn(x, sd, name, train):
    """BatchNorm2d: running stats (eval) or biased batch stats (train)."""
    if train:
        mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    else:
        mean, var = sd[f'{name}.running_mean'], sd[f'{name}.running_var']
    scale = sd[f'{name}.weight'] / np.sqrt(var + EPS)
    return ((x - mean[None, :, None, None]) * scale[None, :, None, None]
            + sd[f'{name}.bias'][None, :, None, None])


def _np_maxpool(x):
    """MaxPool2d(3, stride=2, padding=1): padded cells are -inf."""
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    oh, ow = (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1
    out = np.full(x.shape[:2] + (oh, ow), -np.inf)
    for a in range(3):
        for b in range(3):
            out = np.maximum(out, x[:, :, a:a + 2 * oh - 1:2,
                                    b:b + 2 * ow - 1:2])
    return out


def _relu(x):
    return np.maximum(x, 0.0)


def _np_block(sd, p, x, stride, bottleneck, train):
    """One BasicBlock / Bottleneck (stride on the 3x3 conv, v1.5)."""
    def conv_bn(y, i, s, k):
        y = _np_conv(y, sd[f'{p}conv{i}.weight'], s, k // 2)
        return _np_bn(y, sd, f'{p}bn{i}', train)

    if bottleneck:
        out = _relu(conv_bn(x, 1, 1, 1))
        out = _relu(conv_bn(out, 2, stride, 3))
        out = conv_bn(out, 3, 1, 1)
    else:
        out = _relu(conv_bn(x, 1, stride, 3))
        out = conv_bn(out, 2, 1, 3)
    if f'{p}downsample.0.weight' in sd:
        x = _np_conv(x, sd[f'{p}downsample.0.weight'], stride, 0)
        x = _np_bn(x, sd, f'{p}downsample.1', train)
    return _relu(out + x)


def _np_resnet(sd, x_nhwc, bottleneck, layers, train=False):
    """The whole torchvision ResNet without fc: [N, H, W, C] -> [N, D]."""
    x = np.asarray(x_nhwc, np.float64).transpose(0, 3, 1, 2)
    x = _relu(_np_bn(_np_conv(x, sd['conv1.weight'], 2, 3), sd, 'bn1', train))
    x = _np_maxpool(x)
    for s, depth in enumerate(layers):
        for b in range(depth):
            stride = 2 if b == 0 and s > 0 else 1
            x = _np_block(sd, f'layer{s + 1}.{b}.', x, stride, bottleneck,
                          train)
    return x.mean(axis=(2, 3))


def _assert_close(got, want, rtol=1e-4):
    """Agreement to ``rtol`` of the reference's largest magnitude."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol,
                               atol=rtol * np.abs(want).max())


# ---------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope='module')
def resnet18_file(tmp_path_factory):
    """(path, state dict) of a random torchvision resnet18 saved as .npz."""
    sd = _random_state_dict(_torchvision_shapes(*ARCHS['resnet18'][:2]))
    path = tmp_path_factory.mktemp('weights') / 'resnet18.npz'
    np.savez(path, **sd)
    return path, sd


@pytest.fixture(scope='module')
def resnet18(resnet18_file):
    """A ResNet18 (no resize) loaded from ``resnet18_file``."""
    model = _blank(lambda: resnet.ResNet18((32, 32, 3), rngs=nnx.Rngs(0),
                                           input_size=None))
    return pretrained.load_torchvision_resnet(model, resnet18_file[0])


def _images(shape=(2, 32, 32, 3), seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ---------------------------------------------------------------------------
# Architecture.


def test_reference_layout_has_torchvision_parameter_counts():
    # torchvision: sum(p.numel() for p in resnetN().parameters()) and
    # len(resnetN().state_dict()).
    for name, params, entries in (('resnet18', 11_689_512, 122),
                                  ('resnet50', 25_557_032, 320)):
        shapes = _torchvision_shapes(*ARCHS[name][:2])
        count = sum(int(np.prod(s)) for k, s in shapes.items()
                    if not _is_buffer(k))
        assert (count, len(shapes)) == (params, entries)


@pytest.mark.parametrize('name, features, params', [
    ('resnet18', 512, 11_689_512 - 513_000),
    ('resnet50', 2048, 25_557_032 - 2_049_000)])
def test_shapes_features_and_parameter_count(name, features, params):
    bottleneck, layers, factory = ARCHS[name]
    model = nnx.eval_shape(lambda: factory((32, 32, 3), rngs=nnx.Rngs(0),
                                           input_size=None))
    assert model.features == features
    count = sum(int(np.prod(v.shape))
                for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == params
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    out = nnx.eval_shape(lambda m, x: m(x), model, x)
    assert (out.shape, out.dtype) == ((2, features), jnp.float32)
    # The loader expects exactly torchvision's keys and shapes, less fc.
    want = {k: s for k, s in _torchvision_shapes(bottleneck, layers).items()
            if not k.startswith('fc.') and not k.endswith('tracked')}
    assert pretrained.torchvision_shapes(model) == want


def test_imagenet_normalisation_constants():
    assert resnet.ResNet.input_mean == (0.485, 0.456, 0.406)
    assert resnet.ResNet.input_std == (0.229, 0.224, 0.225)


def test_conv_init_is_kaiming_normal_fan_out():
    conv = resnet.torch_conv(16, 32, 3, 2, dtype=None, rngs=nnx.Rngs(0))
    kernel = np.asarray(conv.kernel[...])
    assert kernel.shape == (3, 3, 16, 32) and conv.bias is None
    np.testing.assert_allclose(kernel.std(), np.sqrt(2 / (32 * 9)), rtol=0.05)
    assert abs(kernel.mean()) < 0.01


# ---------------------------------------------------------------------------
# Numerics against the NumPy reference.


def test_resnet18_eval_matches_numpy_reference(resnet18, resnet18_file):
    resnet18.eval()
    x = _images()
    want = _np_resnet(resnet18_file[1], x, *ARCHS['resnet18'][:2])
    _assert_close(_forward(resnet18, jnp.asarray(x)), want)


def test_resnet18_train_mode_uses_batch_statistics(resnet18, resnet18_file):
    model = nnx.clone(resnet18)  # keep the shared model's running stats
    model.train()
    sd = resnet18_file[1]
    # Batch 8: layer4's 1x1 maps give BN 8 values a channel; with fewer the
    # batch variance can be tiny and the normalisation ill-conditioned.
    x = _images((8, 32, 32, 3))
    want = _np_resnet(sd, x, *ARCHS['resnet18'][:2], train=True)
    _assert_close(_forward(model, jnp.asarray(x)), want)
    assert not np.allclose(want, _np_resnet(sd, x, *ARCHS['resnet18'][:2]))
    # Running mean <- 0.9 * old + 0.1 * batch mean (torch momentum 0.1).
    stem = _np_conv(x.transpose(0, 3, 1, 2).astype(np.float64),
                    sd['conv1.weight'], 2, 3)
    expected = 0.9 * sd['bn1.running_mean'] + 0.1 * stem.mean(axis=(0, 2, 3))
    _assert_close(model.bn1.mean[...], expected)
    np.testing.assert_array_equal(resnet18.bn1.mean[...],
                                  sd['bn1.running_mean'])


@pytest.mark.parametrize('in_ch, planes, stride, dtype, rtol', [
    (8, 4, 2, None, 1e-4), (16, 4, 1, None, 1e-4),
    (8, 4, 2, jnp.bfloat16, 3e-2)])
def test_bottleneck_block_matches_numpy_reference(tmp_path, in_ch, planes,
                                                  stride, dtype, rtol):
    shapes = {}
    conv, bn = _recorders(shapes, batches_tracked=False)
    _unit_shapes(conv, bn, '', in_ch, planes, stride, bottleneck=True)
    sd = _random_state_dict(shapes, seed=3)
    np.savez(tmp_path / 'block.npz', **sd)
    block = _blank(lambda: resnet.Bottleneck(in_ch, planes, stride,
                                             dtype=dtype, rngs=nnx.Rngs(0)))
    assert (block.downsample is None) == (stride == 1)
    pretrained.load_torchvision_resnet(block, tmp_path / 'block.npz')
    assert block.conv2.kernel.dtype == jnp.float32  # params stay float32
    block.eval()
    x = _images((2, 6, 6, in_ch), seed=4)
    want = _np_block(sd, '', x.transpose(0, 3, 1, 2).astype(np.float64),
                     stride, bottleneck=True, train=False)
    got = block(jnp.asarray(x))
    assert got.dtype == (dtype or jnp.float32)
    _assert_close(got, want.transpose(0, 2, 3, 1), rtol=rtol)


def test_resize_equals_resizing_first(tmp_path):
    # A one-block-per-stage ResNet: the resize path, at half the compile time.
    np.savez(tmp_path / 'w.npz', **_random_state_dict(
        _torchvision_shapes(False, (1, 1, 1, 1)), seed=5))
    model = _blank(lambda: resnet.ResNet(
        (32, 32, 3), block=resnet.BasicBlock, layers=(1, 1, 1, 1),
        input_size=64, rngs=nnx.Rngs(0)))
    pretrained.load_torchvision_resnet(model, tmp_path / 'w.npz')
    model.eval()
    x = jnp.asarray(_images((2, 32, 32, 3)))
    resized = jax.image.resize(x, (2, 64, 64, 3), method='bilinear')
    got = _forward(model, x)
    model.input_size = None
    np.testing.assert_allclose(got, _forward(model, resized), rtol=1e-5,
                               atol=1e-5)
    # Without resizing, the 32x32 input gives other features.
    assert not np.allclose(got, _forward(model, x), atol=1e-3)


# ---------------------------------------------------------------------------
# Loader errors: the file and key are named and nothing is written.


def _load_broken(tmp_path, sd, name='broken.npz'):
    path = tmp_path / name
    np.savez(path, **sd)
    model = _blank(lambda: resnet.ResNet18((32, 32, 3), rngs=nnx.Rngs(0)))
    before = _state_copy(model)
    with pytest.raises(ValueError) as info:
        pretrained.load_torchvision_resnet(model, path)
    for a, b in zip(before, _state_copy(model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert str(path) in str(info.value)
    return str(info.value)


def test_missing_key_raises_and_leaves_model_unchanged(tmp_path,
                                                       resnet18_file):
    sd = dict(resnet18_file[1])
    del sd['layer3.1.bn2.running_var']
    message = _load_broken(tmp_path, sd)
    assert "missing key 'layer3.1.bn2.running_var'" in message
    assert '(256,)' in message


def test_wrong_shape_raises_and_leaves_model_unchanged(tmp_path,
                                                       resnet18_file):
    sd = dict(resnet18_file[1])
    sd['layer2.0.downsample.0.weight'] = np.zeros((128, 64, 3, 3),
                                                  np.float32)
    message = _load_broken(tmp_path, sd)
    assert "'layer2.0.downsample.0.weight'" in message
    assert 'expected shape (128, 64, 1, 1), got (128, 64, 3, 3)' in message


def test_unexpected_key_raises_and_leaves_model_unchanged(tmp_path,
                                                          resnet18_file):
    sd = dict(resnet18_file[1])
    sd['layer5.0.conv1.weight'] = np.zeros((3, 3, 1, 1), np.float32)
    message = _load_broken(tmp_path, sd)
    assert "unexpected key 'layer5.0.conv1.weight'" in message


def test_resnet50_file_for_resnet18_names_first_problem(tmp_path):
    # Shapes only (zeros): a realistic mix-up, with many problems at once.
    shapes = _torchvision_shapes(*ARCHS['resnet50'][:2])
    sd = {k: np.zeros(s, np.float32) for k, s in shapes.items()
          if k.startswith(('conv1', 'bn1', 'layer1.0.'))}
    message = _load_broken(tmp_path, sd, 'resnet50.npz')
    assert 'problem(s) in all' in message and 'more' in message


def test_missing_file_says_how_to_get_weights(tmp_path):
    path = tmp_path / 'resnet50.npz'
    model = _blank(lambda: resnet.ResNet18((32, 32, 3), rngs=nnx.Rngs(0)))
    with pytest.raises(FileNotFoundError) as info:
        pretrained.load_torchvision_resnet(model, path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)
    assert "weights='IMAGENET1K_V2'" in str(info.value)
    assert 'np.savez' in str(info.value)


def test_unknown_suffix_raises(tmp_path):
    path = tmp_path / 'resnet18.h5'
    path.write_bytes(b'')
    with pytest.raises(ValueError, match='unknown weights format'):
        pretrained.read_state_dict(path)


def test_torch_file_without_torch_says_what_to_do(tmp_path, monkeypatch):
    path = tmp_path / 'resnet18.pth'
    path.write_bytes(b'not really a checkpoint')
    monkeypatch.setitem(sys.modules, 'torch', None)  # import torch fails
    with pytest.raises(ImportError) as info:
        pretrained.read_state_dict(path)
    assert 'pip install torch' in str(info.value)
    assert 'np.savez' in str(info.value) and str(path) in str(info.value)


def test_save_torchvision_npz_round_trips(tmp_path, resnet18_file):
    path = tmp_path / 'copy.npz'
    pretrained.save_torchvision_npz(resnet18_file[1], path)
    loaded = pretrained.read_state_dict(path)
    assert loaded.keys() == resnet18_file[1].keys()
    for key, value in resnet18_file[1].items():
        np.testing.assert_array_equal(loaded[key], value)


# ---------------------------------------------------------------------------
# Against torch itself, where it is installed (skipped otherwise).


def _torch_functional_resnet(torch, sd, x_nhwc, bottleneck, layers):
    """ResNet without fc from torch.nn.functional ops, eval mode."""
    f = torch.nn.functional
    t = {k: torch.as_tensor(v) for k, v in sd.items()}

    def bn(y, name):
        return f.batch_norm(y, t[f'{name}.running_mean'],
                            t[f'{name}.running_var'], t[f'{name}.weight'],
                            t[f'{name}.bias'], training=False, eps=EPS)

    def block(y, p, stride):
        convs = ((1, 1, 1), (2, stride, 3), (3, 1, 1)) if bottleneck else (
            (1, stride, 3), (2, 1, 3))
        out = y
        for n, (i, s, k) in enumerate(convs):
            out = bn(f.conv2d(out, t[f'{p}conv{i}.weight'], stride=s,
                              padding=k // 2), f'{p}bn{i}')
            out = f.relu(out) if n < len(convs) - 1 else out
        if f'{p}downsample.0.weight' in t:
            y = bn(f.conv2d(y, t[f'{p}downsample.0.weight'], stride=stride),
                   f'{p}downsample.1')
        return f.relu(out + y)

    y = torch.as_tensor(x_nhwc).permute(0, 3, 1, 2)
    y = f.relu(bn(f.conv2d(y, t['conv1.weight'], stride=2, padding=3), 'bn1'))
    y = f.max_pool2d(y, 3, stride=2, padding=1)
    for s, depth in enumerate(layers):
        for b in range(depth):
            y = block(y, f'layer{s + 1}.{b}.', 2 if b == 0 and s > 0 else 1)
    return f.adaptive_avg_pool2d(y, 1).flatten(1).numpy()


def test_pth_file_matches_torch_functional(tmp_path, resnet18_file):
    torch = pytest.importorskip('torch')
    sd = resnet18_file[1]
    path = tmp_path / 'resnet18.pth'
    torch.save({k: torch.as_tensor(v) for k, v in sd.items()}, path)
    model = _blank(lambda: resnet.ResNet18((32, 32, 3), rngs=nnx.Rngs(0),
                                           input_size=None))
    pretrained.load_torchvision_resnet(model, path)
    model.eval()
    x = _images()
    with torch.no_grad():
        want = _torch_functional_resnet(torch, sd, x, *ARCHS['resnet18'][:2])
    _assert_close(_forward(model, jnp.asarray(x)), want)


@pytest.mark.parametrize('name', ['resnet18', 'resnet50'])
def test_matches_torchvision(tmp_path, name):
    torch = pytest.importorskip('torch')
    torchvision = pytest.importorskip('torchvision')
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None)
    # Non-trivial running statistics (a fresh net has mean 0, var 1).
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    path = tmp_path / f'{name}.pth'
    torch.save(net.state_dict(), path)
    net.fc = torch.nn.Identity()
    net.eval()
    model = _blank(lambda: ARCHS[name][2]((64, 64, 3), rngs=nnx.Rngs(0),
                                          input_size=None))
    pretrained.load_torchvision_resnet(model, path)
    model.eval()
    x = _images((2, 64, 64, 3))
    with torch.no_grad():
        want = net(torch.as_tensor(x).permute(0, 3, 1, 2)).numpy()
    _assert_close(_forward(model, jnp.asarray(x)), want)


def test_train_mode_matches_torchvision(tmp_path):
    torch = pytest.importorskip('torch')
    torchvision = pytest.importorskip('torchvision')
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    path = tmp_path / 'resnet18.pth'
    torch.save(net.state_dict(), path)
    net.fc = torch.nn.Identity()
    net.train()
    model = _blank(lambda: resnet.ResNet18((32, 32, 3), rngs=nnx.Rngs(0),
                                           input_size=None))
    pretrained.load_torchvision_resnet(model, path)
    model.train()
    x = _images((8, 32, 32, 3))
    with torch.no_grad():
        want = net(torch.as_tensor(x).permute(0, 3, 1, 2)).numpy()
    _assert_close(_forward(model, jnp.asarray(x)), want)
    _assert_close(model.bn1.mean[...], net.bn1.running_mean.numpy())
    # torch updates running_var with the unbiased batch variance, flax with
    # the biased one: a factor n / (n - 1), n = 8 * 16 * 16 for the stem.
    _assert_close(model.bn1.var[...], net.bn1.running_var.numpy(), rtol=1e-3)
