"""Mixed precision the flax way: bfloat16 matmuls, float32 weights.

``compute_dtype=bfloat16`` must reach every dot_general and convolution of
every backbone and head (the traced forward and backward hold no float32
ones), leave the parameters and the optimizer in float32, and change
nothing in float32 (the default traces hold no bfloat16 op).
"""

import collections

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nhl_jax import cli, data, models, train
from nhl_jax.cli import registry as systems
from nhl_jax.odh import model as odh_model
from tests.support.systems import tiny_config

# Backbone -> (image shape, small keyword arguments): traced only, so the
# shapes need not be the real ones, just every layer kind.
BACKBONES = {
    'mlp': ((28, 28, 1), {}),
    'cnn': ((28, 28, 1), {}),
    'resnet18': ((8, 8, 1), {'input_size': None}),
    # 8 -> 16: the on-device bilinear resize is two contractions too.
    'resnet50': ((8, 8, 3), {'input_size': 16}),
    'vit_b16': ((8, 8, 1), {'patch': 4, 'width': 16, 'depth': 2,
                            'heads': 2, 'mlp': 32, 'input_size': 8}),
    'bnn_cnn': ((28, 28, 1), {'channels': (8, 16), 'width': 32}),
    'reactnet18': ((16, 16, 3), {'layers': (1, 1, 1, 1),
                                 'input_size': None}),
}
MATMULS = ('dot_general', 'conv_general_dilated')


def _matmul_dtypes(jaxpr, found=None) -> collections.Counter:
    """{(primitive, dtypes of operands and result): count} of a jaxpr.

    Nested jaxprs (jit bodies, custom_vjp / custom_jvp calls, branches)
    are walked too: the signs' custom VJPs and ``nnx`` calls hide their
    matmuls there.
    """
    found = collections.Counter() if found is None else found
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in MATMULS:
            key = tuple(str(v.aval.dtype) for v in (*eqn.invars,
                                                    *eqn.outvars))
            found[eqn.primitive.name, key] += 1
        for value in eqn.params.values():
            for sub in (value if isinstance(value, (tuple, list))
                        else (value,)):
                if isinstance(sub, jcore.ClosedJaxpr):
                    _matmul_dtypes(sub.jaxpr, found)
                elif isinstance(sub, jcore.Jaxpr):
                    _matmul_dtypes(sub, found)
    return found


def _hashnet(name: str, **dtype):
    """An abstract HashNet (no init compiled) on backbone ``name``."""
    shape, kwargs = BACKBONES[name]
    return nnx.eval_shape(lambda: models.HashNet(
        models.get_backbone(name, shape, rngs=nnx.Rngs(0), **kwargs,
                            **dtype),
        (8, 16), rngs=nnx.Rngs(1), **dtype)), shape


def _traces(net, shape):
    """(forward jaxpr, gradient jaxpr) of the train-mode forward."""
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    images = jax.ShapeDtypeStruct((2, *shape), jnp.uint8)

    def forward(params, rest, images):
        # Fresh Variables in this trace, so that BatchNorm may update them
        # (as the train step does).
        rest = jax.tree.map(lambda v: v, rest)
        return nnx.merge(graphdef, params, rest)(images)

    def loss(params, rest, images):
        features, h = forward(params, rest, images)
        return (jnp.sum(features.astype(jnp.float32))
                + jnp.sum(h.astype(jnp.float32)))

    return (jax.make_jaxpr(forward)(params, rest, images),
            jax.make_jaxpr(jax.grad(loss))(params, rest, images))


def _only(found, dtype: str) -> bool:
    return bool(found) and all(set(key) == {dtype} for _, key in found)


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_bfloat16_reaches_every_matmul(name):
    net, shape = _hashnet(name, dtype=jnp.bfloat16)
    forward, grad = _traces(net, shape)
    found = _matmul_dtypes(forward.jaxpr)
    assert _only(found, 'bfloat16'), dict(found)
    # The backward matmuls too: cotangents stay bf16 up to the float32 cast.
    assert _only(_matmul_dtypes(grad.jaxpr), 'bfloat16')
    features, h = forward.out_avals
    assert features.dtype == jnp.float32 and h.dtype == jnp.bfloat16
    params = nnx.state(net, nnx.Param)
    assert {str(p.dtype) for p in jax.tree.leaves(params)} == {'float32'}


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_float32_default_has_no_bfloat16(name):
    net, shape = _hashnet(name)  # the registry's default dtype
    forward, grad = _traces(net, shape)
    assert _only(_matmul_dtypes(forward.jaxpr), 'float32')
    assert _only(_matmul_dtypes(grad.jaxpr), 'float32')
    assert all(a.dtype == jnp.float32 for a in forward.out_avals)


@pytest.mark.parametrize('head', ['flat', 'cascade'])
def test_mah_heads_compute_in_bfloat16(head):
    net = nnx.eval_shape(lambda: models.HashNet(
        models.get_backbone('mlp', (8, 8, 1), rngs=nnx.Rngs(0),
                            dtype=jnp.bfloat16, hidden=(32,)),
        (4, 8, 16), rngs=nnx.Rngs(1), head=head, dtype=jnp.bfloat16))
    graphdef, state = nnx.split(net)
    images = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.uint8)
    traced = jax.make_jaxpr(
        lambda s, x: nnx.merge(graphdef, s).head.codes(
            nnx.merge(graphdef, s).features(x)))(state, images)
    found = _matmul_dtypes(traced.jaxpr)
    assert _only(found, 'bfloat16') and sum(found.values()) == 3 + 1
    assert [a.shape[-1] for a in traced.out_avals] == [4, 8, 16]


def test_odh_networks_compute_in_bfloat16_and_return_float32():
    net = nnx.eval_shape(lambda: odh_model.build_model(
        backbone='bnn_cnn', classifier_backbone='mlp',
        input_shape=(28, 28, 1), num_classes=5, bits=(8, 16),
        backbone_kwargs={'channels': (8, 16), 'width': 32},
        classifier_kwargs={'hidden': (32,)}, dtype=jnp.bfloat16,
        rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    images = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)

    def forward(params, rest, x):
        model = nnx.merge(graphdef, params, jax.tree.map(lambda v: v, rest))
        classifier = model.classifier
        return model.hasher(x), classifier.logits(classifier.features(x))

    traced = jax.make_jaxpr(forward)(params, rest, images)
    assert _only(_matmul_dtypes(traced.jaxpr), 'bfloat16')
    assert [a.dtype for a in traced.out_avals] == [jnp.float32] * 2
    assert {str(p.dtype) for p in jax.tree.leaves(params)} == {'float32'}


@pytest.fixture(scope='module')
def splits():
    return data.load_splits('digits', seed=0)


def _one_step(splits, system: str, r: int, compute_dtype: str):
    """Round ``r``'s first step of a tiny ``system`` run, as ``fit`` runs it.

    Returns:
      (state before, state after, host metrics).
    """
    spec = cli.resolve(tiny_config(system, compute_dtype=compute_dtype))
    sys_ = systems.SYSTEMS[spec.system]
    setup, state = sys_.create(spec, train.DataInfo.of(splits), spec.bits)
    consts = sys_.consts(spec, splits)
    plan = sys_.plan(spec, splits, r)
    if plan.begin:
        state, _ = setup.hooks[plan.begin](state, consts)
    before = jax.tree.map(np.asarray, state.params)
    batch = next(iter(plan.batches(state, 0)))
    step = train.compile_step(setup.steps[plan.stage])
    state, metrics = step(state, batch, consts)
    return before, state, jax.tree.map(np.asarray, metrics)


# MAH's loss once refused bfloat16; ODH round 3 (aggregation) runs the
# hasher and the classifier.
@pytest.mark.parametrize('system, r', [('nhl', 1), ('mah', 1), ('odh', 3)])
def test_bfloat16_train_step_keeps_float32_weights(splits, system, r):
    before, state, metrics = _one_step(splits, system, r, 'bfloat16')
    _, _, reference = _one_step(splits, system, r, 'float32')
    # Weights, batch statistics and optimizer moments: float32 only.
    floats = [x for x in jax.tree.leaves((state.params, state.rest,
                                          state.opt_state))
              if jnp.issubdtype(x.dtype, jnp.floating)]
    assert {str(x.dtype) for x in floats} == {'float32'}
    moved = jax.tree.map(lambda a, b: np.abs(np.asarray(b) - a).max(),
                         before, state.params)
    assert max(jax.tree.leaves(moved)) > 0
    assert np.isfinite(metrics['loss'])
    np.testing.assert_allclose(metrics['loss'], reference['loss'], rtol=3e-2)
    # bfloat16 reached the forward pass: the loss is not float32's.
    assert metrics['loss'] != reference['loss']
