"""torchvision-compatible Vision Transformer and its state-dict loader.

Everything runs offline: the "pretrained" weights are random state dicts in
torchvision's format built here, and the reference is an independent NumPy
float64 implementation of torchvision's ViT (patchify by reshape, explicit
per-head softmax attention, exact GELU via math.erf).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nhl_jax.models import pretrained, vit

TINY = {'patch': 4, 'width': 16, 'depth': 2, 'heads': 2, 'mlp': 32}
SIDE = 8  # 8x8 images: 4 patches + the class token
EPS = 1e-6


@nnx.jit
def _forward(model, x):
    return model(x)


def _tiny(input_size=SIDE, dtype=None):
    """An abstract tiny ViT (eager init compiles a kernel per weight shape)."""
    return nnx.eval_shape(lambda: vit.VisionTransformer(
        (SIDE, SIDE, 3), input_size=input_size, dtype=dtype,
        rngs=nnx.Rngs(0), **TINY))


def _loaded(tmp_path, sd=None, **kw):
    """A tiny ViT filled by the loader from ``sd`` (default: random)."""
    sd = _random_state_dict() if sd is None else sd
    return vit.load_torchvision_vit(_tiny(**kw), _save(tmp_path, sd))


# ---------------------------------------------------------------------------
# torchvision's state-dict layout, written out independently of the model.


def _torchvision_shapes(patch, width, depth, heads, mlp, side, channels=3,
                        with_head=False):
    """torchvision vit state-dict {key: shape}, in torchvision order."""
    del heads  # the shapes do not depend on it
    tokens = (side // patch) ** 2 + 1
    sd = {'class_token': (1, 1, width),
          'conv_proj.weight': (width, channels, patch, patch),
          'conv_proj.bias': (width,),
          'encoder.pos_embedding': (1, tokens, width)}
    for i in range(depth):
        p = f'encoder.layers.encoder_layer_{i}.'
        sd.update({
            p + 'ln_1.weight': (width,), p + 'ln_1.bias': (width,),
            p + 'self_attention.in_proj_weight': (3 * width, width),
            p + 'self_attention.in_proj_bias': (3 * width,),
            p + 'self_attention.out_proj.weight': (width, width),
            p + 'self_attention.out_proj.bias': (width,),
            p + 'ln_2.weight': (width,), p + 'ln_2.bias': (width,),
            p + 'mlp.0.weight': (mlp, width), p + 'mlp.0.bias': (mlp,),
            p + 'mlp.3.weight': (width, mlp), p + 'mlp.3.bias': (width,)})
    sd['encoder.ln.weight'] = (width,)
    sd['encoder.ln.bias'] = (width,)
    if with_head:
        sd['heads.head.weight'] = (1000, width)
        sd['heads.head.bias'] = (1000,)
    return sd


def _random_state_dict(seed=0, with_head=True):
    rng = np.random.default_rng(seed)
    shapes = _torchvision_shapes(side=SIDE, with_head=with_head, **TINY)
    sd = {}
    for key, shape in shapes.items():
        if key.endswith(('ln_1.weight', 'ln_2.weight')) or \
                key == 'encoder.ln.weight':
            sd[key] = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            sd[key] = 0.3 * rng.standard_normal(shape)
    return {k: v.astype(np.float32) for k, v in sd.items()}


def _save(tmp_path, sd, name='vit.npz'):
    path = tmp_path / name
    np.savez(path, **sd)
    return path


# ---------------------------------------------------------------------------
# Independent NumPy float64 reference (NCHW inputs, as torch).


def _ln(x, w, b):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * w + b


_ERF = np.vectorize(math.erf)


def _gelu(x):
    return 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)))


def _attention(x, sd, p, heads):
    """torch MultiheadAttention(x, x, x), one head at a time."""
    d = x.shape[1]
    dh = d // heads
    qkv = x @ sd[p + 'in_proj_weight'].T + sd[p + 'in_proj_bias']
    q, k, v = qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:]
    outs = []
    for h in range(heads):
        sl = slice(h * dh, (h + 1) * dh)
        logits = q[:, sl] @ k[:, sl].T / math.sqrt(dh)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        outs.append((e / e.sum(-1, keepdims=True)) @ v[:, sl])
    out = np.concatenate(outs, axis=-1)
    return out @ sd[p + 'out_proj.weight'].T + sd[p + 'out_proj.bias']


def _reference(sd, images, patch, heads, depth, **_):
    """torchvision vit forward of NCHW ``images``; returns [B, D] float64."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    b, c, hh, ww = images.shape
    gh, gw = hh // patch, ww // patch
    # Patchify: [B, C, gh, p, gw, p] -> [B, gh, gw, C, p, p] -> [B, N, C*p*p].
    x = images.reshape(b, c, gh, patch, gw, patch).transpose(0, 2, 4, 1, 3, 5)
    x = x.reshape(b, gh * gw, c * patch * patch)
    w = sd['conv_proj.weight'].reshape(sd['conv_proj.weight'].shape[0], -1)
    x = x @ w.T + sd['conv_proj.bias']
    cls = np.broadcast_to(sd['class_token'], (b, 1, x.shape[-1]))
    x = np.concatenate([cls, x], axis=1) + sd['encoder.pos_embedding']
    out = []
    for t in x:  # one image at a time: [N, D]
        for i in range(depth):
            p = f'encoder.layers.encoder_layer_{i}.'
            y = _ln(t, sd[p + 'ln_1.weight'], sd[p + 'ln_1.bias'])
            t = t + _attention(y, sd, p + 'self_attention.', heads)
            y = _ln(t, sd[p + 'ln_2.weight'], sd[p + 'ln_2.bias'])
            y = _gelu(y @ sd[p + 'mlp.0.weight'].T + sd[p + 'mlp.0.bias'])
            t = t + y @ sd[p + 'mlp.3.weight'].T + sd[p + 'mlp.3.bias']
        t = _ln(t, sd['encoder.ln.weight'], sd['encoder.ln.bias'])
        out.append(t[0])
    return np.stack(out)


def _params(model):
    return jax.tree.map(np.asarray, nnx.state(model, nnx.Param))


# ---------------------------------------------------------------------------
# Tests.


def test_forward_matches_numpy_reference(tmp_path):
    sd = _random_state_dict()
    model = _loaded(tmp_path, sd)
    images = np.random.default_rng(1).standard_normal((3, 3, SIDE, SIDE))
    got = _forward(model, jnp.asarray(images.transpose(0, 2, 3, 1),
                                      jnp.float32))
    want = _reference(sd, images, **TINY)
    assert got.shape == (3, TINY['width']) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_expected_keys_match_torchvision_layout():
    model = _tiny()
    want = _torchvision_shapes(side=SIDE, **TINY)
    assert vit.torchvision_vit_shapes(model) == want


@pytest.mark.parametrize('change', ['missing', 'shape', 'unexpected'])
def test_loader_errors_name_file_and_key(tmp_path, change):
    sd = _random_state_dict()
    key = 'encoder.layers.encoder_layer_1.mlp.3.weight'
    if change == 'missing':
        del sd[key]
    elif change == 'shape':
        sd[key] = np.zeros((3, 3), np.float32)
    else:
        key = 'encoder.layers.encoder_layer_2.ln_1.weight'
        sd[key] = np.ones((TINY['width'],), np.float32)
    model = _loaded(tmp_path)
    path = _save(tmp_path, sd, 'bad.npz')
    before = _params(model)
    with pytest.raises(ValueError) as info:
        vit.load_torchvision_vit(model, path)
    message = str(info.value)
    assert str(path) in message and repr(key) in message
    assert change in message or 'expected shape' in message
    after = _params(model)
    jax.tree.map(np.testing.assert_array_equal, before, after)


def test_missing_file_is_weights_not_found(tmp_path):
    with pytest.raises(pretrained.WeightsNotFoundError, match='never'):
        vit.load_torchvision_vit(_tiny(), tmp_path / 'absent.npz')


def test_vit_b16_shapes_and_parameter_count():
    model = nnx.eval_shape(
        lambda: vit.ViT_B16((224, 224, 3), rngs=nnx.Rngs(0)))
    assert model.features == 768
    shapes = vit.torchvision_vit_shapes(model)
    assert shapes['encoder.pos_embedding'] == (1, 197, 768)
    assert shapes['conv_proj.weight'] == (768, 3, 16, 16)
    assert shapes['encoder.layers.encoder_layer_11.self_attention.'
                  'in_proj_weight'] == (2304, 768)
    assert len(shapes) == 4 + 12 * 12 + 2
    # Hand count of vit_b_16 without heads: conv 768*3*16*16 + 768, class
    # token 768, pos 197*768, per layer 2 LN (4*768) + in_proj 2304*769 +
    # out_proj 768*769 + mlp 3072*769 + 768*3073, final LN 2*768.
    per_layer = 4 * 768 + 2304 * 769 + 768 * 769 + 3072 * 769 + 768 * 3073
    total = (768 * 3 * 256 + 768) + 768 + 197 * 768 + 12 * per_layer + 1536
    assert total == 85_798_656
    n_params = sum(math.prod(x.shape)
                   for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n_params == total
    out = nnx.eval_shape(lambda m, x: m(x), model,
                         jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    assert out.shape == (2, 768) and out.dtype == jnp.float32


def test_resize_path(tmp_path):
    sd = _random_state_dict()
    model = _loaded(tmp_path, sd)
    small = np.random.default_rng(2).standard_normal((2, 4, 4, 3))
    resized = jax.image.resize(jnp.asarray(small, jnp.float32),
                               (2, SIDE, SIDE, 3), method='bilinear')
    got = _forward(model, jnp.asarray(small, jnp.float32))
    np.testing.assert_allclose(np.asarray(got),
                               np.asarray(_forward(model, resized)),
                               rtol=1e-6, atol=1e-6)
    want = _reference(sd, np.asarray(resized, np.float64).transpose(0, 3, 1, 2),
                      **TINY)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_no_resize_rejects_wrong_size():
    model = _tiny(input_size=None)
    with pytest.raises(ValueError, match='8x8'):
        nnx.eval_shape(lambda m, x: m(x), model,
                       jax.ShapeDtypeStruct((1, 4, 4, 3), jnp.float32))


def test_bfloat16_compute_keeps_float32_features(tmp_path):
    sd = _random_state_dict()
    model = _loaded(tmp_path, sd, dtype=jnp.bfloat16)
    images = np.random.default_rng(3).standard_normal((2, 3, SIDE, SIDE))
    got = _forward(model, jnp.asarray(images.transpose(0, 2, 3, 1)))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), _reference(sd, images, **TINY),
                               atol=0.15)


def test_heads_are_ignored_and_model_is_trainable(tmp_path):
    sd = _random_state_dict(with_head=True)
    model = _loaded(tmp_path, sd)
    x = jnp.ones((2, SIDE, SIDE, 3))
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) ** 2)))(model)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
