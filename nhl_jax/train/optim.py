"""The base optimizers of the NHL system and their step-decay schedules.

``nhl_jax.train.step.make_optimizer`` adds torch-style coupled weight decay
(L2 added to the gradient) before any of these, which is what
``torch.optim.Adam`` / ``RMSprop`` / ``SGD(weight_decay=...)`` do; so each
factory here is the rest of the torch update, with torch's defaults.

References:
  torch.optim.RMSprop and torch.optim.SGD (their documented algorithms);
  torch.optim.lr_scheduler.StepLR / MultiStepLR.
"""

from collections.abc import Callable, Sequence

import optax

OPTIMIZERS = ('adam', 'rmsprop', 'sgd')


def torch_rmsprop(learning_rate, *, alpha: float = 0.99,
                  eps: float = 1e-8) -> optax.GradientTransformation:
    """torch's ``RMSprop`` (not centred, no momentum) without weight decay.

    v_t = alpha v_{t-1} + (1 - alpha) g_t^2 (v_0 = 0),
    p_t = p_{t-1} - lr g_t / (sqrt(v_t) + eps).

    optax's default puts eps inside the square root and decays by 0.9;
    torch adds eps outside it and decays by 0.99.

    Args:
      learning_rate: a float or an optax schedule.
      alpha: smoothing constant of the squared gradients (torch: 0.99).
      eps: added to the root (torch: 1e-8).
    """
    return optax.rmsprop(learning_rate, decay=alpha, eps=eps,
                         initial_scale=0.0, eps_in_sqrt=False)


def factory(name: str, *, momentum: float = 0.9) -> Callable:
    """``learning rate -> GradientTransformation`` of an optimizer name.

    Args:
      name: one of ``OPTIMIZERS``: 'adam' (torch defaults), 'rmsprop'
        (``torch_rmsprop``) or 'sgd' (torch's heavy ball: buf = momentum
        buf + g, the first buf = g, no dampening, not Nesterov).
      momentum: the SGD momentum (0: plain SGD).

    Raises:
      ValueError: an unknown name.
    """
    if name == 'sgd':
        # optax.trace starts from zeros, so its first step is g as torch's.
        return lambda rate: optax.sgd(rate, momentum=momentum or None)
    makers = {'adam': optax.adam, 'rmsprop': torch_rmsprop}
    if name not in makers:
        raise ValueError(f'Unknown optimizer {name!r}; choose one of '
                         f'{list(OPTIMIZERS)}.')
    return makers[name]


def decay_epochs(epochs: int, *, every: int | None = None,
                 at: Sequence[int] = ()) -> tuple[int, ...]:
    """The epochs after which the rate drops, sorted, below ``epochs``.

    ``every=S``: after epochs S, 2S, ... (torch ``StepLR(step_size=S)``
    stepped once per epoch, as GreedyHash's ``lr * 0.1 ** (epoch // S)``);
    ``at``: after each listed epoch (``MultiStepLR(milestones=at)``).
    """
    listed = set(at)
    if every:
        listed.update(range(every, epochs, every))
    return tuple(sorted(e for e in listed if 0 < e < epochs))


def step_decay(learning_rate: float, *, steps_per_epoch: int, epochs: int,
               every: int | None = None, at: Sequence[int] = (),
               factor: float = 0.1):
    """``learning_rate`` x ``factor`` after each epoch of ``decay_epochs``.

    Returns:
      The float ``learning_rate`` itself when it never drops (so that a run
      without decay builds the very optimizer it always did), else an
      optax schedule of the optimizer step.
    """
    drops = decay_epochs(epochs, every=every, at=at)
    if not drops:
        return learning_rate
    return optax.piecewise_constant_schedule(
        learning_rate, {e * steps_per_epoch: factor for e in drops})
