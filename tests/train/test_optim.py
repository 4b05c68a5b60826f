"""The RMSprop / SGD updates and the step decay against torch's algorithms.

The NumPy references are written from torch.optim's documented update
rules (weight decay added to the gradient first), in float64.
"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nhl_jax.train import optim
from nhl_jax.train import step as step_lib

LR, WD = 1e-2, 1e-2


def torch_rmsprop(params, grads, *, lr, weight_decay, alpha=0.99, eps=1e-8):
    """torch.optim.RMSprop (centered=False, momentum=0), every step."""
    p, v, out = np.array(params, np.float64), np.zeros_like(params), []
    for g in grads:
        g = g + weight_decay * p
        v = alpha * v + (1 - alpha) * g * g
        p = p - lr * g / (np.sqrt(v) + eps)
        out.append(p)
    return out


def torch_sgd(params, grads, *, lrs, weight_decay, momentum=0.9):
    """torch.optim.SGD (dampening=0, nesterov=False), one rate per step."""
    p, buf, out = np.array(params, np.float64), None, []
    for g, lr in zip(grads, lrs):
        g = g + weight_decay * p
        buf = g if buf is None else momentum * buf + g
        p = p - lr * buf
        out.append(p)
    return out


def _run(tx, params, grads):
    p = jnp.asarray(params, jnp.float32)
    state, out = tx.init(p), []
    for g in grads:
        updates, state = tx.update(jnp.asarray(g, jnp.float32), state, p)
        p = optax.apply_updates(p, updates)
        out.append(np.asarray(p))
    return out


def _problem(steps=5):
    rng = np.random.default_rng(0)
    return rng.standard_normal(6), [rng.standard_normal(6)
                                    for _ in range(steps)]


def _tx(name, rate, **kwargs):
    return step_lib.make_optimizer(
        rate, weight_decay=WD, optimizer=optim.factory(name, **kwargs),
        groups=False)


def test_rmsprop_is_torchs():
    params, grads = _problem()
    got = _run(_tx('rmsprop', LR), params, grads)
    want = torch_rmsprop(params, grads, lr=LR, weight_decay=WD)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('momentum', [0.9, 0.0])
def test_sgd_with_momentum_is_torchs(momentum):
    params, grads = _problem()
    got = _run(_tx('sgd', LR, momentum=momentum), params, grads)
    want = torch_sgd(params, grads, lrs=[LR] * len(grads), weight_decay=WD,
                     momentum=momentum)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_step_decay_drops_the_rate_after_the_listed_epochs():
    # 2 steps per epoch, 4 epochs, / 10 after epochs 1 and 3
    # (MultiStepLR(milestones=[1, 3]) stepped once per epoch).
    assert optim.decay_epochs(7, every=3) == (3, 6)
    assert optim.decay_epochs(7, every=3, at=(1, 6, 9)) == (1, 3, 6)
    rate = optim.step_decay(LR, steps_per_epoch=2, epochs=4, at=(1, 3))
    np.testing.assert_allclose([rate(i) for i in range(8)],
                               [LR] * 2 + [LR / 10] * 4 + [LR / 100] * 2,
                               rtol=1e-6)
    params, grads = _problem(8)
    got = _run(_tx('sgd', rate), params, grads)
    want = torch_sgd(params, grads, lrs=[rate(i) for i in range(8)],
                     weight_decay=WD)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_no_decay_keeps_the_float_rate():
    assert optim.step_decay(LR, steps_per_epoch=3, epochs=5) == LR
    assert optim.step_decay(LR, steps_per_epoch=3, epochs=5, at=(5,)) == LR


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match='rmsprop'):
        optim.factory('adagrad')
